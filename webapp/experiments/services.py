"""Business actions on experiments and trials; views, commands and the worker adapter all go through these."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from nasjobs.search import ExperimentSpec, SpecError, TrialRecord, validate_spec
from webapp.experiments.models import Calibration, Experiment, SearchEpoch, Trial

log = logging.getLogger(__name__)
NAME_MAX_LENGTH = Experiment._meta.get_field("name").max_length


class LostClaim(Exception):
    """Another worker took the experiment over (our lease expired); stop without writing."""


def experiment_enqueue(experiment_id: int) -> None:
    from nasjobs.tasks import run_experiment

    run_experiment.apply_async((experiment_id,), queue=settings.NAS_QUEUE)


def experiment_create(*, user: AbstractBaseUser | None, name: str, spec: ExperimentSpec,
                      enqueue: bool = True) -> Experiment:
    """Validate and store a new experiment, then queue it once the transaction commits. Raises SpecError.

    `enqueue=False` leaves it queued for the caller to run in-process (`nas submit --inline`)."""
    name = (name or "").strip()
    if not name:
        raise SpecError("name", "give the experiment a name")
    if len(name) > NAME_MAX_LENGTH:
        raise SpecError("name", f"at most {NAME_MAX_LENGTH} characters (it has {len(name)})")
    spec = validate_spec(spec)
    with transaction.atomic():
        experiment = Experiment.objects.create(
            name=name, dataset=spec.dataset, space=spec.space, strategy=spec.strategy, estimator=spec.estimator,
            budget=spec.budget, epochs=spec.epochs, seed=spec.seed, top_k=spec.top_k, options=spec.options,
            patience=spec.patience, max_seconds=spec.max_seconds,
            created_by=user if user is not None and user.is_authenticated else None)
        if enqueue:
            transaction.on_commit(lambda: experiment_enqueue(experiment.pk))
    return experiment


def experiment_cancel(experiment: Experiment) -> bool:
    """Stop a queued or running experiment; its trials stay. The worker notices at its next epoch."""
    changed = Experiment.objects.filter(pk=experiment.pk, status__in=Experiment.ACTIVE).update(
        status=Experiment.Status.CANCELLED, finished_at=timezone.now())
    return bool(changed)


def experiment_resume(experiment: Experiment) -> bool:
    """Queue a cancelled or failed experiment again; it continues from its last recorded trial."""
    with transaction.atomic():
        changed = Experiment.objects.filter(
            pk=experiment.pk, status__in=(Experiment.Status.CANCELLED, Experiment.Status.FAILED)
        ).update(status=Experiment.Status.QUEUED, error="", finished_at=None, claimed_by="")
        if changed:
            transaction.on_commit(lambda: experiment_enqueue(experiment.pk))
    return bool(changed)


def experiment_claim(experiment_id: int, worker: str) -> bool:
    """Atomically take a queued experiment, or a running one whose worker has gone silent past the lease."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.NAS_LEASE_SECONDS)
    claimable = Q(status=Experiment.Status.QUEUED) | Q(
        Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True), status=Experiment.Status.RUNNING)
    with transaction.atomic():
        changed = Experiment.objects.filter(claimable, pk=experiment_id).update(
            status=Experiment.Status.RUNNING, claimed_by=worker, heartbeat_at=now)
        if changed:
            Experiment.objects.filter(pk=experiment_id, started_at__isnull=True).update(started_at=now)
    return bool(changed)


def experiment_heartbeat(experiment_id: int, worker: str) -> str | None:
    """Renew the lease; returns the current status, or None if another worker holds the experiment."""
    Experiment.objects.filter(pk=experiment_id, claimed_by=worker, status=Experiment.Status.RUNNING).update(
        heartbeat_at=timezone.now())
    row = Experiment.objects.filter(pk=experiment_id).values("status", "claimed_by").first()
    if row is None or row["claimed_by"] != worker:
        return None
    return row["status"]


