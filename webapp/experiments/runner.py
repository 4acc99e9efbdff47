"""Experiments on Celery workers: every trial a job of its own, the next proposals planned under a lock on the
experiment's row as each result is told, and a lease kept alive by a thread so a dead worker's job is taken over.

A differentiable search (one supernet, checkpointed every epoch) runs as one job under the same kind of lease,
through `DjangoStore`."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import socket
import time
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from nasjobs.artifacts import ArtifactStore
from nasjobs.estimators import ESTIMATORS
from nasjobs.planner import Plan, Planner
from nasjobs.records import DONE, FAILED, IN_FLIGHT, PENDING, RUNNING, SearchCancelled, TrialRecord
from nasjobs.rng import derive_seed
from nasjobs.search import SearchRunner, resolve_device
from nasjobs.training import between_batches
from webapp.experiments import services
from webapp.experiments.leases import Lease, heartbeat_seconds, lease_seconds
from webapp.experiments.logtail import captured
from webapp.experiments.models import Calibration, Experiment, ExperimentEvent, Export, Trial, Worker

log = logging.getLogger(__name__)
CACHED = 4  # experiments whose runner and planner a worker process keeps between its jobs


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@functools.cache
def device_label() -> str:
    """The device trials run on here, as a trial records it: `cuda:0 NVIDIA H200 (CUDA_VISIBLE_DEVICES=3)`; worked
    out once per process (every claim records it)."""
    device = resolve_device(settings.NAS_DEVICE)
    if device.type != "cuda":
        return str(device)
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"cuda:{index} {torch.cuda.get_device_name(index)}" + (f" (CUDA_VISIBLE_DEVICES={pinned})" if pinned else "")


# ---------------------------------------------------------------------------------------------------- caches
_runners: OrderedDict[int, tuple[str, SearchRunner]] = OrderedDict()
_planners: OrderedDict[int, tuple[int, Planner]] = OrderedDict()


def _remember(cache: OrderedDict, key: int, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHED:
        cache.popitem(last=False)


def runner_for(experiment: Experiment) -> SearchRunner:
    """The experiment's components (space, estimator, dataset once a trial needs it), built once per process and
    built again if its settings change (or where its weights go: a reused id in another artifact store)."""
    spec = experiment.spec()
    fingerprint = json.dumps([dataclasses.asdict(spec), str(settings.NAS_ARTIFACTS_DIR), settings.NAS_CHECKPOINT_SECONDS],
                             sort_keys=True, default=str)
    cached = _runners.get(experiment.pk)
    if cached is not None and cached[0] == fingerprint:
        _runners.move_to_end(experiment.pk)
        return cached[1]
    runner = SearchRunner(spec, None, ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment.pk),
                          resolve_device(settings.NAS_DEVICE), settings.NAS_MAX_SKIPPED_IN_A_ROW,
                          settings.NAS_CHECKPOINT_SECONDS)
    _remember(_runners, experiment.pk, (fingerprint, runner))
    return runner


def trial_records(experiment_id: int, *, curves: bool = False) -> list[TrialRecord]:
    """Every trial of the experiment as the engine records it, in number order; learning curves only on request
    (planning needs none, and they are most of a trial's row). Log tails and tracebacks are never read."""
    rows = Trial.objects.filter(experiment_id=experiment_id).order_by("number")
    rows = rows.defer("log_tail", "traceback") if curves else rows.defer(*Trial.BLOBS)
    return [record_of(t, curves=curves) for t in rows]


def record_of(t: Trial, *, curves: bool = True) -> TrialRecord:
    return TrialRecord(t.number, t.arch_key, t.arch_display, t.val_acc, t.params, t.flops, t.train_seconds,
                       t.fidelity, t.curve if curves else [], t.weights_path or None, t.estimator, t.search_seconds,
                       t.proposals, t.distance_to_incumbent, list(t.evaluations), status=t.status, job=t.job,
                       told=t.told, error=t.error, loss_curve=list(t.loss_curve) if curves else [],
                       resumed_from_epoch=t.resumed_from_epoch)


def _planner(experiment: Experiment) -> Planner:
    """The experiment's planner as of its last planning step: this process's own when it took that step, else
    restored from the strategy checkpoint and the trials."""
    cached = _planners.get(experiment.pk)
    if cached is not None and cached[0] == experiment.plan_version:
        return cached[1]
    runner = runner_for(experiment)
    planner = runner.planner(experiment.parallelism, experiment.failure_policy, runner.new_strategy())
    state = Experiment.objects.filter(pk=experiment.pk).values_list("strategy_state", flat=True).first()
    planner.restore(state, trial_records(experiment.pk))
    return planner


@contextmanager
def planning(experiment_id: int) -> Iterator[tuple[Experiment, Planner]]:
    """The experiment's row locked until commit, with its planner: one planning step at a time, whichever worker
    takes it. The caller saves the step with `_planned`; a step that fails leaves no planner cached."""
    try:
        with transaction.atomic():
            experiment = Experiment.objects.select_for_update().defer("strategy_state").get(pk=experiment_id)
            yield experiment, _planner(experiment)
    except BaseException:
        _planners.pop(experiment_id, None)
        raise


def _planned(experiment: Experiment, planner: Planner, **fields: Any) -> None:
    """Save a planning step: the strategy's checkpoint, the step counted (so other processes' planners are seen
    to be stale), the best trial, the proposals made and skipped, and `fields`."""
    best = planner.best
    Experiment.objects.filter(pk=experiment.pk).update(
        strategy_state=planner.state_dict(), plan_version=F("plan_version") + 1,
        best_val_acc=best.val_acc if best else None, best_trial_number=best.number if best else None,
        proposals=planner.proposals, skipped_proposals=planner.skipped, heartbeat_at=timezone.now(), **fields)
    _remember(_planners, experiment.pk, (experiment.plan_version + 1, planner))


def _failed_fields(experiment: Experiment, worker: str, now: Any, message: str, trace: str = "") -> dict[str, Any]:
    """The fields of a running experiment that fails now, saying why, with the event recorded."""
    services.event_record(experiment, ExperimentEvent.Action.FAILED, label=worker, detail=message[:500])
    return {"status": Experiment.Status.FAILED, "error": message[:1000], "traceback": trace, "finished_at": now,
            **experiment.clock_stopped(now)}


def _propose(experiment: Experiment, planner: Planner, worker: str, fields: dict[str, Any]) -> Plan:
    """Ask the planner for more trials, write them as pending and queue them once the step commits. A planner
    that can propose nothing within the deployment limits fails the experiment: its fields join `fields`."""
    plan = planner.plan(experiment.search_seconds(timezone.now()))
    if planner.infeasible:
        fields.update(_failed_fields(experiment, worker, timezone.now(), planner.infeasible))
        plan = Plan(plan.jobs, None)
    new = [t for t in plan.jobs if not t.job]
    Trial.objects.bulk_create([Trial(experiment_id=experiment.pk, number=t.number, arch_key=t.arch_key,
                                     arch_display=t.arch_display, val_acc=0.0, params=0, flops=0, train_seconds=0.0,
                                     estimator=t.estimator, fidelity=t.fidelity, curve=[], evaluations=[],
                                     proposals=t.proposals, distance_to_incumbent=t.distance_to_incumbent,
                                     status=PENDING) for t in new])
    for t in plan.jobs:
        if t.job:  # an evaluated trial's next job: once more, or its next rung
            Trial.objects.filter(experiment_id=experiment.pk, number=t.number).update(
                status=PENDING, job=t.job, proposals=t.proposals, claimed_by="")
    return plan


def _enqueue_pending(experiment: Experiment, among: Iterable[int] | None = None) -> None:
    """Queue every pending trial of the experiment once this transaction commits (duplicates are harmless). With
    `among`, the numbers of every trial that can be pending (the planner's trials in flight), only those rows are
    looked at: on PostgreSQL each trial that has been pending leaves an index entry under 'pending' until vacuum,
    and a scan of them all would grow with the experiment."""
    trials = Trial.objects.filter(experiment_id=experiment.pk, status=PENDING)
    if among is not None:
        trials = trials.filter(number__in=list(among))
    # In number order, without the model's default ordering: it joins the experiment to sort every trial of it.
    ids = list(trials.order_by("number").values_list("pk", flat=True))
    if ids:
        transaction.on_commit(lambda: trials_enqueue(experiment, ids))


def trials_enqueue(experiment: Experiment, ids: list[int], queue: str | None = None) -> None:
    from webapp.experiments.tasks import run_trial

    queue = queue or trial_queue(experiment)
    for pk in ids:
        run_trial.apply_async((pk,), queue=queue, soft_time_limit=settings.NAS_TRIAL_TIME_LIMIT or None)


def trial_queue(experiment: Experiment, kind: str = Trial.Kind.SEARCH) -> str:
    """Trials that train networks go to the GPU queue; table lookups and training-free scores to the CPU one. A
    retraining always trains."""
    trains = kind == Trial.Kind.RETRAIN or ESTIMATORS.get(experiment.estimator).trains_networks
    return settings.NAS_GPU_QUEUE if trains else settings.NAS_CPU_QUEUE


def trial_requeue(trial_id: int) -> None:
    """Queue one trial (of the search, or a retraining) again, on its own queue."""
    row = (Trial.everything.select_related("experiment").only("kind", "experiment__estimator").order_by()
           .get(pk=trial_id))
    trials_enqueue(row.experiment, [trial_id], trial_queue(row.experiment, row.kind))


# ---------------------------------------------------------------------------------------------------- leases
_last_seen = {"at": 0.0}


def worker_seen(worker: str, trial_id: int | None, *, force: bool = False) -> None:
    """Note this worker on the staff page's list (at most every few seconds unless `force`)."""
    now = time.monotonic()
    if not force and now - _last_seen["at"] < heartbeat_seconds():
        return
    _last_seen["at"] = now
    Worker.objects.update_or_create(name=worker, defaults={"host": socket.gethostname(), "device": device_label(),
                                                           "trial_id": trial_id, "seen_at": timezone.now()})


# ---------------------------------------------------------------------------------------------------- trials
# A retraining runs beside a search that has ended; a trial of the search only while its experiment runs.
RUNNABLE = Q(kind=Trial.Kind.SEARCH, experiment__status=Experiment.Status.RUNNING) | Q(kind=Trial.Kind.RETRAIN)


def trial_claim(trial_id: int, worker: str) -> bool:
    """Take a pending trial of a running experiment (or a pending retraining), or a running one whose worker went
    silent past the lease."""
    now = timezone.now()
    stale = now - timedelta(seconds=lease_seconds())
    return bool(Trial.everything.filter(Q(status=PENDING) | Q(status=RUNNING, heartbeat_at__lt=stale), RUNNABLE,
                                        pk=trial_id).update(
        status=RUNNING, claimed_by=worker, heartbeat_at=now, started_at=now, attempts=F("attempts") + 1,
        host=socket.gethostname(), device=device_label()))


def trial_heartbeat(trial_id: int, worker: str, log_tail: str | None = None) -> str:
    """Renew a trial's lease, and store its log so far when given: "held", "cancelled" (its experiment was, or the
    retraining itself) or "lost" (another worker has it)."""
    fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if log_tail is not None:
        fields["log_tail"] = log_tail
    if not Trial.everything.filter(pk=trial_id, claimed_by=worker, status=RUNNING).update(**fields):
        cancelled = Trial.everything.filter(pk=trial_id, kind=Trial.Kind.RETRAIN, status=FAILED).exists()
        return "cancelled" if cancelled else "lost"
    worker_seen(worker, trial_id, force=True)
    if Trial.everything.filter(pk=trial_id, kind=Trial.Kind.RETRAIN).exists():
        return "held"
    status = Experiment.objects.filter(trials=trial_id).values_list("status", flat=True).first()
    return "held" if status == Experiment.Status.RUNNING else "cancelled"


def trial_hand_back(trial_id: int, worker: str, *, requeue: bool = False) -> None:
    """Put an unfinished trial back as pending (a cancel, a lost claim, a stopped worker): it runs again, from its
    checkpoint where its estimator keeps one (the file stays); `requeue` queues it again at once for another
    worker."""
    if Trial.everything.filter(pk=trial_id, claimed_by=worker, status=RUNNING).update(
            status=PENDING, claimed_by="", heartbeat_at=None) and requeue:
        trial_requeue(trial_id)


def trial_run_now(trial_id: int, worker: str) -> str:
    """Claim and evaluate one trial in this process, then tell its result and plan what follows. Returns
    "done", "failed" (recorded; the search goes on), "handed back" (cancelled or taken over mid-way) or
    "skipped" (not pending: done, running elsewhere, or its experiment not running). What the engine logs
    meanwhile is kept on the trial (its last lines, `Trial.log_tail`): with each heartbeat and with its outcome.

    An estimator that trains for the whole trial keeps the trial's checkpoint up to date (`ArtifactStore.
    trial_checkpoint`, every NAS_CHECKPOINT_SECONDS), so a trial taken over from a lost worker or handed back
    resumes at its last saved epoch; the file is deleted once the trial's outcome (done or failed) is recorded."""
    if not trial_claim(trial_id, worker):
        return "skipped"
    row = Trial.everything.select_related("experiment").defer("experiment__strategy_state").get(pk=trial_id)
    experiment = row.experiment
    worker_seen(worker, trial_id)
    if row.is_retrain:
        return retrain_run(row, worker)
    record = record_of(row)
    checkpoint = ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment.pk).trial_checkpoint(
        row.number, settings.NAS_CHECKPOINT_SECONDS)
    if row.attempts > 1 and checkpoint.path.exists():
        log.info("trial %d of experiment %d taken again (attempt %d): resuming from its checkpoint", row.number,
                 experiment.pk, row.attempts)

    def evaluate(check: Callable[[], None]) -> TrialRecord:
        runner = runner_for(experiment)  # inside the job: components that cannot be built fail the trial
        if hasattr(runner.estimator, "load_history"):
            runner.load_estimator_history(trial_records(experiment.pk, curves=True))
        return runner.execute(record, check, checkpoint)

    with captured(also=(__name__,)) as tail:
        outcome, result, error, trace = _leased(row, worker, evaluate, tail.text)
    if outcome == "handed back":  # the checkpoint stays: whoever runs it next resumes there
        return outcome
    record = result or record
    try:
        finished = trial_report(experiment.pk, row.number, worker, record, len(row.evaluations), error, trace,
                                log_tail=tail.text())
    except services.LostClaim as exc:  # another worker has the trial, and the checkpoint with it
        log.warning("%s", exc)
        return "handed back"
    checkpoint.discard()
    if finished:
        experiment_finalize(experiment.pk, worker, finished)
    return "failed" if error else "done"


