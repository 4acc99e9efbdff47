# One image for the web server and the workers: `docker run IMAGE web` (default), `docker run IMAGE worker`
# (scripts/worker.sh), `docker run IMAGE migrate`. Configure with DATABASE_URL, REDIS_URL, SECRET_KEY,
# ALLOWED_HOSTS; docker-compose.yml runs them all on one host.
FROM python:3.11-slim-bookworm

# Static files are collected into the image, not the /data volume, so a new image never serves an old volume's
# copies; the settings come from the environment only (no .env file).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 NAS_VAR_DIR=/data STATIC_ROOT=/app/static \
    NAS_ENV_FILE=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends graphviz \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN DEBUG=1 python manage.py collectstatic --noinput \
    && useradd --create-home --uid 1000 nas && mkdir -p /data && chown nas /data
USER nas
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["scripts/docker-entrypoint.sh"]
CMD ["web"]
