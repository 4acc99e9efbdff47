"""Business actions on experiments and trials; views, commands and the worker adapter all go through these."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from nasjobs.search import ExperimentSpec, SpecError, TrialRecord, validate_spec
from webapp.datasets.selectors import dataset_reference, dataset_refusal
from webapp.experiments.models import Calibration, Experiment, ExperimentEvent, SearchEpoch, Trial
from webapp.experiments.notifications import NOTIFIED, notify
from webapp.experiments.selectors import can_manage, can_review
from webapp.teams.models import Team
from webapp.teams.selectors import default_team, member_teams
from webapp.teams.services import membership_touch, review_reason

log = logging.getLogger(__name__)
NAME_MAX_LENGTH = Experiment._meta.get_field("name").max_length


class LostClaim(Exception):
    """Another worker took the experiment over (our lease expired); stop without writing."""


def experiment_enqueue(experiment_id: int) -> None:
    from webapp.experiments.tasks import advance_experiment

    advance_experiment.apply_async((experiment_id,), queue=settings.NAS_CPU_QUEUE)


def event_record(experiment: Experiment, action: str, *, actor: AbstractBaseUser | None = None,
                 label: str = "", detail: str = "") -> ExperimentEvent:
    """Write one audit-log line; notifications for the owner and the team follow once it commits."""
    actor = actor if actor is not None and actor.is_authenticated else None
    event = ExperimentEvent.objects.create(
        experiment=experiment, experiment_ref=experiment.pk, experiment_name=experiment.name,
        team_id=experiment.team_id, action=action, actor=actor,
        actor_label=label or (actor.get_username() if actor else ""), detail=detail)
    if action in NOTIFIED:
        transaction.on_commit(lambda: notify(experiment.pk, action, detail))
    return event


def _clock_stopped(experiment_id: int, now: datetime) -> dict[str, Any]:
    """The fields that stop a run's clock: its search time so far added to the earlier runs'."""
    return Experiment.objects.only("active_since", "seconds_before").get(pk=experiment_id).clock_stopped(now)


def _require(allowed: bool, message: str) -> None:
    if not allowed:
        raise PermissionDenied(message)


def submission_team(user: AbstractBaseUser | None, team: Team | str | int | None) -> Team:
    """The team an experiment is submitted to: the one named (by name or id), else the user's last used team.
    A user submits only to a team they belong to (staff to any)."""
    if team is None or team == "":
        if user is None:
            raise SpecError("team", "name the team")
        chosen = default_team(user)
        if chosen is None:
            raise SpecError("team", "you belong to no team yet; ask a team admin to add you")
        return chosen
    if not isinstance(team, Team):
        lookup = {"pk": int(team)} if str(team).isdigit() else {"name": str(team)}
        team = Team.objects.filter(**lookup).first()
    if team is None or (user is not None and not user.is_staff and not member_teams(user).filter(
            pk=team.pk).exists()):
        raise SpecError("team", "no such team among yours")
    return team


def spec_for_team(spec: ExperimentSpec, team: Team) -> ExperimentSpec:
    """The spec validated for an experiment of `team`: its dataset named by name or id resolved among the
    team's (an upload belongs to one team and must be ready), then the engine's own checks. Raises SpecError."""
    spec = dataclasses.replace(spec, dataset=dataset_reference(team, spec.dataset))
    refusal = dataset_refusal(team, spec.dataset)
    if refusal:
        raise SpecError("dataset", refusal)
    if isinstance(spec.parallelism, int) and spec.parallelism > team.max_parallelism:
        raise SpecError("parallelism", f"team {team.name} runs at most {team.max_parallelism} trials of an "
                                       "experiment at once")
    return validate_spec(spec)


def experiment_cost(spec: ExperimentSpec) -> int:
    """Estimated compute in trial-epochs: trials x epochs per trial, 0 for an estimator that trains nothing
    (the benchmark table only looks results up)."""
    return spec.budget * spec.epochs if spec.component_class("estimator").trains_networks else 0


def experiment_create(*, user: AbstractBaseUser | None, name: str, spec: ExperimentSpec,
                      team: Team | str | int | None = None, enqueue: bool = True) -> Experiment:
    """Validate and store a new experiment in a team, then queue it once the transaction commits; one over the
    team's review threshold or monthly quota waits as `pending_review` instead. Raises SpecError.

    `enqueue=False` leaves it queued for the caller to run in-process (`nas submit --inline`)."""
    name = (name or "").strip()
    if not name:
        raise SpecError("name", "give the experiment a name")
    if "\ufffd" in name or any(0xDC80 <= ord(c) <= 0xDCFF for c in name):  # bytes that were not UTF-8
        raise SpecError("name", "is not valid UTF-8 text")
    if len(name) > NAME_MAX_LENGTH:
        raise SpecError("name", f"at most {NAME_MAX_LENGTH} characters (it has {len(name)})")
    user = user if user is not None and user.is_authenticated else None
    team = submission_team(user, team)
    spec = spec_for_team(spec, team)
    cost = experiment_cost(spec)
    with transaction.atomic():
        # A no-op write to the team's row: it holds the row (PostgreSQL) or the database (SQLite) until commit, so
        # two submissions that each fit the quota but not together are decided one after the other.
        Team.objects.filter(pk=team.pk).update(name=F("name"))
        reason = review_reason(team, cost)
        now = timezone.now()
        experiment = Experiment.objects.create(
            name=name, team=team, dataset=spec.dataset, space=spec.space, strategy=spec.strategy,
            estimator=spec.estimator, budget=spec.budget, epochs=spec.epochs, seed=spec.seed, top_k=spec.top_k,
            options=spec.options, patience=spec.patience, max_seconds=spec.max_seconds, parallelism=spec.parallelism,
            failure_policy=spec.failure_policy, max_failures=spec.max_failures, bf16=spec.bf16,
            channels_last=spec.channels_last, created_by=user, cost=cost,
            status=Experiment.Status.PENDING_REVIEW if reason else Experiment.Status.QUEUED, review_reason=reason,
            admitted_at=None if reason else now)
        event_record(experiment, ExperimentEvent.Action.CREATED, actor=user,
                     detail=f"waits for review: {reason}" if reason else "")
        if user is not None:
            membership_touch(user, team)
        if enqueue and not reason:
            transaction.on_commit(lambda: experiment_enqueue(experiment.pk))
    return experiment


def experiment_approve(experiment: Experiment, user: AbstractBaseUser, comment: str = "") -> bool:
    """A reviewer (staff, or a team admin other than the owner) lets a pending experiment run."""
    _require(can_review(user, experiment), "only staff or an admin of the team other than its owner may review it")
    with transaction.atomic():
        now = timezone.now()
        changed = Experiment.objects.filter(pk=experiment.pk, status=Experiment.Status.PENDING_REVIEW).update(
            status=Experiment.Status.QUEUED, reviewed_by=user, reviewed_at=now, review_comment=comment.strip(),
            admitted_at=now)
        if changed:
            event_record(experiment, ExperimentEvent.Action.APPROVED, actor=user, detail=comment.strip())
            transaction.on_commit(lambda: experiment_enqueue(experiment.pk))
    return bool(changed)


def experiment_reject(experiment: Experiment, user: AbstractBaseUser, reason: str) -> bool:
    """A reviewer refuses a pending experiment; it keeps the reason and never runs."""
    _require(can_review(user, experiment), "only staff or an admin of the team other than its owner may review it")
    reason = (reason or "").strip()
    if not reason:
        raise SpecError("reason", "say why the experiment is rejected")
    with transaction.atomic():
        now = timezone.now()
        changed = Experiment.objects.filter(pk=experiment.pk, status=Experiment.Status.PENDING_REVIEW).update(
            status=Experiment.Status.REJECTED, reviewed_by=user, reviewed_at=now, review_comment=reason,
            finished_at=now)
        if changed:
            event_record(experiment, ExperimentEvent.Action.REJECTED, actor=user, detail=reason)
    return bool(changed)


def experiment_cancel(experiment: Experiment, user: AbstractBaseUser | None = None) -> bool:
    """Stop a pending, queued or running experiment; its trials stay. The worker notices at its next epoch.
    `user=None` is the platform itself (the admin and the tests act as a user)."""
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may cancel it")
    with transaction.atomic():
        now = timezone.now()
        changed = Experiment.objects.filter(
            pk=experiment.pk, status__in=(*Experiment.ACTIVE, Experiment.Status.PENDING_REVIEW)).update(
            status=Experiment.Status.CANCELLED, finished_at=now, **_clock_stopped(experiment.pk, now))
        if changed:
            event_record(experiment, ExperimentEvent.Action.CANCELLED, actor=user)
    return bool(changed)


def experiment_resume(experiment: Experiment, user: AbstractBaseUser | None = None) -> bool:
    """Queue a cancelled or failed experiment again; it continues from its last recorded trial. One cancelled
    before it was ever approved goes back to review."""
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may resume it")
    with transaction.atomic():
        admitted = Experiment.objects.filter(pk=experiment.pk, admitted_at__isnull=False).exists()
        status = Experiment.Status.QUEUED if admitted else Experiment.Status.PENDING_REVIEW
        changed = Experiment.objects.filter(
            pk=experiment.pk, status__in=(Experiment.Status.CANCELLED, Experiment.Status.FAILED)
        ).update(status=status, error="", traceback="", finished_at=None, claimed_by="", consecutive_failures=0)
        if changed:
            event_record(experiment, ExperimentEvent.Action.RESUMED, actor=user,
                         detail="" if admitted else "back to review: it was never approved")
            if admitted:
                transaction.on_commit(lambda: experiment_enqueue(experiment.pk))
    return bool(changed)


def experiment_delete(experiment: Experiment, user: AbstractBaseUser | None = None) -> bool:
    """Delete a finished, cancelled, rejected or pending experiment with its trials and kept weights; the audit
    log keeps a line saying who deleted it. A queued or running one must be cancelled first (False)."""
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may delete it")
    with transaction.atomic():
        row = Experiment.objects.select_for_update().filter(pk=experiment.pk).exclude(
            status__in=Experiment.ACTIVE).first()
        if row is None:
            return False
        event_record(row, ExperimentEvent.Action.DELETED, actor=user,
                     detail=f"{row.trials_done} trials, status {row.status}")
        row.delete()
        from nasjobs.artifacts import ArtifactStore

        folder = ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment.pk).dir
        transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))
    return True


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
            experiment_started(experiment_id, worker, now)
    return bool(changed)


def experiment_started(experiment_id: int, worker: str, now: datetime) -> None:
    """A worker took the experiment up: this run's clock starts; the first time, the audit log says so."""
    Experiment.objects.filter(pk=experiment_id, active_since__isnull=True).update(active_since=now)
    if Experiment.objects.filter(pk=experiment_id, started_at__isnull=True).update(started_at=now):
        event_record(Experiment.objects.get(pk=experiment_id), ExperimentEvent.Action.STARTED, label=worker)