def _leased(row: Trial, worker: str, job: Callable[[Callable[[], None]], Any],
            log_text: Callable[[], str] | None = None) -> tuple[str, Any, str, str]:
    """Run a claimed trial's job under its lease, the lease checked between training batches: ("done", what the
    job returned, "", ""), ("failed", None, error, traceback), or ("handed back", ...) when its experiment (or the
    retraining) was cancelled or another worker took it over. A stopping worker hands it back, queued again.
    `log_text` gives the trial's log so far, stored with each heartbeat."""
    what = f"{'retraining' if row.is_retrain else 'trial'} {row.number} of experiment {row.experiment_id}"
    try:
        beat = lambda: trial_heartbeat(row.pk, worker, log_text() if log_text else None)  # noqa: E731
        with Lease(beat, heartbeat_seconds()) as lease, \
                between_batches(lease.check):
            return "done", job(lease.check), "", ""
    except SystemExit:  # the pool process told to stop (SIGTERM to every process of the worker, as a deploy does)
        log.info("%s handed back: its worker is stopping", what)
        trial_hand_back(row.pk, worker, requeue=True)
        raise
    except (SearchCancelled, services.LostClaim) as exc:
        log.info("%s stopped (%s) and handed back as pending", what,
                 "it was cancelled" if isinstance(exc, SearchCancelled) else exc)
        trial_hand_back(row.pk, worker)
        return "handed back", None, "", ""
    except SoftTimeLimitExceeded:
        log.warning("%s ran past its time limit", what)
        error = f"TimeLimit: the trial ran past its limit of {settings.NAS_TRIAL_TIME_LIMIT} s (NAS_TRIAL_TIME_LIMIT)"
        return "failed", None, error, traceback.format_exc()[-20000:]
    except Exception as exc:  # the trial fails with its reason; the worker and the search go on
        error = f"{type(exc).__name__}: {exc}"[:1000]
        log.exception("%s failed: %s", what, error)
        return "failed", None, error, traceback.format_exc()[-20000:]


