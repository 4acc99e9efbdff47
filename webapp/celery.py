"""The Celery application: configured from Django settings (CELERY_*), tasks found in `nasjobs.tasks`."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("nasboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(lambda: ["nasjobs"])
