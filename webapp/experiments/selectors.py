"""Read-only queries for pages, the JSON API and the `nas` command."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import (Avg, Count, DateTimeField, F, FloatField, Func, Max, OuterRef, QuerySet, Subquery,
                              Value, Window)
from django.db.models.functions import RowNumber
from django.http import Http404
from django.utils import timezone

from nasjobs.records import FAILED, IN_FLIGHT, RUNNING
from nasjobs.artifacts import ArtifactStore
from nasjobs.export import EXPORT_FORMATS, ExportFormat
from nasjobs.search import SpecError
from webapp.experiments.models import Calibration, Experiment, ExperimentEvent, Export, SearchEpoch, Trial, \
    Worker
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
    experiment = (experiments_visible_to(user).select_related("team", "created_by").defer("strategy_state")
                  .filter(pk=pk).first())
    if experiment is None:
        raise Http404("no such experiment")
    return experiment


def trial_for_user(user: User, pk: int, number: int) -> tuple[Experiment, Trial]:
    experiment = experiment_for_user(user, pk)
    trial = experiment.trials.filter(number=number).first()
    if trial is None:
        raise Http404("no such trial")
    return experiment, trial


def export_format(name: str) -> ExportFormat:
    """The export format called `name`; SpecError("format") naming the known ones otherwise."""
    if not isinstance(name, str) or name not in EXPORT_FORMATS:
        raise SpecError("format", f"unknown export format {name!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS.get(name)


def export_for_user(user: User, pk: int, number: int, fmt: str) -> tuple[Experiment, Trial, Export | None]:
    """A visible trial (another team's is a 404, as everywhere) and its export in `fmt`, None if never
    requested. Raises SpecError for an unknown format."""
    experiment, trial = trial_for_user(user, pk, number)
    export_format(fmt)
    return experiment, trial, trial.exports.defer("traceback").filter(format=fmt).first()


class ExportUnavailable(Exception):
    """Why an export cannot be downloaded now, with the HTTP status that says so (404: never requested or its
    file gone; 409: still building, or failed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def export_download(user: User, pk: int, number: int, fmt: str) -> tuple[Path, str, str]:
    """The built file of a visible trial's export, its download name and content type, for a view to stream;
    raises ExportUnavailable when there is none to stream (and Http404 for a trial the user cannot see)."""
    experiment, trial, export = export_for_user(user, pk, number, fmt)
    info = export_format(fmt)
    what = f"the {info.title} export of trial {number}"
    if export is None:
        raise ExportUnavailable(f"{what} has not been requested: POST to request it first", 404)
    if export.status == Export.Status.FAILED:
        raise ExportUnavailable(f"{what} failed ({export.error}); request it again to retry", 409)
    if export.status != Export.Status.READY:
        raise ExportUnavailable(f"{what} is {export.status}: a worker builds it; try again shortly", 409)
    path = ArtifactStore(settings.NAS_ARTIFACTS_DIR, experiment.pk).export_path(number, info.suffix)
    if not path.is_file():
        raise ExportUnavailable(f"{what} is no longer on disk; request it again to rebuild it", 404)
    return path, f"nasboard-{experiment.pk}-trial-{number}.{info.suffix}", info.content_type


def retrain_for_user(user: User, pk: int, number: int) -> tuple[Experiment, Trial]:
    experiment = experiment_for_user(user, pk)
    trial = Trial.everything.filter(experiment=experiment, kind=Trial.Kind.RETRAIN, number=number).first()
    if trial is None:
        raise Http404("no such retraining")
    return experiment, trial


def experiment_retrains(experiment: Experiment) -> QuerySet[Trial]:
    """The experiment's retrainings of its best architectures, newest first (shown beside its trials)."""
    return (Trial.everything.filter(experiment=experiment, kind=Trial.Kind.RETRAIN).defer(*Trial.BLOBS)
            .order_by("-number"))


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
    distinct = lambda field: sorted(v for v in experiments.order_by().values_list(field, flat=True).distinct() if v)  # noqa
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


T = TypeVar("T")


def per_step(experiment: Experiment, what: str, compute: Callable[[], T]) -> T:
    """A figure derived from all of an experiment's trials, computed once per planning step and cached. Trials get
    or lose a figure, and proposals are written, only inside a step, which moves `plan_version`; so a page or a
    poll of an unchanged experiment does not read its 100,000 trials again, and a changed one never sees a stale
    figure. (The creation time is in the key: a test database may give a new experiment an old one's id.)"""
    key = f"nas:{what}:{experiment.pk}:{experiment.created_at.timestamp()}:{experiment.plan_version}"
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.set(key, value, 3600)
    return value


# The leaderboard's sortable columns (each served by an index on the trial table) and its default order.
LEADERBOARD_SORTS = {"figure": "val_acc", "params": "params", "macs": "flops", "training": "train_seconds",
                     "trial": "number"}
LEADERBOARD_DEFAULT_SORT = "-figure"
# What a leaderboard row shows; the learning curve, traceback and fidelity details stay in the database (the
# chance-level mark is read out of the fidelity by the database: `Trial.CHANCE_LEVEL`).
LEADERBOARD_FIELDS = ("experiment", "number", "arch_display", "val_acc", "params", "flops", "train_seconds", "evaluations",
                      "epochs_trained", "weights_path", "status", "job", "estimator")


def leaderboard_options(query: dict[str, str]) -> dict[str, Any]:
    """The leaderboard's sort and filters from a query string; anything unknown falls back to the default, so a
    stale or hand-edited link still shows a page."""
    sort = query.get("sort", "")
    epochs = query.get("epochs", "")
    return {"sort": sort if sort.lstrip("-") in LEADERBOARD_SORTS else LEADERBOARD_DEFAULT_SORT,
            "epochs": int(epochs) if epochs.isdigit() else None,
            "kept": query.get("kept", "") in ("1", "yes", "true", "on")}


class Leaderboard:
    """The leaderboard's rows in one order, sliced as a Paginator slices them. A slice reads the numbers of its
    rows from an index that holds the sort column and every column the filters read (no row is touched for the
    trials skipped over), then those rows' columns, then their ranks by figure from the figure index; so a page
    deep into 100,000 trials costs about what the first one does. (A search trial's number names it within its
    experiment and is in every one of these indexes; its id is not, and PostgreSQL would read each row for it.)"""

    def __init__(self, trials: QuerySet[Trial], order: list[Any], columns: tuple[str, ...] | None,
                 count: Callable[[], int] | None = None, by_rank: bool = False) -> None:
        self.trials, self.order, self.columns, self.by_rank = trials, order, columns, by_rank
        self._count = count or trials.count

    def count(self) -> int:
        return self._count()

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[Trial]:
        return iter(self[:])

    def __getitem__(self, window: slice) -> list[Trial]:
        numbers = list(self.trials.order_by(*self.order).values_list("number", flat=True)[window])
        rows = self.trials.filter(number__in=numbers)
        rows = rows.only(*self.columns) if self.columns else rows.defer(*Trial.BLOBS)
        rows = {t.number: t for t in rows.annotate(chance_level=Trial.CHANCE_LEVEL)}
        ranks: dict[int, int] = {}
        if self.by_rank:  # in the rank's own order a row's rank is its place
            ranks = {number: (window.start or 0) + i + 1 for i, number in enumerate(numbers)}
        elif numbers:
            ranked = self.trials.annotate(rank=Window(RowNumber(), order_by=[F("val_acc").desc(), F("number").asc()]))
            sql, params = ranked.order_by().values_list("number", "rank").query.sql_with_params()
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT * FROM ({sql}) ranked WHERE number IN ({', '.join(['%s'] * len(numbers))})",
                               [*params, *numbers])
                ranks = dict(cursor.fetchall())
        for number, trial in rows.items():
            trial.rank = ranks[number]
        return [rows[number] for number in numbers]


def experiment_leaderboard(experiment: Experiment, limit: int | None = None, sort: str = LEADERBOARD_DEFAULT_SORT,
                           epochs: int | None = None, kept: bool = False,
                           columns: tuple[str, ...] | None = LEADERBOARD_FIELDS) -> Leaderboard | list[Trial]:
    """The trials with a figure (pending, running and failed ones have none), best first or in the order of
    `sort` (a key of LEADERBOARD_SORTS, '-' for descending), optionally only those trained for `epochs` epochs or
    whose weights are kept. Each row carries its `rank` by figure within the filtered set; it reads `columns`
    (None: every column but the learning curve and the traceback). With `limit`, the first `limit` rows."""
    trials = experiment.trials.filter(Trial.WITH_FIGURE)
    if epochs is not None:
        trials = trials.filter(epochs_trained=epochs)
    if kept:
        trials = trials.exclude(weights_path="")
    column = LEADERBOARD_SORTS[sort.lstrip("-")]
    order = F(column).desc() if sort.startswith("-") else F(column).asc()
    unfiltered = epochs is None and not kept
    board = Leaderboard(trials, [order, "number"], columns,
                        (lambda: experiment_exploration(experiment)["unique_architectures"]) if unfiltered else None,
                        by_rank=sort == "-figure")
    return board[:limit] if limit else board


def leaderboard_epochs(experiment: Experiment) -> list[int]:
    """The fidelities (epochs behind a figure) among the experiment's trials, for the leaderboard's filter."""
    return per_step(experiment, "epochs", lambda: sorted(
        experiment.trials.filter(Trial.WITH_FIGURE).exclude(epochs_trained=None)
        .values_list("epochs_trained", flat=True).distinct().order_by()))


def _few(trials: QuerySet[Trial]) -> QuerySet[Trial]:
    """A few of an experiment's trials picked by status: their ids from the progress index, then their rows. (Asked
    for whole rows at once, a planner that has statistics but no histogram of the statuses, SQLite's after
    ANALYZE, reads every trial of the experiment to find the few.)"""
    return Trial.objects.filter(pk__in=list(trials.values_list("pk", flat=True))).defer(*Trial.BLOBS)


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


# A chart's point: what the charts' first load (columns) and the poll (one object per changed trial) both send.
POINT_COLUMNS = ("number", "val_acc", "params", "flops", "finished_s", "distance", "arch")


def _points(experiment: Experiment, trials: QuerySet[Trial], limit: int | None = None) -> list[tuple[tuple, int]]:
    """`trials` (in their order, the first `limit`) as chart points in POINT_COLUMNS' order, each with its `seq`.
    `finished_s` is the seconds from the experiment's start to the trial's end (None where either is unknown),
    worked out by the database. Only these columns are read: no curve, log or traceback."""
    start = experiment.started_at
    finished = SecondsSince("finished_at", start) if start is not None else Value(None, output_field=FloatField())
    rows = trials.annotate(finished_s=finished).values_list(
        "number", "val_acc", "params", "flops", "finished_s", "distance_to_incumbent", "arch_display", "seq")
    return [((number, _rounded(val_acc), params, flops, None if finished_s is None else round(finished_s, 1),
              distance, arch), seq)
            for number, val_acc, params, flops, finished_s, distance, arch, seq in rows[:limit]]


def experiment_points(experiment: Experiment) -> dict[str, Any]:
    """Every trial with a figure, in number order, as columns for the charts: one list per field rather than an
    object per trial, so 10,000 trials stay a few hundred kilobytes. With the DARTS search epochs and what the
    figure is."""
    points = [point for point, _ in _points(experiment, experiment.trials.filter(Trial.WITH_FIGURE).order_by("number"))]
    columns = {name: [point[i] for point in points] for i, name in enumerate(POINT_COLUMNS)}
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
    return _few(experiment.trials.filter(status__in=IN_FLIGHT).order_by()).order_by("number")


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
    return failed.count(), list(_few(failed.order_by("-number")[:limit]).order_by("-number"))


def experiment_best_trial(experiment: Experiment) -> Trial | None:
    if experiment.best_trial_number is None:
        return None
    return experiment.trials.filter(number=experiment.best_trial_number).first()


def experiment_exploration(experiment: Experiment) -> dict[str, Any]:
    """How the search balanced exploring new architectures against refining the best one: architectures
    evaluated (re-evaluations of one count once) against proposals made (repeats included, and those skipped as
    over the deployment limits, which are no architecture evaluated and spent no budget)."""
    stats = per_step(experiment, "exploration", lambda: experiment.trials.aggregate(
        proposals=Max("proposals"), figured=Count("pk", filter=Trial.WITH_FIGURE),
        distance=Avg("distance_to_incumbent", filter=Trial.WITH_FIGURE)))
    # The experiment's own count also holds proposals made after its last trial was proposed (a run of skipped
    # ones); experiments from before it was kept have only the trials'.
    return {"unique_architectures": stats["figured"], "proposals": max(stats["proposals"] or 0, experiment.proposals),
            "skipped_proposals": experiment.skipped_proposals, "mean_distance_to_incumbent": stats["distance"]}


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
            "resumed_from_epoch": trial.resumed_from_epoch, "error": trial.error,
            "chance_level": trial.at_chance_level}
    if rank is not None:
        data["rank"] = rank
    return data


