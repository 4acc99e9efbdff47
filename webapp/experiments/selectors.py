"""Read-only queries for pages, the JSON API and the `nas` command."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import DateTimeField, F, FloatField, Func, Max, OuterRef, QuerySet, Subquery, Value
from django.http import Http404
from django.utils import timezone

from nasjobs.records import FAILED, IN_FLIGHT, RUNNING
from webapp.experiments.models import Calibration, Experiment, ExperimentEvent, SearchEpoch, Trial, Worker
from webapp.teams.selectors import User, is_team_admin, visible_team_ids

# What a list row shows; the strategy checkpoint, options and traceback stay in the database.
LIST_DEFERRED = ("strategy_state", "options", "traceback", "error", "review_comment")
LIST_FILTERS = ("team", "owner", "status", "dataset", "space", "strategy", "q")


def experiments_visible_to(user: User) -> QuerySet[Experiment]:
    """Every experiment the user may see: their teams' (all for staff). Every page, API route and command starts
    here, so an object of another team is never found."""
    experiments = Experiment.objects.all()
    team_ids = visible_team_ids(user)
    return experiments if team_ids is None else experiments.filter(team_id__in=team_ids)


def experiment_for_user(user: User, pk: int) -> Experiment:
    """The experiment, if the user may see it; otherwise Http404, exactly as if it did not exist."""
    experiment = experiments_visible_to(user).select_related("team", "created_by").filter(pk=pk).first()
    if experiment is None:
        raise Http404("no such experiment")
    return experiment


def trial_for_user(user: User, pk: int, number: int) -> tuple[Experiment, Trial]:
    experiment = experiment_for_user(user, pk)
    trial = experiment.trials.filter(number=number).first()
    if trial is None:
        raise Http404("no such trial")
    return experiment, trial


def can_manage(user: User, experiment: Experiment) -> bool:
    """Cancel, resume, extend, delete or calibrate: its owner, an admin of its team, or staff."""
    if not user.is_authenticated:
        return False
    return user.is_staff or experiment.created_by_id == user.pk or is_team_admin(user, experiment.team_id)


def can_review(user: User, experiment: Experiment) -> bool:
    """Approve or reject: staff, or an admin of its team who is not its owner."""
    if not user.is_authenticated:
        return False
    return user.is_staff or (experiment.created_by_id != user.pk and is_team_admin(user, experiment.team_id))


def can_see_traceback(user: User, experiment: Experiment) -> bool:
    """A traceback shows server paths: only the team's admins and staff read it."""
    return user.is_authenticated and (user.is_staff or is_team_admin(user, experiment.team_id))


def experiment_list(user: User, filters: dict[str, str] | None = None) -> QuerySet[Experiment]:
    """The team's shared history, newest first, filtered; rows carry their best trial's figures."""
    experiments = experiments_visible_to(user)
    for key, value in (filters or {}).items():
        value = (value or "").strip()
        if not value or key not in LIST_FILTERS:
            continue
        if key == "team":
            experiments = experiments.filter(team__name=value)
        elif key == "owner":
            experiments = experiments.filter(created_by__username=value)
        elif key == "q":
            experiments = experiments.filter(name__icontains=value)
        else:
            experiments = experiments.filter(**{key: value})
    best = Trial.objects.filter(experiment=OuterRef("pk"), number=OuterRef("best_trial_number"))
    return (experiments.select_related("created_by", "team").defer(*LIST_DEFERRED)
            .annotate(best_arch=Subquery(best.values("arch_key")[:1]),
                      best_params=Subquery(best.values("params")[:1]))
            .order_by("-created_at", "-id"))


def experiment_filter_choices(user: User) -> dict[str, list[str]]:
    """The values each list filter can take among the experiments the user sees."""
    experiments = experiments_visible_to(user)
    distinct = lambda field: sorted(v for v in experiments.values_list(field, flat=True).distinct() if v)  # noqa
    return {"team": distinct("team__name"), "owner": distinct("created_by__username"),
            "status": [s for s, _ in Experiment.Status.choices], "dataset": distinct("dataset"),
            "space": distinct("space"), "strategy": distinct("strategy")}


def experiment_events(experiment: Experiment) -> QuerySet[ExperimentEvent]:
    return experiment.events.select_related("actor").order_by("created_at", "id")


def pending_reviews(user: User) -> QuerySet[Experiment]:
    """Experiments waiting for a review, oldest first, among those the user sees."""
    return (experiments_visible_to(user).filter(status=Experiment.Status.PENDING_REVIEW)
            .select_related("team", "created_by").defer(*LIST_DEFERRED).order_by("created_at", "id"))