def trial_record(experiment_id: int, worker: str, trial: TrialRecord, strategy_state: dict[str, Any],
                 kept: list[int]) -> Trial:
    """Store a finished evaluation with the strategy state that follows it, in one transaction: a new trial, a
    re-evaluation that updates its trial's mean, or a promotion to a higher rung (successive halving).

    A trial that finishes just after a cancel is still kept: its result cost real compute.
    """
    with transaction.atomic():
        existing = Trial.objects.select_for_update().filter(experiment_id=experiment_id, number=trial.number).first()
        new_evaluations = len(trial.evaluations) - (len(existing.evaluations) if existing else 0)
        updated = Experiment.objects.filter(
            pk=experiment_id, claimed_by=worker, status__in=(Experiment.Status.RUNNING, Experiment.Status.CANCELLED)
        ).update(trials_done=F("trials_done") + new_evaluations, strategy_state=strategy_state,
                 heartbeat_at=timezone.now())
        if not updated:
            raise LostClaim(f"experiment {experiment_id} is no longer held by {worker}")
        values = dict(
            arch_key=trial.arch_key, arch_display=trial.arch_display, val_acc=trial.val_acc, params=trial.params,
            flops=trial.flops, train_seconds=trial.train_seconds, estimator=trial.estimator, fidelity=trial.fidelity,
            curve=trial.curve, weights_path=trial.weights_path or "", search_seconds=trial.search_seconds,
            proposals=trial.proposals, distance_to_incumbent=trial.distance_to_incumbent,
            evaluations=trial.evaluations)
        if existing is None:
            row = Trial.objects.create(experiment_id=experiment_id, number=trial.number, **values)
        else:
            if existing.arch_key != trial.arch_key:
                raise ValueError(f"trial {trial.number} is {existing.arch_key}, not {trial.arch_key}")
            # A re-evaluation adds a value; a promotion (successive halving) adds a rung. Anything else is a replay.
            progress = lambda t: (len(t.evaluations), len(t.fidelity.get("rungs", [])))  # noqa: E731
            if progress(trial) <= progress(existing):
                raise ValueError(f"trial {trial.number} already has this evaluation")
            for name, value in values.items():
                setattr(existing, name, value)
            existing.save()
            row = existing
        Trial.objects.filter(experiment_id=experiment_id).exclude(number__in=kept).exclude(weights_path="").update(
            weights_path="")
        best = Trial.objects.filter(experiment_id=experiment_id).order_by("-val_acc", "number").first()
        Experiment.objects.filter(pk=experiment_id).update(best_val_acc=best.val_acc, best_trial_number=best.number)
    return row


EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "alphas", "ops", "edges", "genotype",
                "param_free_fraction", "stopped_early", "seconds")


def search_epoch_record(experiment_id: int, worker: str, record: dict[str, Any]) -> SearchEpoch:
    """Store one search epoch; a repeated epoch (after a resume) replaces its earlier row."""
    with transaction.atomic():
        held = Experiment.objects.filter(pk=experiment_id, claimed_by=worker,
                                         status__in=(Experiment.Status.RUNNING, Experiment.Status.CANCELLED))
        if not held.update(heartbeat_at=timezone.now()):
            raise LostClaim(f"experiment {experiment_id} is no longer held by {worker}")
        row, _ = SearchEpoch.objects.update_or_create(
            experiment_id=experiment_id, epoch=record["epoch"],
            defaults={k: record[k] for k in EPOCH_FIELDS if k in record})
    return row


def experiment_load_progress(experiment_id: int) -> tuple[dict[str, Any] | None, list[TrialRecord]]:
    experiment = Experiment.objects.get(pk=experiment_id)
    trials = [TrialRecord(t.number, t.arch_key, t.arch_display, t.val_acc, t.params, t.flops, t.train_seconds,
                          t.fidelity, t.curve, t.weights_path or None, t.estimator, t.search_seconds, t.proposals,
                          t.distance_to_incumbent, list(t.evaluations))
              for t in experiment.trials.order_by("number")]
    return experiment.strategy_state, trials


