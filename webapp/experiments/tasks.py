"""Celery tasks: thin, idempotent wrappers that take primary keys and call `webapp.experiments.runner`.

A redelivered or duplicate message is harmless: each job is claimed with a conditional UPDATE, and a message for
work that is done or held by a live worker returns at once (no retry loop: a dead worker's job is taken over by
the sweep, `RecoverOnConnect` and `SweepSilentJobs` in `webapp/celery.py`)."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="webapp.run_trial", acks_late=True, reject_on_worker_lost=True)
def run_trial(trial_id: int) -> str:
    """Evaluate one trial, tell its result and queue what the strategy proposes next."""
    from webapp.experiments.runner import trial_run_now, worker_name

    return trial_run_now(trial_id, worker_name())


@shared_task(name="webapp.advance_experiment", acks_late=True, reject_on_worker_lost=True)
def advance_experiment(experiment_id: int) -> str:
    """Start, resume or take up an experiment (a one-job search runs here to its end)."""
    from webapp.experiments.runner import experiment_advance_now, worker_name

    return experiment_advance_now(experiment_id, worker_name())


@shared_task(name="webapp.run_calibration", acks_late=True, reject_on_worker_lost=True)
def run_calibration(calibration_id: int) -> str:
    """Train K of an experiment's candidates fully and store how well its estimator ranked them."""
    from webapp.experiments.runner import run_calibration_now, worker_name

    return run_calibration_now(calibration_id, f"{worker_name()}:calibration")


@shared_task(name="webapp.build_export", acks_late=True, reject_on_worker_lost=True)
def build_export(export_id: int) -> str:
    """Build a trial's export file once, into the artifact store, for every later download to stream."""
    from webapp.experiments.runner import export_run_now, worker_name

    return export_run_now(export_id, f"{worker_name()}:export")