def similar_runs_seconds_per_trial_epoch(experiment: Experiment, limit: int = 5) -> float | None:
    """How long the team's last finished runs with the same dataset, space, strategy and estimator took per
    trial-epoch: the basis of a review's time estimate."""
    rows = (Experiment.objects.filter(team_id=experiment.team_id, dataset=experiment.dataset,
                                      space=experiment.space, strategy=experiment.strategy,
                                      estimator=experiment.estimator, status=Experiment.Status.SUCCEEDED,
                                      started_at__isnull=False, finished_at__isnull=False, trials_done__gt=0)
            .exclude(pk=experiment.pk).order_by("-finished_at").values("started_at", "finished_at", "trials_done",
                                                                       "epochs")[:limit])
    rates = [(r["finished_at"] - r["started_at"]).total_seconds() / (r["trials_done"] * r["epochs"]) for r in rows]
    return sum(rates) / len(rates) if rates else None


def experiment_leaderboard(experiment: Experiment, limit: int | None = None) -> QuerySet[Trial]:
    """The trials with a figure, best first (pending, running and failed ones have none)."""
    trials = experiment.trials.filter(Trial.WITH_FIGURE).defer(*Trial.BLOBS).order_by("-val_acc", "number")
    return trials[:limit] if limit else trials


class SecondsSince(Func):
    """Seconds from a fixed instant to a datetime column, worked out by the database: turning every row's
    timestamp into a Python datetime costs more than the rest of a chart's row."""

    output_field = FloatField()

    def __init__(self, column: str, start: datetime) -> None:
        super().__init__(F(column), Value(start, output_field=DateTimeField()))

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> Any:  # PostgreSQL and standard SQL
        return super().as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::double precision",
                              arg_joiner=" - ", **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return super().as_sql(compiler, connection, template="((julianday(%(expressions)s)) * 86400.0)",
                              arg_joiner=") - julianday(", **extra)


def _rounded(value: float | None, digits: int = 6) -> float | None:
    """A figure to `digits` significant digits: what a chart can show, in a third of the bytes of a full float."""
    return None if value is None else float(f"{value:.{digits}g}")


def experiment_points(experiment: Experiment) -> dict[str, Any]:
    """Every trial with a figure, in number order, as columns for the charts: one list per field rather than an
    object per trial, so 10,000 trials stay a few hundred kilobytes. `finished_s` is the seconds from the
    experiment's start to the trial's end (None where either is unknown). Only the columns named are read:
    no curve, log or traceback. With the DARTS search epochs and what the figure is."""
    start = experiment.started_at
    finished = SecondsSince("finished_at", start) if start is not None else Value(None, output_field=FloatField())
    rows = (experiment.trials.filter(Trial.WITH_FIGURE).order_by("number").annotate(finished_s=finished)
            .values_list("number", "val_acc", "params", "flops", "finished_s", "distance_to_incumbent",
                         "arch_display"))
    columns: dict[str, list[Any]] = {k: [] for k in ("number", "val_acc", "params", "flops", "finished_s",
                                                     "distance", "arch")}
    for number, val_acc, params, flops, finished_s, distance, arch in rows:
        columns["number"].append(number)
        columns["val_acc"].append(_rounded(val_acc))
        columns["params"].append(params)
        columns["flops"].append(flops)
        columns["finished_s"].append(None if finished_s is None else round(finished_s, 1))
        columns["distance"].append(distance)
        columns["arch"].append(arch)
    return {**columns, "search_epochs": [epoch_to_json(e) for e in experiment.search_epochs.order_by("epoch")],
            "figure": experiment.figure.as_json()}


def trial_timings(trial: Trial) -> dict[str, float | None]:
    """How long a trial waited for a worker (proposed to taken) and how long the worker took (taken to
    reported). Its row keeps one start, the latest job's, so the wait is known for a first evaluation only."""
    first_job = len(trial.evaluations) <= 1 and len(trial.fidelity.get("rungs", [])) <= 1
    waited = (trial.started_at - trial.created_at).total_seconds() if (
        first_job and trial.started_at and trial.created_at) else None
    ran = (trial.finished_at - trial.started_at).total_seconds() if trial.started_at and trial.finished_at else None
    return {"waited_seconds": None if waited is None else max(0.0, waited),
            "job_seconds": None if ran is None else max(0.0, ran)}


def trial_epochs(trial: Trial) -> list[dict[str, Any]]:
    """A trial's learning curve, one row per epoch: validation accuracy and mean training loss (None where not
    recorded: trials from before losses were, and epochs trained before a checkpoint kept them)."""
    losses = list(trial.loss_curve)
    return [{"epoch": i + 1, "val_acc": acc, "train_loss": losses[i] if i < len(losses) else None}
            for i, acc in enumerate(trial.curve)]