def export_to_json(fmt: str, export: Export | None) -> dict[str, Any]:
    """One format's export as pages poll it and the API returns it: `status` is "none" until requested."""
    info = EXPORT_FORMATS.get(fmt)
    data: dict[str, Any] = {"format": fmt, "title": info.title, "status": export.status if export else "none"}
    if export is not None:
        data.update(trained=export.trained, size=export.size, error=export.error, attempts=export.attempts,
                    requested_at=export.created_at.isoformat(),
                    finished_at=export.finished_at.isoformat() if export.finished_at else None)
    return data


def trial_exports(trial: Trial) -> list[dict[str, Any]]:
    """Every export format of a trial, requested or not, in the registry's order (one query)."""
    rows = {e.format: e for e in trial.exports.defer("traceback")}
    return [{**export_to_json(fmt, rows.get(fmt)), "suffix": EXPORT_FORMATS.get(fmt).suffix}
            for fmt in EXPORT_FORMATS]


def retrain_to_json(trial: Trial) -> dict[str, Any]:
    """A retraining: the search trial it trains again, its epochs, and its full-training figures (accuracies as
    fractions) once done."""
    done = trial.status == "done"
    return {"number": trial.number, "of_trial": trial.source_number, "arch": trial.arch_key,
            "epochs": trial.fidelity.get("epochs"), "status": trial.status,
            "val_acc": trial.val_acc if done else None, "test_acc": trial.test_acc,
            "chance_level": done and trial.at_chance_level, "params": trial.params, "flops": trial.flops,
            "train_seconds": round(trial.train_seconds, 3),
            "host": trial.host, "device": trial.device, "attempts": trial.attempts, "error": trial.error}


