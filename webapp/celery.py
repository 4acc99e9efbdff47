"""The Celery application: configured from Django settings (CELERY_*), tasks found in `webapp.experiments.tasks`
and `webapp.datasets.tasks`."""
import logging
import os

from celery import Celery, bootsteps
from celery.signals import task_prerun, worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("nasboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(lambda: ["webapp.experiments", "webapp.datasets"])


class RecoverOnConnect(bootsteps.StartStopStep):
    """Each time the worker's consumer (re)connects to the broker, queue again every job (experiment, retraining,
    export, calibration, dataset decoding) the database says is unfinished (`webapp.jobs.jobs_recover`). A restarted
    Redis (which may keep nothing on disk) loses the queued messages; the database does not, so nothing waits
    forever. Duplicates are harmless: a worker claims a job with a conditional UPDATE, and a message for a finished
    one is a no-op."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer) -> None:
        from django.db import close_old_connections

        from webapp.jobs import jobs_recover

        log = logging.getLogger("webapp.experiments.tasks")
        try:
            close_old_connections()  # this process lives long; its connection may have gone stale meanwhile
            recovered = jobs_recover()
        except Exception:  # the worker must still consume; `nas recover` or the next reconnect will do it
            log.exception("could not re-queue unfinished jobs")
            return
        for kind, ids in recovered.items():
            if ids:
                log.info("re-queued unfinished %s %s", kind, ids)


class SweepSilentJobs(bootsteps.StartStopStep):
    """Every NAS_SWEEP_SECONDS, in the worker's main process: trials, one-job searches, exports, calibrations and
    dataset decodings whose worker stopped renewing its lease are queued again (`webapp.jobs.jobs_sweep`). Every
    worker sweeps; no scheduler is needed and none is a single point of failure, since each takeover is a
    conditional UPDATE."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        self.tref = None

    def start(self, worker) -> None:
        from django.conf import settings

        self.tref = worker.timer.call_repeatedly(settings.NAS_SWEEP_SECONDS, self.sweep, priority=10)

    def stop(self, worker) -> None:
        if self.tref is not None:
            self.tref.cancel()

    @staticmethod
    def sweep() -> None:
        from django.db import close_old_connections

        from webapp.jobs import jobs_sweep

        log = logging.getLogger("webapp.experiments.tasks")
        try:
            close_old_connections()
            swept = jobs_sweep()
        except Exception:  # the database or the broker away for a moment: the next sweep tries again
            log.exception("could not sweep for silent jobs")
            return
        if any(swept.values()):
            log.info("queued again after their worker went silent: %s",
                     ", ".join(f"{kind} {ids}" for kind, ids in swept.items() if ids))


@worker_init.connect
def keep_database_connections(**kwargs) -> None:
    """In a worker (its main process, before the pool forks), a database connection lives NAS_WORKER_DB_CONN_MAX_AGE
    seconds rather than one task: a trial of a table-lookup search costs milliseconds, a new PostgreSQL connection
    about 6 of them."""
    from django.conf import settings

    if settings.NAS_WORKER_DB_CONN_MAX_AGE:
        for config in settings.DATABASES.values():  # the dicts the connections read when they connect
            config["CONN_MAX_AGE"] = settings.NAS_WORKER_DB_CONN_MAX_AGE


@task_prerun.connect
def check_database_connections(sender=None, **kwargs) -> None:
    """Before each task a worker runs, a kept connection that is broken (the database restarted), left in error or
    past its age is closed, so the task connects afresh (Django's CONN_HEALTH_CHECKS pings a kept one first). A
    task run eagerly, inside its caller's transaction, keeps the caller's connection."""
    from django.db import close_old_connections

    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()


@worker_process_init.connect
def set_torch_threads(**kwargs) -> None:
    """Each pool process gives PyTorch NAS_TORCH_THREADS threads, so workers sharing a machine do not contend."""
    from django.conf import settings

    if settings.NAS_TORCH_THREADS:
        import torch

        torch.set_num_threads(settings.NAS_TORCH_THREADS)


@worker_process_init.connect
def import_before_the_first_trial(**kwargs) -> None:
    """Import what PyTorch imports lazily on a process's first optimiser step (torch._dynamo, a second or two),
    before any trial runs: a trial's time limit that lands inside that import would leave the module half
    initialised, and every later trial of the process would fail on it."""
    import torch._dynamo  # noqa: F401


app.steps["consumer"].add(RecoverOnConnect)
app.steps["worker"].add(SweepSilentJobs)
