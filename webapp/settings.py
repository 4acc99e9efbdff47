"""Django settings, read from environment variables (every one is in the README's settings table)."""
from __future__ import annotations

from datetime import timedelta

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from webapp.env import env_bool, env_int, env_list, env_str, load_env_file

BASE_DIR = Path(__file__).resolve().parent.parent
# Local settings that `make run` writes once (DEBUG, a generated SECRET_KEY), so the server, the workers and
# every `manage.py` command agree; the real environment wins, and production sets everything explicitly.
load_env_file(env_str("NAS_ENV_FILE", str(BASE_DIR / ".env")))
VAR_DIR = Path(env_str("NAS_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off (set DEBUG=1 for local use)")
    SECRET_KEY = "insecure-local-development-key"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "webapp.teams",
    "webapp.experiments",
    "webapp.datasets",
    "webapp.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login, except those marked `login_not_required` (login, health check, API: the API
    # answers 401 itself).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so it turns a login that django-axes refused into the lockout page (or JSON under /api/).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database(url: str) -> dict:
    try:
        config = dj_database_url.parse(url, conn_max_age=env_int("DB_CONN_MAX_AGE", 0, minimum=0),
                                       conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        # WAL and immediate transactions let the web server read while a worker writes trials.
        config["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE",
                             "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
        # A file, not memory, so Celery workers started by the tests see the test database.
        config["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    elif config["ENGINE"] not in ("django.db.backends.postgresql",):
        raise ImproperlyConfigured(f"DATABASE_URL must be sqlite:// or postgres://, not {config['ENGINE']}")
    return config


DATABASES = {"default": _database(env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'nasboard.sqlite3'}"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Repeated failed logins for one (username, address) pair lock that pair out for a cool-off: the web login, the
# admin's and the API's token endpoint all authenticate through this backend list, so one counter covers all three.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("NAS_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("NAS_LOGIN_COOLOFF_SECONDS", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True  # only failures in a row count
AXES_LOCKOUT_CALLABLE = "webapp.views.lockout"
AXES_DISABLE_ACCESS_LOG = True  # failures are what matter; a row per successful login is noise
AXES_VERBOSE = False  # no banner on every command
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "experiment_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if not DEBUG:
    # Serves the admin's collected static files without a separate server (runserver does it under DEBUG).
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    # HTTPS by default; a deploy behind a TLS-terminating proxy sets SECURE_PROXY_SSL_HEADER=1.
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Notifications: e-mail through Django's mail settings (printed on the console unless EMAIL_HOST is set), and a
# JSON POST to a team's webhook.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend" if env_str("EMAIL_HOST")
                        else "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
# "Forgot your password?" is offered only where a mail server is configured: without one the link would claim to
# send a mail that only the server's console shows.
NAS_PASSWORD_RESET = bool(env_str("EMAIL_HOST"))
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "nasboard@localhost")
NAS_SITE_URL = env_str("NAS_SITE_URL", "http://127.0.0.1:8000/")
NAS_WEBHOOK_TIMEOUT = env_int("NAS_WEBHOOK_TIMEOUT", 5, minimum=1)

# The REST API: token (scripts) or session (the browsable docs) authentication, every route behind a login.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication",
                                       "rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "nasboard API",
    "DESCRIPTION": "Submit, follow and review Neural Architecture Search experiments. Authenticate with "
                   "`Authorization: Token <key>` from POST /api/token/.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: Redis carries messages only; the database holds every result.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
# Two queues (`celery worker -Q gpu,cpu`): trials that train networks and calibrations on NAS_GPU_QUEUE; planning,
# finishing, dataset decoding and trials that train nothing (table lookups, training-free scores) on NAS_CPU_QUEUE.
NAS_GPU_QUEUE = env_str("NAS_GPU_QUEUE", "gpu")
NAS_CPU_QUEUE = env_str("NAS_CPU_QUEUE", "cpu")
CELERY_TASK_DEFAULT_QUEUE = NAS_CPU_QUEUE
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("NAS_VISIBILITY_TIMEOUT", 3600, minimum=10)}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# A worker keeps its database connection from one task to the next for up to NAS_WORKER_DB_CONN_MAX_AGE seconds
# (0: a new connection for every task, about 6 ms on PostgreSQL), checked before each task and replaced when broken
# (`webapp.celery`). Celery's Django fix-up would otherwise close it after every task: it closes only every
# CELERY_DB_REUSE_MAX tasks when that is set.
NAS_WORKER_DB_CONN_MAX_AGE = env_int("NAS_WORKER_DB_CONN_MAX_AGE", 300, minimum=0)
CELERY_DB_REUSE_MAX = 1_000_000 if NAS_WORKER_DB_CONN_MAX_AGE else None

# The search engine.
NAS_ARTIFACTS_DIR = Path(env_str("NAS_ARTIFACTS_DIR", str(VAR_DIR / "artifacts")))
NAS_DEVICE = env_str("NAS_DEVICE", "auto")
# Threads each worker process gives PyTorch (0: PyTorch's default, all cores): 1 when several workers share a CPU.
NAS_TORCH_THREADS = env_int("NAS_TORCH_THREADS", 0, minimum=0)
# Modules imported at start-up that register components of their own (comma-separated, e.g. "myteam.nas").
NAS_PLUGINS = [m.strip() for m in env_str("NAS_PLUGINS", "").split(",") if m.strip()]
# A running job (a trial, a one-job search, an export, a calibration, a dataset's decoding) renews its lease from a
# thread every NAS_HEARTBEAT_SECONDS (at most a third of the lease); one not heard from for NAS_LEASE_SECONDS is
# queued again by the sweep every worker runs every NAS_SWEEP_SECONDS, so a killed worker's job runs again
# elsewhere within lease + sweep seconds.
NAS_LEASE_SECONDS = env_int("NAS_LEASE_SECONDS", 30, minimum=3)
NAS_HEARTBEAT_SECONDS = env_int("NAS_HEARTBEAT_SECONDS", 2, minimum=1)
NAS_SWEEP_SECONDS = env_int("NAS_SWEEP_SECONDS", 10, minimum=1)
# A trial that trains one network for its whole length (train, low_fidelity, median_stopping) saves its progress
# beside its weights at most every NAS_CHECKPOINT_SECONDS of training (0: after every epoch), so a trial taken over
# from a lost worker, or handed back by a cancel or a stopping worker, resumes at its last saved epoch.
NAS_CHECKPOINT_SECONDS = env_int("NAS_CHECKPOINT_SECONDS", 30, minimum=0)
# A trial still running after this many seconds fails with a time-limit error (0: no limit).
NAS_TRIAL_TIME_LIMIT = env_int("NAS_TRIAL_TIME_LIMIT", 0, minimum=0)
# An experiment with deployment limits fails after this many proposals in a row over them (nasjobs.constraints).
NAS_MAX_SKIPPED_IN_A_ROW = env_int("NAS_MAX_SKIPPED_IN_A_ROW", 1000, minimum=1)
NAS_TOP_K_DEFAULT = env_int("NAS_TOP_K", 5, minimum=1)
# Datasets: decoded once under NAS_DATA_DIR (default var/data; a shared volume when workers run on several
# machines). An upload larger than NAS_MAX_UPLOAD_MB, or a zip expanding past NAS_MAX_DECODED_MB, is refused.
NAS_MAX_UPLOAD_MB = env_int("NAS_MAX_UPLOAD_MB", 512, minimum=1)
NAS_MAX_DECODED_MB = env_int("NAS_MAX_DECODED_MB", 2048, minimum=1)