def calibration_to_json(calibration: Calibration | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {"id": calibration.pk, "status": calibration.status, "k": calibration.k, "epochs": calibration.epochs,
            "reference": calibration.reference, "kendall_tau": calibration.kendall_tau,
            "spearman_rho": calibration.spearman_rho, "pairs": calibration.pairs, "seconds": calibration.seconds,
            "error": calibration.error, "attempts": calibration.attempts}


def calibration_for_user(user: User, pk: int, calibration_id: int) -> tuple[Experiment, Calibration]:
    """A calibration of an experiment the user may see; otherwise Http404, as if neither existed."""
    experiment = experiment_for_user(user, pk)
    calibration = experiment.calibrations.filter(pk=calibration_id).first()
    if calibration is None:
        raise Http404("no such calibration")
    calibration.experiment = experiment
    return experiment, calibration


def epoch_to_json(epoch: SearchEpoch) -> dict[str, Any]:
    return {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "train_acc": epoch.train_acc,
            "val_loss": epoch.val_loss, "val_acc": epoch.val_acc, "alphas": epoch.alphas, "ops": epoch.ops,
            "edges": epoch.edges, "genotype": epoch.genotype, "param_free_fraction": epoch.param_free_fraction,
            "stopped_early": epoch.stopped_early, "seconds": epoch.seconds}


def experiment_weight_spread(experiment: Experiment) -> dict[str, Any] | None:
    """Of a differentiable search, how far the operation weights of its last search epoch are from uniform
    (`nasjobs.strategies.darts.weight_spread`), and while they are still near it, the sentence that says its
    derived cell is not yet informative; None for another kind of search or before its first epoch."""
    from nasjobs.strategies.darts import NEAR_UNIFORM_MARGIN, weight_spread

    if not experiment.is_differentiable:
        return None
    last = experiment.search_epochs.order_by("-epoch").only("epoch", "alphas").first()
    spread = weight_spread(last.alphas or {}) if last is not None else None
    if spread is None:
        return None
    note = (f"The operation weights are still near uniform (largest weight {spread.largest:.3f} vs uniform "
            f"{spread.uniform:.3f}): the derived cell is not yet informative; search more epochs."
            if spread.near_uniform else None)
    return {"epoch": last.epoch, "largest": spread.largest, "uniform": spread.uniform,
            "margin": NEAR_UNIFORM_MARGIN, "near_uniform": spread.near_uniform, "note": note}


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


POLL_ROWS = 500  # changed trials per poll at most; the client asks again at once for the rest


def experiment_cursor(experiment: Experiment) -> int:
    """Where live updates start for a page that shows the experiment as it is now: the first planning step
    after the last one that gave a trial a figure."""
    return (experiment.trials.aggregate(seq=Max("seq"))["seq"] or 0) + 1


def in_flight_json(experiment: Experiment) -> list[dict[str, Any]]:
    return [{"number": t.number, "arch_display": t.arch_display, "status": t.status, "host": t.host,
             "device": t.device, "attempts": t.attempts, "job": t.job} for t in experiment_in_flight(experiment)]


def experiment_progress(experiment: Experiment, since: int, epochs_seen: int = 0) -> dict[str, Any]:
    """What a live page needs on each poll: the progress figures, the trials in flight (at most its parallelism),
    and only the trials that got a figure at planning step `since` (the client's cursor) or later, oldest first,
    at most POLL_ROWS of them (`more` says there are others); the returned cursor is the next poll's `since`.
    Steps commit in order under the experiment's lock and each gives one trial its figure, so nothing is skipped
    or sent twice. Of a differentiable search, the search epochs after the first `epochs_seen` and, when there are
    any, the latest one's `weight_spread` (the near-uniform note comes and goes with it). An unchanged
    experiment costs a few hundred bytes whatever its size; no blob is read."""
    changed = experiment.trials.filter(Trial.WITH_FIGURE, seq__gte=since).order_by("seq")
    rows = _points(experiment, changed, POLL_ROWS)
    epochs = [epoch_to_json(e) for e in experiment.search_epochs.filter(epoch__gt=epochs_seen).order_by("epoch")]
    # With new search epochs, whether the latest one's operation weights are still near uniform.
    spread = {"weight_spread": experiment_weight_spread(experiment)} if epochs else {}
    return {
        "status": experiment.status, "trials_done": experiment.trials_done, "budget": experiment.budget,
        "progress_percent": experiment.progress_percent,
        "best": None if experiment.best_trial_number is None else {
            "number": experiment.best_trial_number, "val_acc": experiment.best_val_acc},
        "test_acc": experiment.test_acc, "exploration": experiment_exploration(experiment),
        "liveness": experiment_liveness(experiment),
        "in_flight": in_flight_json(experiment),
        "failed_trials": experiment.trials.filter(status=FAILED).count(),
        "search_epochs": epochs, **spread,
        "trials": [dict(zip(POINT_COLUMNS, point)) for point, _ in rows], "cursor": rows[-1][1] + 1 if rows else since,
        "more": len(rows) == POLL_ROWS}


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
        "max_params": experiment.max_params, "max_macs": experiment.max_macs,
        "stop_reason": experiment.stop_reason, "trials_done": experiment.trials_done,
        "progress_percent": experiment.progress_percent,
        "exploration": experiment_exploration(experiment),
        "trust": calibration_to_json(experiment.calibrations.first()),
        "best": None if best is None else {
            "number": best.number, "arch": best.arch_key, "arch_display": best.arch_display,
            "val_acc": best.val_acc, "test_acc": experiment.test_acc, "params": best.params, "flops": best.flops,
            "chance_level": best.at_chance_level},
        "error": experiment.error,
        "created_at": experiment.created_at.isoformat() if experiment.created_at else None,
        "started_at": experiment.started_at.isoformat() if experiment.started_at else None,
        "finished_at": experiment.finished_at.isoformat() if experiment.finished_at else None,
        "elapsed_seconds": experiment_elapsed_seconds(experiment),
        "liveness": experiment_liveness(experiment),
        "in_flight": in_flight_json(experiment),
        "failed_trials": experiment.trials.filter(status=FAILED).count(),
        "retrains": [retrain_to_json(t) for t in experiment_retrains(experiment)],
    }
    if experiment.is_differentiable:  # its best trial is the cell derived from its operation weights
        data["weight_spread"] = experiment_weight_spread(experiment)
    if leaderboard != 0:
        board = experiment_leaderboard(experiment, columns=None)
        data["leaderboard"] = [trial_to_json(t, t.rank) for t in (board[:leaderboard] if leaderboard else board[:])]
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


