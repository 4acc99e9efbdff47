"""The Celery application: configured from Django settings (CELERY_*), tasks found in `nasjobs.tasks` and
`webapp.datasets.tasks`."""
import logging
import os

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("nasboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(lambda: ["nasjobs", "webapp.datasets"])


class RecoverOnConnect(bootsteps.StartStopStep):
    """Each time the worker's consumer (re)connects to the broker, queue again every experiment the database says
    is unfinished. A restarted Redis (which may keep nothing on disk) loses the queued messages; the database
    does not, so nothing waits forever. Duplicates are harmless: a worker claims an experiment with a
    conditional UPDATE, and a message for a finished one is a no-op."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer) -> None:
        from django.db import close_old_connections

        from webapp.datasets.services import datasets_recover
        from webapp.experiments.services import experiments_recover

        log = logging.getLogger("nasjobs.tasks")
        try:
            close_old_connections()  # this process lives long; its connection may have gone stale meanwhile
            ids = experiments_recover()
            datasets = datasets_recover()
        except Exception:  # the worker must still consume; `nas recover` or the next reconnect will do it
            log.exception("could not re-queue unfinished experiments")
            return
        if ids:
            log.info("re-queued unfinished experiments %s", ids)
        if datasets:
            log.info("re-queued datasets still processing %s", datasets)


app.steps["consumer"].add(RecoverOnConnect)
