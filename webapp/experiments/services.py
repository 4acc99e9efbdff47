"""Business actions on experiments and trials; views, commands and the worker adapter all go through these."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from nasjobs.artifacts import ArtifactStore
from nasjobs.export import export_file
from nasjobs.records import DONE, FAILED, IN_FLIGHT, PENDING
from nasjobs.search import LIMITS, ExperimentSpec, SpecError, TrialRecord, validate_spec
from webapp.datasets.selectors import dataset_by_engine_name, dataset_reference, dataset_refusal
from webapp.experiments import selectors
from webapp.experiments.leases import LostClaim, RowJobs
from webapp.experiments.models import Calibration, Experiment, ExperimentEvent, Export, SearchEpoch, Trial
from webapp.experiments.notifications import NOTIFIED, notify
from webapp.experiments.selectors import can_manage, can_review
from webapp.teams.models import Team
from webapp.teams.selectors import default_team, member_teams, month_start
from webapp.teams.services import membership_touch, review_reason

log = logging.getLogger(__name__)
NAME_MAX_LENGTH = Experiment._meta.get_field("name").max_length


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
            channels_last=spec.channels_last, max_params=spec.max_params, max_macs=spec.max_macs, created_by=user,
            cost=cost,
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
    An experiment that has ended but has a retraining under way has that retraining stopped instead (it is
    marked failed, saying so; its worker notices at its next heartbeat). `user=None` is the platform itself
    (the admin and the tests act as a user)."""
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may cancel it")
    with transaction.atomic():
        now = timezone.now()
        changed = Experiment.objects.filter(
            pk=experiment.pk, status__in=(*Experiment.ACTIVE, Experiment.Status.PENDING_REVIEW)).update(
            status=Experiment.Status.CANCELLED, finished_at=now, **_clock_stopped(experiment.pk, now))
        if changed:
            event_record(experiment, ExperimentEvent.Action.CANCELLED, actor=user)
            return True
        who = user.get_username() if user is not None and user.is_authenticated else "the platform"
        stopped = list(retrains_in_flight(experiment.pk).values_list("number", flat=True))
        if stopped and retrains_in_flight(experiment.pk).update(status=FAILED, error=f"cancelled by {who}",
                                                                finished_at=now):
            event_record(experiment, ExperimentEvent.Action.CANCELLED, actor=user,
                         detail=f"retraining {', '.join(map(str, stopped))}")
            return True
    return False


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
    """Delete a finished, cancelled, rejected or pending experiment with its trials, kept weights and exports
    (rows and files; a build under way finds its row gone and stops); the audit
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


def trial_result_fields(trial: TrialRecord, seq: int) -> dict[str, Any]:
    """A trial row's fields that a job of it sets: its figures, its weights, and where the strategy stands.

    `seq` is the experiment's planning step that records it, taken under the experiment row's lock, so the
    steps commit in their order and a page that has seen step n has seen every earlier one (its cursor)."""
    epochs = trial.fidelity.get("epochs")
    return dict(val_acc=trial.val_acc, params=trial.params, flops=trial.flops, train_seconds=trial.train_seconds,
                fidelity=trial.fidelity, curve=trial.curve, loss_curve=trial.loss_curve,
                weights_path=trial.weights_path or "",
                search_seconds=trial.search_seconds, evaluations=trial.evaluations, status=trial.status,
                told=trial.told, seq=seq, resumed_from_epoch=trial.resumed_from_epoch,
                epochs_trained=epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None)


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
                 heartbeat_at=timezone.now(), plan_version=F("plan_version") + 1)
        if not updated:
            raise LostClaim(f"experiment {experiment_id} is no longer held by {worker}")
        seq = Experiment.objects.filter(pk=experiment_id).values_list("plan_version", flat=True).get()
        values = dict(arch_key=trial.arch_key, arch_display=trial.arch_display, estimator=trial.estimator,
                      proposals=trial.proposals, distance_to_incumbent=trial.distance_to_incumbent,
                      finished_at=timezone.now(), **trial_result_fields(trial, seq))
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
    with a restarted Redis) and running ones (their worker may be dead; the claim waits out the lease), and every
    unfinished retraining."""
    ids = list(Experiment.objects.filter(status__in=Experiment.ACTIVE).values_list("pk", flat=True))
    for pk in ids:
        experiment_enqueue(pk)
    for pk in Trial.everything.filter(kind=Trial.Kind.RETRAIN, status__in=IN_FLIGHT).values_list("pk", flat=True):
        retrain_enqueue(pk)
    return ids