def experiment_finish(experiment_id: int, worker: str, best_number: int, test_acc: float | None,
                      stop_reason: str) -> bool:
    return bool(Experiment.objects.filter(pk=experiment_id, claimed_by=worker, status=Experiment.Status.RUNNING)
                .update(status=Experiment.Status.SUCCEEDED, test_acc=test_acc, best_trial_number=best_number,
                        stop_reason=stop_reason,
                        finished_at=timezone.now(), heartbeat_at=timezone.now()))


def experiment_fail(experiment_id: int, worker: str, error: str) -> bool:
    return bool(Experiment.objects.filter(pk=experiment_id, claimed_by=worker, status=Experiment.Status.RUNNING)
                .update(status=Experiment.Status.FAILED, error=error[:5000], finished_at=timezone.now()))


def experiments_recover() -> list[int]:
    """Queue again every experiment that should be progressing: queued ones (their message may have been lost
    with a restarted Redis) and running ones (their worker may be dead; the claim waits out the lease)."""
    ids = list(Experiment.objects.filter(status__in=Experiment.ACTIVE).values_list("pk", flat=True))
    for pk in ids:
        experiment_enqueue(pk)
    return ids


def calibration_create(*, experiment: Experiment, user: AbstractBaseUser | None, k: int, epochs: int,
                       seed: int = 0, enqueue: bool = True) -> Calibration:
    """Queue a calibration of the experiment's estimator against full training of K of its candidates."""
    if not 2 <= k <= 1000:
        raise SpecError("k", "measure between 2 and 1000 candidates")
    if not 1 <= epochs <= 10_000:
        raise SpecError("epochs", "must be an integer from 1 to 10000")
    if experiment.trials.count() < 2:
        raise SpecError("k", "the experiment needs at least two evaluated trials first")
    with transaction.atomic():
        calibration = Calibration.objects.create(
            experiment=experiment, k=k, epochs=epochs, seed=seed,
            created_by=user if user is not None and user.is_authenticated else None)
        if enqueue:
            transaction.on_commit(lambda: calibration_enqueue(calibration.pk))
    return calibration


def calibration_enqueue(calibration_id: int) -> None:
    from nasjobs.tasks import run_calibration

    run_calibration.apply_async((calibration_id,), queue=settings.NAS_QUEUE)


def calibration_claim(calibration_id: int, worker: str) -> bool:
    return bool(Calibration.objects.filter(pk=calibration_id, status=Calibration.Status.QUEUED).update(
        status=Calibration.Status.RUNNING, claimed_by=worker))


def calibration_finish(calibration_id: int, worker: str, result: Any) -> bool:
    return bool(Calibration.objects.filter(pk=calibration_id, claimed_by=worker).update(
        status=Calibration.Status.SUCCEEDED, reference=result.reference, k=result.k,
        kendall_tau=result.kendall_tau, spearman_rho=result.spearman_rho, pairs=result.pairs,
        seconds=result.seconds))


def calibration_fail(calibration_id: int, worker: str, error: str) -> bool:
    return bool(Calibration.objects.filter(pk=calibration_id, claimed_by=worker).update(
        status=Calibration.Status.FAILED, error=error[:5000]))


def trial_export(experiment: Experiment, trial: Trial) -> bytes:
    """The trial as a runnable PyTorch model (see `nasjobs.export`): trained weights when they were kept."""
    from nasjobs.artifacts import ArtifactStore
    from nasjobs.export import export_archive

    state = ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment.pk).load(trial.number) if trial.weights_path \
        else None
    meta = {"title": f"{experiment.name}: trial {trial.number} of experiment {experiment.pk}",
            "experiment": experiment.pk, "trial": trial.number, "val_acc": trial.val_acc,
            "test_acc": experiment.test_acc if experiment.best_trial_number == trial.number else None,
            "params": trial.params, "flops": trial.flops}
    return export_archive(experiment.spec(), trial.arch_key, state, meta)