def retrain_run(row: Trial, worker: str) -> str:
    """Train a claimed retraining from scratch and record its figures and test accuracy (or its failure); nothing
    is told to the strategy and no budget is spent."""
    epochs = int(row.fidelity["epochs"])
    seed = derive_seed(row.experiment.seed, "retrain", row.number) % (2**31)
    outcome, result, error, trace = _leased(
        row, worker, lambda check: runner_for(row.experiment).retrain(row.arch_key, epochs, seed, check))
    if outcome == "handed back":
        return outcome
    trained, test_acc = result if result else (None, None)
    services.retrain_record(row.pk, worker, trained, test_acc, error, trace)
    return outcome


def trial_report(experiment_id: int, number: int, worker: str, record: TrialRecord, spent_before: int,
                 error: str = "", trace: str = "", *, log_tail: str = "") -> str | None:
    """Record a trial's outcome and take the next planning step, in one transaction under the experiment's lock:
    the strategy is told (or told per the failure policy), the trial's evaluations beyond its first
    `spent_before` (those of earlier jobs) counted as spent, the next proposals are written as pending and queued
    on commit, weights beyond the best `top_k` are forgotten. After `max_failures` failures in a row the
    experiment fails, saying why. A result that finishes after a cancel is kept: it cost real compute.
    Returns why the search is over (nothing in flight, nothing more to propose), or None."""
    with planning(experiment_id) as (experiment, planner):
        now = timezone.now()
        if error:
            planner.fail(record, error)
        else:
            record.search_seconds = experiment.search_seconds(now)
            planner.tell(record)
        # Written only while this worker holds it: else the step rolls back, planner and all.
        if not Trial.objects.filter(experiment_id=experiment_id, number=number, claimed_by=worker,
                                    status=RUNNING).update(
                job="", error=error, traceback=trace, finished_at=now, heartbeat_at=now, log_tail=log_tail,
                **services.trial_result_fields(record, experiment.plan_version + 1)):
            raise services.LostClaim(f"trial {number} of experiment {experiment_id} is no longer held by {worker}")
        failures = experiment.consecutive_failures + 1 if error else 0
        fields: dict[str, Any] = {"trials_done": F("trials_done") + len(record.evaluations) - spent_before,
                                  "consecutive_failures": failures}
        forgotten = _forget_weights(experiment, planner)
        finished = None
        if experiment.status == Experiment.Status.RUNNING:
            if failures >= experiment.max_failures:
                message = (f"{failures} trials in a row failed (the experiment allows {experiment.max_failures}); "
                           f"the last: {error}")
                fields.update(_failed_fields(experiment, worker, now, message, trace))
            else:
                finished = _propose(experiment, planner, worker, fields).finished
                _enqueue_pending(experiment, planner.in_flight)
        _planned(experiment, planner, **fields)
    store = ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment_id)
    for n in forgotten:  # once the step is saved: a step rolled back must not lose weights it still keeps
        store.path(n).unlink(missing_ok=True)
    return finished