def trial_fidelity(trial: Trial) -> list[dict[str, Any]]:
    """What produced a trial's figure (epochs, data fraction, rungs...), one row per entry for its page; numbers
    stay numbers so the page aligns them, anything nested is shown as JSON."""
    rows = []
    for key, value in (trial.fidelity or {}).items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        rows.append({"key": key, "value": value if number or isinstance(value, str) else json.dumps(value),
                     "number": number})
    return rows


def experiment_in_flight(experiment: Experiment) -> QuerySet[Trial]:
    """The trials waiting for a worker or being evaluated: at most its parallelism."""
    return experiment.trials.filter(status__in=IN_FLIGHT).defer(*Trial.BLOBS).order_by("number")


def workers_seen(minutes: int = 10) -> QuerySet[Worker]:
    """The worker processes heard from in the last `minutes`, latest first, with the trial each last ran."""
    since = timezone.now() - timedelta(minutes=minutes)
    return (Worker.objects.filter(seen_at__gte=since).select_related("trial", "trial__experiment")
            .only("name", "host", "device", "seen_at", "trial__number", "trial__status", "trial__heartbeat_at",
                  "trial__experiment__name", "trial__experiment__team_id")
            .order_by("-seen_at"))


def experiment_failures(experiment: Experiment, limit: int = 20) -> tuple[int, list[Trial]]:
    """How many trials failed, and the latest `limit` of them (errors; tracebacks stay in the rows)."""
    failed = experiment.trials.filter(status=FAILED)
    return failed.count(), list(failed.defer(*Trial.BLOBS).order_by("-number")[:limit])


def experiment_best_trial(experiment: Experiment) -> Trial | None:
    if experiment.best_trial_number is None:
        return None
    return experiment.trials.filter(number=experiment.best_trial_number).first()


def experiment_exploration(experiment: Experiment) -> dict[str, Any]:
    """How the search balanced exploring new architectures against refining the best one: architectures
    evaluated (re-evaluations of one count once) against proposals made (repeats included)."""
    figured = experiment.trials.filter(Trial.WITH_FIGURE)
    stats = experiment.trials.aggregate(proposals=Max("proposals"))
    distances = list(figured.exclude(distance_to_incumbent=None).values_list("distance_to_incumbent", flat=True))
    return {"unique_architectures": figured.count(), "proposals": stats["proposals"] or 0,
            "mean_distance_to_incumbent": sum(distances) / len(distances) if distances else None}


def experiment_elapsed_seconds(experiment: Experiment) -> float | None:
    if experiment.started_at is None:
        return None
    end = experiment.finished_at or timezone.now()
    return max(0.0, (end - experiment.started_at).total_seconds())


def trial_to_json(trial: Trial, rank: int | None = None) -> dict[str, Any]:
    data = {"number": trial.number, "arch": trial.arch_key, "arch_display": trial.arch_display,
            "val_acc": trial.val_acc, "params": trial.params, "flops": trial.flops,
            "train_seconds": round(trial.train_seconds, 3), "estimator": trial.estimator, "fidelity": trial.fidelity,
            "search_seconds": round(trial.search_seconds, 3), "proposals": trial.proposals,
            "distance_to_incumbent": trial.distance_to_incumbent, "evaluations": trial.evaluations,
            "status": trial.status, "host": trial.host, "device": trial.device, "attempts": trial.attempts,
            "error": trial.error}
    if rank is not None:
        data["rank"] = rank
    return data