COMPARE_MIN, COMPARE_MAX = 2, 5
COMPARED_FIELDS = ("name", "team__name", "dataset", "space", "strategy", "estimator", "epochs", "budget", "seed",
                   "parallelism", "patience", "max_seconds", "top_k", "failure_policy", "max_failures", "bf16",
                   "channels_last", "options", "status", "trials_done", "best_val_acc", "best_trial_number",
                   "test_acc")


class CompareError(ValueError):
    """A comparison asked for in a way that cannot be answered (a 400, not a 404)."""


def compare_ids(raw: list[str]) -> list[int]:
    """The experiment ids of `?ids=1,2` (or `?ids=1&ids=2`), in the order given, each once. Raises CompareError."""
    parts = [p.strip() for value in raw for p in value.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise CompareError("ids must be experiment numbers separated by commas, e.g. ?ids=1,2")
    ids = list(dict.fromkeys(int(p) for p in parts))
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        raise CompareError(f"compare {COMPARE_MIN} to {COMPARE_MAX} different experiments ({len(ids)} given)")
    return ids


def experiments_compared(user: User, ids: list[int]) -> list[Experiment]:
    """The experiments to compare, in the order asked, with only the columns a comparison shows (no checkpoint,
    no traceback); one the user may not see is a 404, as everywhere."""
    rows = {e.pk: e for e in experiments_visible_to(user).filter(pk__in=ids).select_related("team")
            .only(*COMPARED_FIELDS)}
    if len(rows) != len(ids):
        raise Http404("no such experiment")
    return [rows[pk] for pk in ids]


def compare_settings(experiments: list[Experiment]) -> list[dict[str, Any]]:
    """One row per setting (every component option flattened to `component.option`): its value in each
    experiment, and whether they differ."""
    fields = [("name", "name"), ("team", None), ("dataset", "dataset"), ("space", "space"),
              ("strategy", "strategy"), ("estimator", "estimator"), ("epochs", "epochs"), ("budget", "budget"),
              ("seed", "seed"), ("parallelism", "parallelism"), ("patience", "patience"),
              ("max_seconds", "max_seconds"), ("top_k", "top_k"), ("failure_policy", "failure_policy"),
              ("max_failures", "max_failures"), ("bf16", "bf16"), ("channels_last", "channels_last")]
    rows = [{"name": label, "values": [e.team.name if attr is None else getattr(e, attr) for e in experiments]}
            for label, attr in fields]
    keys = sorted({(c, k) for e in experiments for c, group in (e.options or {}).items() for k in (group or {})})
    for component, key in keys:
        values = [((e.options or {}).get(component) or {}).get(key, "–") for e in experiments]
        owners = {getattr(e, component) for e in experiments}
        rows.append({"name": f"{component}.{key}", "values": values, "option_of": ", ".join(sorted(owners))})
    for row in rows:
        row["differs"] = len({repr(v) for v in row["values"]}) > 1
    return rows


def best_so_far_curve(experiment: Experiment) -> list[list[float]]:
    """[trial number, best figure up to it] for each trial with a figure, in number order (no curves loaded)."""
    best, points = None, []
    for number, value in (experiment.trials.filter(Trial.WITH_FIGURE).order_by("number")
                          .values_list("number", "val_acc")):
        best = value if best is None else max(best, value)
        points.append([number, best])
    return points


def best_arch_keys(experiments: list[Experiment]) -> dict[int, str]:
    """The best trial's architecture of each experiment, in one query."""
    wanted = [(e.pk, e.best_trial_number) for e in experiments if e.best_trial_number is not None]
    if not wanted:
        return {}
    rows = Trial.objects.filter(experiment_id__in=[pk for pk, _ in wanted]).filter(
        number__in=[n for _, n in wanted]).values_list("experiment_id", "number", "arch_key")
    best = dict(wanted)
    return {pk: key for pk, number, key in rows if best.get(pk) == number}
