#!/bin/sh
# Container entry point: web (gunicorn), worker (scripts/worker.sh: a Celery worker per GPU, else one on the CPU),
# or migrate.
set -eu
case "${1:-web}" in
  web)     python manage.py migrate --noinput
           exec gunicorn webapp.wsgi:application --bind 0.0.0.0:8000 --workers "${WEB_WORKERS:-3}" ;;
  worker)  exec scripts/worker.sh ;;
  migrate) exec python manage.py migrate --noinput ;;
  *)       exec "$@" ;;
esac
