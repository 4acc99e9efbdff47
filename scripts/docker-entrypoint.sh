#!/bin/sh
# Container entry point: web (gunicorn), worker (one Celery worker; one container per GPU), or migrate.
set -eu
case "${1:-web}" in
  web)     python manage.py migrate --noinput
           exec gunicorn webapp.wsgi:application --bind 0.0.0.0:8000 --workers "${WEB_WORKERS:-3}" ;;
  worker)  exec celery -A webapp worker --loglevel=INFO --concurrency=1 -Q "${NAS_GPU_QUEUE:-gpu},${NAS_CPU_QUEUE:-cpu}" ;;
  migrate) exec python manage.py migrate --noinput ;;
  *)       exec "$@" ;;
esac