def _forget_weights(experiment: Experiment, planner: Planner) -> list[int]:
    """Forget the weights of trials no longer among the best `top_k`; returns their numbers, whose files the caller
    deletes. The planner holds every recorded trial as the database does (under the lock), so it says which have
    weights without a query; a trial finishing elsewhere meanwhile has its own file, not yet recorded."""
    numbers = sorted(planner.weighted - set(planner.kept(experiment.top_k)))
    if numbers:
        Trial.objects.filter(experiment_id=experiment.pk, number__in=numbers).update(weights_path="")
        planner.forget_weights(numbers)
    return numbers


# ---------------------------------------------------------------------------------------------------- experiments
def experiment_advance_now(experiment_id: int, worker: str) -> str:
    """Start, resume or take up an experiment: a queued one becomes running; trials whose worker went silent go
    back to pending; proposals fill it up to its parallelism and every pending trial is queued. A search that
    runs as one job (differentiable) runs here. Returns what happened."""
    experiment = Experiment.objects.defer("strategy_state").filter(pk=experiment_id).first()
    if experiment is None:
        return "finished"
    if runner_for(experiment).kind == "differentiable":
        return run_experiment_now(experiment_id, worker)
    now = timezone.now()
    with transaction.atomic():
        if Experiment.objects.filter(pk=experiment_id, status=Experiment.Status.QUEUED).update(
                status=Experiment.Status.RUNNING, active_since=now, claimed_by="", heartbeat_at=now):
            services.experiment_started(experiment_id, worker, now)
    with planning(experiment_id) as (experiment, planner):
        if experiment.status != Experiment.Status.RUNNING:
            return "finished"
        stale = now - timedelta(seconds=lease_seconds())
        Trial.objects.filter(experiment_id=experiment_id, status=RUNNING, heartbeat_at__lt=stale).update(
            status=PENDING, claimed_by="")
        fields: dict[str, Any] = {}
        finished = _propose(experiment, planner, worker, fields).finished
        _enqueue_pending(experiment)
        _planned(experiment, planner, **fields)
    if finished:
        experiment_finalize(experiment_id, worker, finished)
    return "done"


