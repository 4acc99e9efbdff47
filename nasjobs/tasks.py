"""Celery tasks: thin, idempotent wrappers that take primary keys and call the persistence adapter.

Recovery (queueing again what the database says is unfinished) runs whenever a worker connects to the broker:
see `RecoverOnConnect` in `webapp/celery.py`."""
from __future__ import annotations

import logging
import os
import socket

from celery import shared_task
from django.conf import settings

log = logging.getLogger(__name__)


@shared_task(name="nasjobs.run_experiment", bind=True, acks_late=True, reject_on_worker_lost=True,
             max_retries=None)
def run_experiment(self, experiment_id: int) -> str:
    """Run or resume an experiment. A redelivered or duplicate message is harmless: the claim is a conditional
    UPDATE, and a message that finds the experiment held by a live worker comes back after the lease."""
    from nasjobs.persistence import run_experiment_now

    worker = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
    outcome = run_experiment_now(experiment_id, worker)
    if outcome == "busy":
        raise self.retry(countdown=max(1, settings.NAS_LEASE_SECONDS // 2))
    return outcome


@shared_task(name="nasjobs.run_calibration", acks_late=True, reject_on_worker_lost=True)
def run_calibration(calibration_id: int) -> str:
    """Train K of an experiment's candidates fully and store how well its estimator ranked them."""
    from nasjobs.persistence import run_calibration_now

    return run_calibration_now(calibration_id, f"{socket.gethostname()}:{os.getpid()}:calibration")