# ---------------------------------------------------------------------------------------------------- extend, retrain
def _charge(experiment: Experiment, added: int) -> dict[str, Any]:
    """The fields that add `added` trial-epochs to an admitted experiment's cost, counted in this month's quota:
    one admitted in an earlier month counts from now, with its whole cost (the quota never under-counts)."""
    fields: dict[str, Any] = {"cost": F("cost") + added}
    if experiment.admitted_at is None or experiment.admitted_at < month_start():
        fields["admitted_at"] = timezone.now()
    return fields


def _since_best(experiment: Experiment) -> int:
    """Evaluated trials after the best one: what patience counts."""
    if experiment.best_trial_number is None:
        return 0
    return experiment.trials.filter(status=DONE, number__gt=experiment.best_trial_number).count()


def experiment_extend(experiment: Experiment, user: AbstractBaseUser | None, trials: int) -> bool:
    """Give a succeeded search `trials` more evaluations and queue it again. It continues the same strategy
    state: the planner is restored from the checkpoint and the told order, so nothing already evaluated is
    evaluated again and a deterministic strategy proposes what a longer run would have (`Planner.restore`).

    The budget becomes the evaluations done plus `trials`. A stop rule that ended the search would end it again at
    once, so: a patience that ran out is lifted (the user asked for these trials), a time limit reached gets another
    window of the same length. The added cost goes through the team's review threshold and monthly quota like a
    new submission: over either, the experiment waits for a reviewer. Raises SpecError (nothing changes) for a
    bad count or a search that cannot go on; False when it is not a succeeded experiment."""
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may extend it")
    high = LIMITS["budget"][1]
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SpecError("trials", "extend by at least 1 trial")
    with transaction.atomic():
        row = Experiment.objects.select_for_update().defer("strategy_state").filter(pk=experiment.pk).first()
        if row is None or row.status != Experiment.Status.SUCCEEDED:
            return False
        if row.is_differentiable:
            raise SpecError("trials", "a differentiable search is one supernet search; clone it to search again")
        if row.stop_reason == Experiment.StopReason.EXHAUSTED:
            raise SpecError("trials", "its strategy had no new architecture left to propose")
        if retrains_in_flight(row.pk).exists():
            raise SpecError("trials", "a retraining is under way; wait for it to end or cancel it")
        budget = row.trials_done + trials
        if budget > high:
            raise SpecError("trials", f"the budget would be {budget:,} trials; at most {high:,}")
        notes = [f"by {trials} trial{'s' if trials > 1 else ''} to a budget of {budget}"]
        patience, max_seconds = row.patience, row.max_seconds
        if patience and _since_best(row) >= patience:
            patience = 0
            notes.append(f"its patience of {row.patience} trials, which had run out, lifted")
        if max_seconds and row.seconds_before >= max_seconds:
            max_seconds = min(LIMITS["max_seconds"][1], int(row.seconds_before) + 1 + row.max_seconds)
            notes.append(f"its time limit raised to {max_seconds} s (another {row.max_seconds} s)")
        spec = spec_for_team(dataclasses.replace(row.spec(), budget=budget, patience=patience,
                                                 max_seconds=max_seconds), row.team)
        added = experiment_cost(dataclasses.replace(spec, budget=trials))
        Team.objects.filter(pk=row.team_id).update(name=F("name"))  # quota decisions one at a time, as on create
        reason = review_reason(row.team, added)
        fields: dict[str, Any] = dict(
            budget=budget, patience=patience, max_seconds=max_seconds, stop_reason="", finished_at=None,
            test_acc=None, error="", traceback="", claimed_by="", consecutive_failures=0,
            # A worker's cached planner still knows the old budget: a new planning step makes it stale.
            plan_version=F("plan_version") + 1)
        if reason:
            reason = f"its extension by {trials} trials {reason.removeprefix('it ')}"
            fields.update(status=Experiment.Status.PENDING_REVIEW, review_reason=reason, reviewed_by=None,
                          reviewed_at=None, review_comment="", admitted_at=None, cost=F("cost") + added)
            notes.append(f"waits for review: {reason}")
        else:
            fields.update(status=Experiment.Status.QUEUED, **_charge(row, added))
        Experiment.objects.filter(pk=row.pk).update(**fields)
        event_record(row, ExperimentEvent.Action.EXTENDED, actor=user, detail="; ".join(notes))
        if not reason:
            transaction.on_commit(lambda: experiment_enqueue(row.pk))
    return True