def experiment_heartbeat(experiment_id: int, worker: str) -> str | None:
    """Renew the lease; returns the current status, or None if another worker holds the experiment."""
    Experiment.objects.filter(pk=experiment_id, claimed_by=worker, status=Experiment.Status.RUNNING).update(
        heartbeat_at=timezone.now())
    row = Experiment.objects.filter(pk=experiment_id).values("status", "claimed_by").first()
    if row is None or row["claimed_by"] != worker:
        return None
    return row["status"]


def trial_result_fields(trial: TrialRecord) -> dict[str, Any]:
    """A trial row's fields that a job of it sets: its figures, its weights, and where the strategy stands."""
    return dict(val_acc=trial.val_acc, params=trial.params, flops=trial.flops, train_seconds=trial.train_seconds,
                fidelity=trial.fidelity, curve=trial.curve, loss_curve=trial.loss_curve,
                weights_path=trial.weights_path or "",
                search_seconds=trial.search_seconds, evaluations=trial.evaluations, status=trial.status,
                told=trial.told)


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
        values = dict(arch_key=trial.arch_key, arch_display=trial.arch_display, estimator=trial.estimator,
                      proposals=trial.proposals, distance_to_incumbent=trial.distance_to_incumbent,
                      finished_at=timezone.now(), **trial_result_fields(trial))
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
        best = Trial.objects.filter(Trial.WITH_FIGURE, experiment_id=experiment_id).order_by("-val_acc", "number").first()
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