def calibration_to_json(calibration: Calibration | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {"id": calibration.pk, "status": calibration.status, "k": calibration.k, "epochs": calibration.epochs,
            "reference": calibration.reference, "kendall_tau": calibration.kendall_tau,
            "spearman_rho": calibration.spearman_rho, "pairs": calibration.pairs, "seconds": calibration.seconds,
            "error": calibration.error}


def epoch_to_json(epoch: SearchEpoch) -> dict[str, Any]:
    return {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "train_acc": epoch.train_acc,
            "val_loss": epoch.val_loss, "val_acc": epoch.val_acc, "alphas": epoch.alphas, "ops": epoch.ops,
            "edges": epoch.edges, "genotype": epoch.genotype, "param_free_fraction": epoch.param_free_fraction,
            "stopped_early": epoch.stopped_early, "seconds": epoch.seconds}


def experiment_liveness(experiment: Experiment) -> dict[str, Any] | None:
    """For a running experiment whose worker has gone quiet (the heartbeat of a running trial, or of a search
    that runs as one job, written every few seconds even mid-epoch, is older than 15 s or half the lease): how
    long, and when another worker takes it over."""
    if experiment.status != Experiment.Status.RUNNING:
        return None
    trial = experiment.trials.filter(status=RUNNING).order_by("heartbeat_at").values("number", "heartbeat_at",
                                                                                      "host").first()
    beat = trial["heartbeat_at"] if trial else None if experiment.claimed_by == "" else experiment.heartbeat_at
    if beat is None:
        return None
    silent = (timezone.now() - beat).total_seconds()
    if silent < min(15.0, settings.NAS_LEASE_SECONDS / 2):
        return None
    takeover = beat + timedelta(seconds=settings.NAS_LEASE_SECONDS + settings.NAS_SWEEP_SECONDS)
    who = f"the worker of trial {trial['number']} (on {trial['host']})" if trial else "its worker"
    return {"silent_seconds": int(silent), "takeover_at": takeover.isoformat(),
            "message": f"no heartbeat from {who} for {int(silent)} s; another worker takes over by "
                       f"{takeover:%H:%M:%S} UTC" if takeover > timezone.now() else
                       f"no heartbeat from {who} for {int(silent)} s; the next worker to sweep takes it over"}


def experiment_summary(experiment: Experiment, leaderboard: int | None = 0) -> dict[str, Any]:
    """The experiment as one JSON object; `leaderboard` rows included (None: all, 0: none)."""
    best = experiment_best_trial(experiment)
    data: dict[str, Any] = {
        "id": experiment.pk, "name": experiment.name, "status": experiment.status,
        "team": experiment.team.name, "owner": experiment.created_by.username if experiment.created_by else None,
        "cost": experiment.cost, "review": experiment_review_json(experiment),
        "dataset": experiment.dataset, "space": experiment.space, "strategy": experiment.strategy,
        "estimator": experiment.estimator, "figure": experiment.figure.as_json(), "budget": experiment.budget,
        "epochs": experiment.epochs, "seed": experiment.seed, "top_k": experiment.top_k, "options": experiment.options,
        "patience": experiment.patience, "max_seconds": experiment.max_seconds,
        "parallelism": experiment.parallelism, "failure_policy": experiment.failure_policy,
        "max_failures": experiment.max_failures, "bf16": experiment.bf16, "channels_last": experiment.channels_last,
        "stop_reason": experiment.stop_reason, "trials_done": experiment.trials_done,
        "progress_percent": experiment.progress_percent,
        "exploration": experiment_exploration(experiment),
        "trust": calibration_to_json(experiment.calibrations.first()),
        "best": None if best is None else {
            "number": best.number, "arch": best.arch_key, "arch_display": best.arch_display,
            "val_acc": best.val_acc, "test_acc": experiment.test_acc, "params": best.params, "flops": best.flops},
        "error": experiment.error,
        "created_at": experiment.created_at.isoformat() if experiment.created_at else None,
        "started_at": experiment.started_at.isoformat() if experiment.started_at else None,
        "finished_at": experiment.finished_at.isoformat() if experiment.finished_at else None,
        "elapsed_seconds": experiment_elapsed_seconds(experiment),
        "liveness": experiment_liveness(experiment),
        "in_flight": [{"number": t.number, "arch_display": t.arch_display, "status": t.status, "host": t.host,
                       "device": t.device, "attempts": t.attempts, "job": t.job}
                      for t in experiment_in_flight(experiment)],
        "failed_trials": experiment.trials.filter(status=FAILED).count(),
    }
    if leaderboard != 0:
        rows = experiment_leaderboard(experiment, leaderboard)
        data["leaderboard"] = [trial_to_json(t, rank) for rank, t in enumerate(rows, start=1)]
        data["search_epochs"] = [epoch_to_json(e) for e in experiment.search_epochs.order_by("epoch")]
    return data


def experiment_review_json(experiment: Experiment) -> dict[str, Any] | None:
    if not experiment.review_reason and experiment.reviewed_at is None:
        return None
    return {"reason": experiment.review_reason, "comment": experiment.review_comment,
            "reviewed_by": experiment.reviewed_by.username if experiment.reviewed_by else None,
            "reviewed_at": experiment.reviewed_at.isoformat() if experiment.reviewed_at else None}


def experiment_row_json(experiment: Experiment) -> dict[str, Any]:
    """A list row: no blobs, no per-row queries (the list annotates the best trial's figures)."""
    return {"id": experiment.pk, "name": experiment.name, "team": experiment.team.name,
            "owner": experiment.created_by.username if experiment.created_by else None,
            "status": experiment.status, "dataset": experiment.dataset, "space": experiment.space,
            "strategy": experiment.strategy, "estimator": experiment.estimator,
            "figure": {"kind": experiment.figure.kind}, "budget": experiment.budget,
            "epochs": experiment.epochs, "cost": experiment.cost, "trials_done": experiment.trials_done,
            "best": None if experiment.best_trial_number is None else {
                "number": experiment.best_trial_number, "arch": getattr(experiment, "best_arch", None),
                "val_acc": experiment.best_val_acc, "test_acc": experiment.test_acc,
                "params": getattr(experiment, "best_params", None)},
            "created_at": experiment.created_at.isoformat()}