def retrains_in_flight(experiment_id: int):
    return Trial.everything.filter(experiment_id=experiment_id, kind=Trial.Kind.RETRAIN, status__in=IN_FLIGHT)


def experiment_retrain(experiment: Experiment, user: AbstractBaseUser | None, epochs: int) -> Trial:
    """Queue a retraining of the experiment's best architecture from scratch for `epochs` epochs, as a trial row
    of its own kind (`Trial.Kind.RETRAIN`): it is run, leased, taken over and cancelled like any trial, but never
    told to the strategy, spends no budget and stays out of the leaderboard. Its epochs count in the team's
    quota. Raises SpecError, changing nothing, when it cannot be done: the search still running, no best trial,
    a table-lookup dataset (nothing to train), epochs out of range, one already under way, or over the quota."""
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may retrain it")
    low, high = LIMITS["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not low <= epochs <= high:
        raise SpecError("epochs", f"must be an integer from {low} to {high}")
    with transaction.atomic():
        row = Experiment.objects.select_for_update().defer("strategy_state").select_related("team").get(
            pk=experiment.pk)
        if row.status in (*Experiment.ACTIVE, Experiment.Status.PENDING_REVIEW):
            raise SpecError("epochs", f"the experiment is {row.status.replace('_', ' ')}; retrain once its search "
                                      "has ended")
        best = row.trials.filter(number=row.best_trial_number).first() if row.best_trial_number is not None else None
        if best is None:
            raise SpecError("epochs", "the experiment has no best trial yet")
        dataset = dataset_by_engine_name(row.dataset)
        if dataset is not None and dataset.kind == "nb201":
            raise SpecError("epochs", f"{row.dataset} is a NAS-Bench-201 table: its figures are looked up, "
                                      "nothing is trained")
        if retrains_in_flight(row.pk).exists():
            raise SpecError("epochs", "a retraining of this experiment is already under way")
        Team.objects.filter(pk=row.team_id).update(name=F("name"))
        reason = review_reason(row.team, epochs)
        if reason:
            raise SpecError("epochs", f"a retraining of {epochs} epochs {reason.removeprefix('it ')}; ask for fewer")
        last = Trial.everything.filter(experiment=row, kind=Trial.Kind.RETRAIN).aggregate(n=Max("number"))["n"]
        number = 0 if last is None else last + 1
        trial = Trial.everything.create(
            experiment=row, kind=Trial.Kind.RETRAIN, number=number, source_number=best.number,
            arch_key=best.arch_key, arch_display=best.arch_display, val_acc=0.0, params=best.params,
            flops=best.flops, train_seconds=0.0, estimator="train", fidelity={"epochs": epochs}, curve=[],
            evaluations=[], status=PENDING)
        Experiment.objects.filter(pk=row.pk).update(**_charge(row, epochs))
        event_record(row, ExperimentEvent.Action.RETRAIN, actor=user,
                     detail=f"trial {best.number} from scratch for {epochs} epochs")
        transaction.on_commit(lambda: retrain_enqueue(trial.pk))
    return trial


def retrain_enqueue(trial_id: int) -> None:
    from webapp.experiments.tasks import run_trial

    run_trial.apply_async((trial_id,), queue=settings.NAS_GPU_QUEUE, soft_time_limit=settings.NAS_TRIAL_TIME_LIMIT
                          or None)


def retrain_record(trial_id: int, worker: str, result: Any, test_acc: float | None, error: str = "",
                   trace: str = "") -> bool:
    """Store a retraining's outcome (an `EvalResult` and its test accuracy, or the error) if this worker still
    holds it; the audit log says how it went."""
    now = timezone.now()
    if error:
        fields: dict[str, Any] = dict(status=FAILED, error=error[:1000], traceback=trace[:20000])
    else:
        fields = dict(status=DONE, val_acc=result.val_acc, params=result.params, flops=result.flops,
                      train_seconds=result.train_seconds, fidelity=result.fidelity, curve=result.curve,
                      evaluations=[result.val_acc], test_acc=test_acc)
    with transaction.atomic():
        changed = Trial.everything.filter(pk=trial_id, claimed_by=worker, status="running").update(
            finished_at=now, heartbeat_at=now, **fields)
        if changed:
            trial = Trial.everything.select_related("experiment").get(pk=trial_id)
            detail = (f"retraining {trial.number} failed: {error[:400]}" if error else
                      f"retraining {trial.number} of trial {trial.source_number}, {trial.fidelity.get('epochs')} "
                      f"epochs: test accuracy {100 * test_acc:.2f}%")
            event_record(trial.experiment, ExperimentEvent.Action.RETRAINED, label=worker, detail=detail)
    return bool(changed)


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


CALIBRATIONS = RowJobs(Calibration, Calibration.Status.QUEUED, Calibration.Status.RUNNING,
                       lambda pk: calibration_enqueue(pk), cancelled=Calibration.Status.CANCELLED)
calibration_claim = CALIBRATIONS.claim
calibration_heartbeat = CALIBRATIONS.heartbeat
calibration_hand_back = CALIBRATIONS.hand_back
calibrations_recover = CALIBRATIONS.recover
calibrations_sweep = CALIBRATIONS.sweep


def calibration_progress(calibration_id: int, worker: str, pairs: list[dict[str, Any]]) -> None:
    """Keep the candidates measured so far, so a calibration taken over by another worker continues from them.
    Raises LostClaim once this worker no longer holds it (cancelled, taken over, deleted)."""
    if not CALIBRATIONS.mine(calibration_id, worker).update(pairs=pairs, heartbeat_at=timezone.now()):
        raise LostClaim(f"calibration {calibration_id} is no longer held by {worker}")


def calibration_finish(calibration_id: int, worker: str, result: Any) -> bool:
    now = timezone.now()
    return bool(CALIBRATIONS.mine(calibration_id, worker).update(
        status=Calibration.Status.SUCCEEDED, reference=result.reference, k=result.k,
        kendall_tau=result.kendall_tau, spearman_rho=result.spearman_rho, pairs=result.pairs,
        seconds=result.seconds, finished_at=now, heartbeat_at=now))


def calibration_fail(calibration_id: int, worker: str, error: str) -> bool:
    return bool(CALIBRATIONS.mine(calibration_id, worker).update(
        status=Calibration.Status.FAILED, error=error[:5000], finished_at=timezone.now()))


def calibration_cancel(calibration: Calibration, user: AbstractBaseUser | None = None) -> bool:
    """Stop a queued or running calibration; the candidates it measured stay on its row. Its worker sees the
    cancel at its next heartbeat and stops between two batches, writing nothing more. The same people as may
    cancel the experiment may cancel it; False (nothing changes) once it has ended."""
    experiment = calibration.experiment
    if user is not None:
        _require(can_manage(user, experiment), "only its owner, a team admin or staff may cancel it")
    with transaction.atomic():
        changed = Calibration.objects.filter(pk=calibration.pk, status__in=Calibration.ACTIVE).update(
            status=Calibration.Status.CANCELLED, finished_at=timezone.now())
        if changed:
            event_record(experiment, ExperimentEvent.Action.CANCELLED, actor=user,
                         detail=f"calibration {calibration.pk}")
    return bool(changed)


def export_path(experiment_id: int, number: int, fmt: str) -> Path:
    """Where the trial's export in `fmt` is kept (`ArtifactStore.export_path`), deleted with the experiment."""
    suffix = selectors.export_format(fmt).suffix
    return ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment_id).export_path(number, suffix)