def experiment_finish(experiment_id: int, worker: str, best_number: int, test_acc: float | None,
                      stop_reason: str) -> bool:
    with transaction.atomic():
        now = timezone.now()
        changed = Experiment.objects.filter(pk=experiment_id, claimed_by=worker, status=Experiment.Status.RUNNING
                                            ).update(status=Experiment.Status.SUCCEEDED, test_acc=test_acc,
                                                     best_trial_number=best_number, stop_reason=stop_reason,
                                                     finished_at=now, heartbeat_at=now,
                                                     **_clock_stopped(experiment_id, now))
        if changed:
            experiment = Experiment.objects.get(pk=experiment_id)
            event_record(experiment, ExperimentEvent.Action.FINISHED, label=worker,
                         detail=f"stopped by {experiment.get_stop_reason_display()}")
    return bool(changed)


def experiment_fail(experiment_id: int, worker: str, error: str, traceback: str = "") -> bool:
    """Mark a run failed: `error` is the one line everyone in the team reads, `traceback` is for its admins."""
    with transaction.atomic():
        now = timezone.now()
        changed = Experiment.objects.filter(pk=experiment_id, claimed_by=worker, status=Experiment.Status.RUNNING
                                            ).update(status=Experiment.Status.FAILED, error=error[:1000],
                                                     traceback=traceback[:20000], finished_at=now,
                                                     **_clock_stopped(experiment_id, now))
        if changed:
            event_record(Experiment.objects.get(pk=experiment_id), ExperimentEvent.Action.FAILED, label=worker,
                         detail=error[:500])
    return bool(changed)


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
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may calibrate it")
    if not 2 <= k <= 1000:
        raise SpecError("k", "measure between 2 and 1000 candidates")
    if not 1 <= epochs <= 10_000:
        raise SpecError("epochs", "must be an integer from 1 to 10000")
    if experiment.trials.filter(Trial.WITH_FIGURE).count() < 2:
        raise SpecError("k", "the experiment needs at least two evaluated trials first")
    with transaction.atomic():
        calibration = Calibration.objects.create(
            experiment=experiment, k=k, epochs=epochs, seed=seed,
            created_by=user if user is not None and user.is_authenticated else None)
        if enqueue:
            transaction.on_commit(lambda: calibration_enqueue(calibration.pk))
    return calibration


def calibration_enqueue(calibration_id: int) -> None:
    from webapp.experiments.tasks import run_calibration

    run_calibration.apply_async((calibration_id,), queue=settings.NAS_GPU_QUEUE)


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
            "params": trial.params, "flops": trial.flops, "figure": experiment.figure.as_json()}
    return export_archive(experiment.spec(), trial.arch_key, state, meta)