def experiment_finalize(experiment_id: int, worker: str, reason: str) -> bool:
    """Finish a search that stopped for `reason` with nothing left in flight: the best trial's test accuracy,
    under the experiment's lease (a worker killed meanwhile leaves it to the sweep). One with no evaluated trial
    fails, saying why."""
    now = timezone.now()
    stale = now - timedelta(seconds=lease_seconds())
    claimable = Q(claimed_by="") | Q(heartbeat_at__lt=stale) | Q(claimed_by=worker)
    if not Experiment.objects.filter(claimable, pk=experiment_id, status=Experiment.Status.RUNNING).exclude(
            trials__status__in=IN_FLIGHT).update(claimed_by=worker, heartbeat_at=now):
        return False
    experiment = Experiment.objects.defer("strategy_state").get(pk=experiment_id)
    runner = runner_for(experiment)
    best = _planner(experiment).best
    if best is None:
        return services.experiment_fail(experiment_id, worker, f"stopped by {reason} before any trial was evaluated")
    try:
        with Lease(lambda: experiment_heartbeat(experiment_id, worker), heartbeat_seconds()):
            test_acc = runner.best_test_accuracy(best)
    except Exception as exc:
        log.exception("experiment %s could not be finished", experiment_id)
        return services.experiment_fail(experiment_id, worker, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return services.experiment_finish(experiment_id, worker, best.number, test_acc, reason)


def experiment_heartbeat(experiment_id: int, worker: str) -> str:
    status = services.experiment_heartbeat(experiment_id, worker)
    return "lost" if status is None else "cancelled" if status == Experiment.Status.CANCELLED else "held"


def experiments_sweep() -> dict[str, list[int]]:
    """What every worker runs every few seconds: trials whose worker went silent past the lease go back to
    pending and are queued again; experiments held by a silent worker (a one-job search, a finish) are queued
    again, and so are exports and calibrations. Several workers sweeping at once is harmless: each change is a
    conditional UPDATE."""
    stale = timezone.now() - timedelta(seconds=lease_seconds())
    requeued: list[int] = []
    silent = Trial.everything.filter(RUNNABLE, status=RUNNING, heartbeat_at__lt=stale)
    for pk in list(silent.values_list("pk", flat=True)):
        if Trial.everything.filter(pk=pk, status=RUNNING, heartbeat_at__lt=stale).update(status=PENDING,
                                                                                          claimed_by=""):
            trial_requeue(pk)
            requeued.append(pk)
    held = Experiment.objects.filter(status=Experiment.Status.RUNNING, heartbeat_at__lt=stale).exclude(
        trials__status__in=IN_FLIGHT)
    experiments = list(held.values_list("pk", flat=True))
    for pk in experiments:
        services.experiment_enqueue(pk)
    return {"trials": requeued, "experiments": experiments, "exports": services.exports_sweep(),
            "calibrations": services.calibrations_sweep()}


def experiment_run_inline(experiment_id: int, worker: str) -> str:
    """Run an experiment to its end in this process, trial after trial, as workers would (`nas submit
    --inline`); returns its status then."""
    experiment_advance_now(experiment_id, worker)
    while pending := list(Trial.objects.filter(experiment_id=experiment_id, status=PENDING,
                                               experiment__status=Experiment.Status.RUNNING
                                               ).order_by("number").values_list("pk", flat=True)):
        for pk in pending:
            trial_run_now(pk, worker)
    return Experiment.objects.filter(pk=experiment_id).values_list("status", flat=True).first() or "deleted"


# ---------------------------------------------------------------------------------------------------- one-job searches
class DjangoStore:
    """Persists a search that runs as one job through the experiment services; its lease is renewed by a
    `Lease` thread, and `heartbeat` only raises once that lease reports a cancel or a takeover."""

    def __init__(self, experiment_id: int, worker: str, lease: Lease) -> None:
        self.experiment_id, self.worker, self.lease = experiment_id, worker, lease

    def load(self) -> tuple[dict[str, Any] | None, list[TrialRecord]]:
        state = Experiment.objects.filter(pk=self.experiment_id).values_list("strategy_state", flat=True).first()
        return state, trial_records(self.experiment_id, curves=True)

    def record_trial(self, trial: TrialRecord, strategy_state: dict[str, Any], kept: list[int]) -> None:
        services.trial_record(self.experiment_id, self.worker, trial, strategy_state, kept)

    def heartbeat(self) -> None:
        self.lease.check()

    def record_epoch(self, record: dict[str, Any]) -> None:
        services.search_epoch_record(self.experiment_id, self.worker, record)

    def finish(self, best_number: int, test_acc: float | None, stop_reason: str) -> None:
        services.experiment_finish(self.experiment_id, self.worker, best_number, test_acc, stop_reason)


def run_experiment_now(experiment_id: int, worker: str) -> str:
    """Claim and run (or resume) a one-job search in this process. Returns "done" (finished or failed here),
    "cancelled", "lost" (another worker took over), "busy" (held by a live worker: the sweep takes it over if that
    worker dies) or "finished" (nothing left to do)."""
    if not services.experiment_claim(experiment_id, worker):
        status = Experiment.objects.filter(pk=experiment_id).values_list("status", flat=True).first()
        return "busy" if status == Experiment.Status.RUNNING else "finished"
    experiment = Experiment.objects.get(pk=experiment_id)
    try:
        with Lease(lambda: experiment_heartbeat(experiment_id, worker), heartbeat_seconds()) as lease:
            runner = SearchRunner(experiment.spec(), DjangoStore(experiment_id, worker, lease),
                                  ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment_id),
                                  resolve_device(settings.NAS_DEVICE))
            runner.run()
    except SearchCancelled:
        log.info("experiment %s cancelled", experiment_id)
        return "cancelled"
    except services.LostClaim as exc:
        log.warning("%s", exc)
        return "lost"
    except Exception as exc:  # the experiment fails with a readable reason; the worker lives on
        log.exception("experiment %s failed", experiment_id)
        services.experiment_fail(experiment_id, worker, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return "done"


# ---------------------------------------------------------------------------------------------------- exports
def export_run_now(export_id: int, worker: str) -> str:
    """Claim and build one export in this process, into the artifact store, under a lease renewed by a thread.
    Returns "done", "failed" (recorded with its reason; requesting it again retries), "handed back" (another
    worker took it over, its experiment was deleted, or this worker is stopping) or "skipped" (not claimable:
    built, held by a live worker, or gone)."""
    if not services.export_claim(export_id, worker):
        return "skipped"
    row = Export.objects.select_related("trial__experiment").filter(pk=export_id).first()
    if row is None:  # deleted with its experiment between the claim and now
        return "handed back"
    trial, experiment = row.trial, row.trial.experiment
    path = services.export_path(experiment.pk, trial.number, row.format)
    try:
        with Lease(lambda: services.export_heartbeat(export_id, worker), heartbeat_seconds()) as lease:
            trained = services.trial_export_file(experiment, trial, row.format, path, lease.check)
    except SystemExit:  # the pool process told to stop: the next worker builds it
        services.export_hand_back(export_id, worker)
        raise
    except services.LostClaim as exc:
        log.info("export %s stopped: %s", export_id, exc)
        _export_orphaned(experiment.pk)
        return "handed back"
    except Exception as exc:  # recorded on the row; the worker lives on
        log.exception("export %s (trial %s of experiment %s as %s) failed", export_id, trial.number,
                      experiment.pk, row.format)
        services.export_fail(export_id, worker, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return "failed"
    if not services.export_finish(export_id, worker, path.stat().st_size, trained):
        _export_orphaned(experiment.pk)
        return "handed back"
    return "done"


def _export_orphaned(experiment_id: int) -> None:
    """A build that lost its row: when its experiment was deleted meanwhile, remove what it wrote (the delete's
    own clean-up may have run before this worker recreated the folder); else another worker owns the file."""
    if not Experiment.objects.filter(pk=experiment_id).exists():
        shutil.rmtree(ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment_id).dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- calibrations
def run_calibration_now(calibration_id: int, worker: str) -> str:
    """Claim and run a calibration in this process, under a lease renewed by a thread and checked between training
    batches; each candidate's reference is kept as it is measured, so a calibration taken over continues from the
    last one. Returns "done", "failed" (recorded with its reason), "cancelled", "handed back" (another worker took
    it over, it was deleted, or this worker is stopping) or "skipped" (not claimable: ended, held by a live
    worker, or gone)."""
    from nasjobs.calibration import calibrate

    if not services.calibration_claim(calibration_id, worker):
        return "skipped"
    calibration = Calibration.objects.select_related("experiment").filter(pk=calibration_id).first()
    if calibration is None:  # deleted with its experiment between the claim and now
        return "handed back"
    experiment = calibration.experiment
    try:
        with Lease(lambda: services.calibration_heartbeat(calibration_id, worker), heartbeat_seconds()) as lease, \
                between_batches(lease.check):
            runner = runner_for(experiment)
            trials = [t for t in trial_records(experiment.pk) if t.status == DONE]
            result = calibrate(runner.space, runner.dataset, runner.estimator, trials, calibration.k,
                               calibration.epochs, calibration.seed, runner.device, hook=lease.check,
                               measured=calibration.pairs,
                               on_pair=lambda pairs: services.calibration_progress(calibration_id, worker, pairs))
    except SystemExit:  # the pool process told to stop: the next worker continues it
        services.calibration_hand_back(calibration_id, worker)
        raise
    except (SearchCancelled, services.LostClaim) as exc:
        cancelled = Calibration.objects.filter(pk=calibration_id, status=Calibration.Status.CANCELLED).exists()
        log.info("calibration %s stopped: %s", calibration_id, "it was cancelled" if cancelled else exc)
        return "cancelled" if cancelled else "handed back"
    except Exception as exc:  # a readable reason on the page; the worker lives on
        log.exception("calibration %s failed", calibration_id)
        services.calibration_fail(calibration_id, worker, f"{type(exc).__name__}: {exc}")
        return "failed"
    return "done" if services.calibration_finish(calibration_id, worker, result) else "handed back"