def trial_export_file(experiment: Experiment, trial: Trial, fmt: str, path: Path,
                      check: Callable[[], None] = lambda: None) -> bool:
    """Write the trial as `fmt` (see `nasjobs.export`) to `path`, with its trained weights when they were kept;
    returns whether they were. A worker calls this (`export_run_now`); so does `nas export`."""
    selectors.export_format(fmt)
    state = ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment.pk).load(trial.number) if trial.weights_path \
        else None
    meta = {"title": f"{experiment.name}: trial {trial.number} of experiment {experiment.pk}",
            "experiment": experiment.pk, "trial": trial.number, "val_acc": trial.val_acc,
            "test_acc": experiment.test_acc if experiment.best_trial_number == trial.number else None,
            "params": trial.params, "flops": trial.flops, "figure": experiment.figure.as_json()}
    path.parent.mkdir(parents=True, exist_ok=True)
    export_file(experiment.spec(), trial.arch_key, state, fmt, path, meta, check)
    return state is not None


def export_request(experiment: Experiment, trial: Trial, fmt: str, user: AbstractBaseUser | None = None) -> Export:
    """Ask for the trial as a file in `fmt`: the row of that trial and format, created and queued for a worker
    the first time, and reused after; queued again when its last build failed, when its file has gone, or when
    it was built untrained and the trial's weights are now kept. Raises SpecError for an unknown format."""
    selectors.export_format(fmt)
    with transaction.atomic():
        export, created = Export.objects.get_or_create(
            trial=trial, format=fmt, defaults={"created_by": user if user is not None and user.is_authenticated
                                               else None})
        again = Q(status=Export.Status.FAILED)
        if export.status == Export.Status.READY and (
                (trial.weights_path and not export.trained)
                or not export_path(experiment.pk, trial.number, fmt).is_file()):
            again |= Q(status=Export.Status.READY)
        requeued = Export.objects.filter(again, pk=export.pk).update(
            status=Export.Status.QUEUED, error="", traceback="", claimed_by="", heartbeat_at=None)
        if created or requeued:
            transaction.on_commit(lambda: export_enqueue(export.pk))
    export.refresh_from_db()
    return export


def export_enqueue(export_id: int) -> None:
    from webapp.experiments.tasks import build_export

    build_export.apply_async((export_id,), queue=settings.NAS_CPU_QUEUE)


EXPORTS = RowJobs(Export, Export.Status.QUEUED, Export.Status.RUNNING, lambda pk: export_enqueue(pk))
export_claim = EXPORTS.claim
export_heartbeat = EXPORTS.heartbeat
export_hand_back = EXPORTS.hand_back
exports_recover = EXPORTS.recover
exports_sweep = EXPORTS.sweep


def export_finish(export_id: int, worker: str, size: int, trained: bool) -> bool:
    now = timezone.now()
    return bool(EXPORTS.mine(export_id, worker).update(
        status=Export.Status.READY, size=size, trained=trained, finished_at=now, heartbeat_at=now))


def export_fail(export_id: int, worker: str, error: str, traceback: str = "") -> bool:
    """Record why a build failed; requesting the export again retries it."""
    return bool(EXPORTS.mine(export_id, worker).update(
        status=Export.Status.FAILED, error=error[:1000], traceback=traceback[-20000:], finished_at=timezone.now()))
