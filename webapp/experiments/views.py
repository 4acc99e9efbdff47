"""Pages and the JSON progress endpoint. Views validate and delegate; logic lives in services/selectors."""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_POST

from nasjobs.options import parse_config
from nasjobs.search import SpecError
from webapp.datasets.selectors import dataset_by_engine_name, dataset_labels
from webapp.experiments import selectors, services
from webapp.experiments.diagrams import DiagramError, graph_to_svg
from webapp.experiments.forms import (CalibrationForm, ExperimentForm, ExtendForm, RetrainForm, ReviewForm,
                                      clone_initial, kind_conflicts)
from webapp.experiments.models import Experiment, Export, SearchEpoch, Trial

LIST_PAGE_SIZE = 25


def _arch_svg(experiment: Experiment, arch_key: str) -> dict[str, str]:
    try:
        space = experiment.spec().component_class("space")
        instance = space(parse_config(space.Config, experiment.options.get("space")))
        return {"svg": graph_to_svg(instance.describe(instance.from_str(arch_key)))}
    except (DiagramError, KeyError, ValueError) as exc:
        return {"error": str(exc)}


def _diagram(experiment: Experiment, trial: Trial | None) -> dict[str, str]:
    return {} if trial is None else _arch_svg(experiment, trial.arch_key)


@login_required
def experiment_list(request: HttpRequest) -> HttpResponse:
    filters = {k: request.GET.get(k, "") for k in selectors.LIST_FILTERS}
    page = Paginator(selectors.experiment_list(request.user, filters), LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    choices = selectors.experiment_filter_choices(request.user)
    return render(request, "experiments/list.html", {
        "page": page, "experiments": page.object_list, "filters": filters, "query": query.urlencode(),
        "choices": choices, "dataset_labels": dataset_labels([e.dataset for e in page.object_list]
                                                             + choices["dataset"])})


def _clone_of(request: HttpRequest) -> dict | None:
    """`?clone=PK`: the form's initial values copied from a visible experiment (another team's is a 404)."""
    pk = request.GET.get("clone", "")
    if not pk or request.method != "GET":
        return None
    if not pk.isdigit():
        raise Http404("no such experiment")
    return clone_initial(selectors.experiment_for_user(request.user, int(pk)))


@login_required
def experiment_new(request: HttpRequest) -> HttpResponse:
    form = ExperimentForm(request.POST or None, user=request.user, initial=_clone_of(request))
    if request.method == "POST" and form.is_valid():
        try:
            experiment = services.experiment_create(user=request.user, name=form.cleaned_data["name"],
                                                    spec=form.spec, team=form.cleaned_data["team"])
        except SpecError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            if experiment.status == Experiment.Status.PENDING_REVIEW:
                messages.info(request, f"The experiment waits for a reviewer: {experiment.review_reason}.")
            return redirect("experiment_detail", pk=experiment.pk)
    return render(request, "experiments/new.html", {"form": form, "conflicts": kind_conflicts()})


LEADERBOARD_PAGE_SIZE = 25
# A column's first click sorts it this way (the best figure, the smallest network, the fastest, the first trial).
SORT_FIRST = {"figure": "-figure", "params": "params", "macs": "macs", "training": "training", "trial": "trial"}


def _leaderboard(request: HttpRequest, experiment: Experiment) -> dict[str, object]:
    """One page of the leaderboard in the order and with the filters of the query string, with the links that
    re-sort it (a second click reverses) and page through it."""
    options = selectors.leaderboard_options(request.GET)
    trials = selectors.experiment_leaderboard(experiment, **options)
    page = Paginator(trials, LEADERBOARD_PAGE_SIZE).get_page(request.GET.get("page"))
    keep = {k: v for k, v in (("epochs", options["epochs"]), ("kept", "1" if options["kept"] else None)) if v}
    sort = options["sort"]
    toggled = lambda key: SORT_FIRST[key] if sort.lstrip("-") != key else key if sort.startswith("-") else "-" + key  # noqa: E731
    links = {key: urlencode({**keep, "sort": toggled(key)}) for key in SORT_FIRST}
    return {"page": page, "options": options, "sort_links": links, "query": urlencode({**keep, "sort": sort}),
            "epochs_choices": selectors.leaderboard_epochs(experiment),
            "sorted_by": sort.lstrip("-"), "descending": sort.startswith("-")}


@login_required
def experiment_leaderboard(request: HttpRequest, pk: int) -> HttpResponse:
    """The leaderboard alone (the page swaps it in when it is sorted, filtered, paged or has new trials)."""
    experiment = selectors.experiment_for_user(request.user, pk)
    return render(request, "experiments/_leaderboard.html", {"experiment": experiment,
                                                              "board": _leaderboard(request, experiment)})


@login_required
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = selectors.experiment_for_user(request.user, pk)
    best = selectors.experiment_best_trial(experiment)
    return render(request, "experiments/detail.html", {
        "experiment": experiment, "best": best, "diagram": _diagram(experiment, best),
        "dataset_row": dataset_by_engine_name(experiment.dataset),
        "liveness": selectors.experiment_liveness(experiment),
        "can_manage": selectors.can_manage(request.user, experiment),
        "can_review": selectors.can_review(request.user, experiment),
        "can_see_traceback": selectors.can_see_traceback(request.user, experiment),
        "events": selectors.experiment_events(experiment), "review_form": ReviewForm(),
        "exploration": selectors.experiment_exploration(experiment),
        "calibration": experiment.calibrations.first(),
        "calibration_form": CalibrationForm(initial=CalibrationForm.defaults(experiment)),
        "has_search_epochs": experiment.search_epochs.exists() or experiment.is_differentiable,
        "weight_spread": selectors.experiment_weight_spread(experiment),
        "in_flight": selectors.experiment_in_flight(experiment),
        "failures": selectors.experiment_failures(experiment),
        "board": _leaderboard(request, experiment), "cursor": selectors.experiment_cursor(experiment),
        "retrains": selectors.experiment_retrains(experiment), "extend_form": ExtendForm(),
        "retrain_form": RetrainForm(initial=RetrainForm.defaults(experiment))})


@login_required
def experiment_status(request: HttpRequest, pk: int) -> JsonResponse:
    """The live page's poll: progress figures, the trials that got a figure since the cursor `since` (a planning
    step; without it, none) and the search epochs after the first `epochs`. The whole experiment is the API's."""
    experiment = selectors.experiment_for_user(request.user, pk)
    since, epochs = request.GET.get("since", ""), request.GET.get("epochs", "0")
    if (since and not since.isdigit()) or not epochs.isdigit():
        return JsonResponse({"error": "since (a cursor from an earlier poll) and epochs (search epochs already "
                                      "shown) must be non-negative integers"}, status=400)
    cursor = int(since) if since else selectors.experiment_cursor(experiment)
    return JsonResponse(selectors.experiment_progress(experiment, cursor, int(epochs)))


@gzip_page
@login_required
def experiment_points(request: HttpRequest, pk: int) -> JsonResponse:
    """Every trial with a figure, as columns for the page's charts (fetched once; the poll adds what changes)."""
    experiment = selectors.experiment_for_user(request.user, pk)
    return JsonResponse(selectors.experiment_points(experiment), json_dumps_params={"separators": (",", ":")})


@login_required
def trial_detail(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    experiment, trial = selectors.trial_for_user(request.user, pk, number)
    exports = selectors.trial_exports(trial)
    return _trial_page(request, experiment, trial, exports=exports,
                       exports_building=any(e["status"] in Export.ACTIVE for e in exports))


def _trial_page(request: HttpRequest, experiment: Experiment, trial: Trial, **extra: object) -> HttpResponse:
    """A search trial's page or a retraining's: its figures, curves, timings, log and drawing."""
    return render(request, "experiments/trial.html", {
        "experiment": experiment, "trial": trial, "diagram": _diagram(experiment, trial),
        "timings": selectors.trial_timings(trial), "epochs": selectors.trial_epochs(trial),
        "fidelity": selectors.trial_fidelity(trial),
        "curves": {"val_acc": trial.curve, "train_loss": trial.loss_curve},
        "can_see_traceback": selectors.can_see_traceback(request.user, experiment), **extra})


def _export_refused(exc: SpecError | selectors.ExportUnavailable) -> HttpResponse:
    """An export that cannot be had, in plain words: an unknown format is a 404 like any missing page."""
    status = exc.status if isinstance(exc, selectors.ExportUnavailable) else 404
    return HttpResponse(exc.message, status=status, content_type="text/plain; charset=utf-8")


@login_required
def retrain_detail(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    experiment, trial = selectors.retrain_for_user(request.user, pk, number)
    return _trial_page(request, experiment, trial)


@login_required
@require_POST
def trial_export_request(request: HttpRequest, pk: int, number: int, fmt: str) -> HttpResponse:
    """Ask a worker to build the trial as a file in `fmt` (once; a failed build is retried), then show the
    trial page, which says "building" until the download is there."""
    experiment, trial = selectors.trial_for_user(request.user, pk, number)
    try:
        services.export_request(experiment, trial, fmt, request.user)
    except SpecError as exc:
        return _export_refused(exc)
    return redirect(reverse("trial_detail", args=[pk, number]) + "#exports")


@login_required
def trial_export_download(request: HttpRequest, pk: int, number: int, fmt: str) -> HttpResponse:
    """Stream the built file from the artifact store; nothing is built here."""
    try:
        path, filename, content_type = selectors.export_download(request.user, pk, number, fmt)
    except (SpecError, selectors.ExportUnavailable) as exc:
        return _export_refused(exc)
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename, content_type=content_type)


@login_required
def search_epoch_diagram(request: HttpRequest, pk: int, epoch: int) -> HttpResponse:
    experiment = selectors.experiment_for_user(request.user, pk)
    row = get_object_or_404(SearchEpoch, experiment=experiment, epoch=epoch)
    diagram = _arch_svg(experiment, row.genotype)
    if "svg" not in diagram:
        return HttpResponse(diagram["error"], status=500, content_type="text/plain")
    return HttpResponse(diagram["svg"], content_type="image/svg+xml")


def _act(request: HttpRequest, pk: int, action: Callable[[Experiment], bool], done: str, refused: str,
         then: str = "experiment_detail") -> HttpResponse:
    """Run one state change on a visible experiment and report it as a message; a rule that forbids it for
    this user is a message too (the object itself is visible to them)."""
    experiment = selectors.experiment_for_user(request.user, pk)
    try:
        changed = action(experiment)
    except PermissionDenied as exc:
        messages.error(request, f"Not allowed: {exc}.")
    except SpecError as exc:
        messages.error(request, exc.message[:1].upper() + exc.message[1:] + ".")
    else:
        if changed:
            messages.success(request, done)
        else:
            messages.error(request, refused.format(status=experiment.status.replace("_", " ")))
    return redirect(then, pk=pk) if then == "experiment_detail" else redirect(then)


@require_POST
@login_required
def experiment_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, lambda e: services.experiment_cancel(e, request.user),
                "Experiment cancelled; its trials are kept and it can be resumed.",
                "Only a pending, queued or running experiment can be cancelled (it is {status}).")


@require_POST
@login_required
def experiment_resume(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, lambda e: services.experiment_resume(e, request.user),
                "Experiment queued again; it continues from its last trial.",
                "Only a cancelled or failed experiment can be resumed (it is {status}).")


@require_POST
@login_required
def experiment_delete(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, lambda e: services.experiment_delete(e, request.user),
                f"Experiment {pk} deleted with its trials and kept weights.",
                "A queued or running experiment cannot be deleted; cancel it first (it is {status}).",
                then="experiment_list")


@require_POST
@login_required
def experiment_extend(request: HttpRequest, pk: int) -> HttpResponse:
    form = ExtendForm(request.POST)
    trials = form.cleaned_data["trials"] if form.is_valid() else None  # the service says what is wrong with it
    return _act(request, pk, lambda e: services.experiment_extend(e, request.user, trials),
                f"Experiment extended by {trials} trials: it continues its search (or waits for a reviewer, as the "
                "page says).", "Only a succeeded experiment can be extended (it is {status}).")


@require_POST
@login_required
def experiment_retrain(request: HttpRequest, pk: int) -> HttpResponse:
    form = RetrainForm(request.POST)
    epochs = form.cleaned_data["epochs"] if form.is_valid() else None
    return _act(request, pk, lambda e: bool(services.experiment_retrain(e, request.user, epochs)),
                f"Retraining queued: the best architecture is trained from scratch for {epochs} epochs.", "")


@login_required
def experiment_compare(request: HttpRequest) -> HttpResponse:
    """2 to 5 visible experiments side by side: settings (differences marked), best-so-far curves, best
    architectures. Bad ids are a 400 page saying why; an experiment the user may not see is a 404."""
    try:
        ids = selectors.compare_ids(request.GET.getlist("ids"))
    except selectors.CompareError as exc:
        return render(request, "experiments/compare.html", {"error": str(exc)}, status=400)
    experiments = selectors.experiments_compared(request.user, ids)
    arch = selectors.best_arch_keys(experiments)
    columns = [{"experiment": e, "curve": selectors.best_so_far_curve(e), "figure": e.figure.as_json(),
                "diagram": _arch_svg(e, arch[e.pk]) if e.pk in arch else {}} for e in experiments]
    figures = list(dict.fromkeys((c["figure"]["kind"], c["figure"]["name"]) for c in columns))
    return render(request, "experiments/compare.html", {
        "columns": columns, "rows": selectors.compare_settings(experiments), "mixed_figures": len(figures) > 1,
        "chart": [{"id": c["experiment"].pk, "name": c["experiment"].name, "figure": c["figure"],
                   "curve": c["curve"]} for c in columns]})


@require_POST
@login_required
def experiment_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve or reject a pending experiment, with a comment (required to reject)."""
    selectors.experiment_for_user(request.user, pk)  # another team's experiment is a 404 before anything else
    form = ReviewForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose approve or reject.")
        return redirect("experiment_detail", pk=pk)
    comment, approve = form.cleaned_data["comment"], form.cleaned_data["decision"] == "approve"
    return _act(request, pk, lambda e: services.experiment_approve(e, request.user, comment) if approve
                else services.experiment_reject(e, request.user, comment),
                "Approved: the experiment is queued." if approve else "Rejected: it will not run.",
                "Only an experiment pending review can be reviewed (it is {status}).",
                then="review_queue" if request.POST.get("next") == "review_queue" else "experiment_detail")


@login_required
def review_queue(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.pending_reviews(request.user), LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"experiment": e, "can_review": selectors.can_review(request.user, e),
             "seconds": selectors.similar_runs_seconds_per_trial_epoch(e)} for e in page.object_list]
    for row in rows:
        row["estimate"] = None if row["seconds"] is None else row["seconds"] * row["experiment"].cost
    return render(request, "experiments/review.html", {"page": page, "rows": rows, "review_form": ReviewForm()})


@require_POST
@login_required
def experiment_calibrate(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = selectors.experiment_for_user(request.user, pk)
    form = CalibrationForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Calibration not started: " + "; ".join(
            f"{form.fields[f].label}: {' '.join(e)}" for f, e in form.errors.items()))
        return redirect("experiment_detail", pk=pk)
    try:
        services.calibration_create(experiment=experiment, user=request.user, **form.cleaned_data)
    except PermissionDenied as exc:
        messages.error(request, f"Not allowed: {exc}.")
    except SpecError as exc:
        messages.error(request, f"Calibration not started: {exc.message}")
    else:
        messages.success(request, "Calibration queued: a worker trains the candidates and reports the trust.")
    return redirect("experiment_detail", pk=pk)


@require_POST
@login_required
def calibration_cancel(request: HttpRequest, pk: int, calibration_id: int) -> HttpResponse:
    """Stop a queued or running calibration; another team's is a 404, a finished one is refused saying why."""
    _, calibration = selectors.calibration_for_user(request.user, pk, calibration_id)
    try:
        changed = services.calibration_cancel(calibration, request.user)
    except PermissionDenied as exc:
        messages.error(request, f"Not allowed: {exc}.")
    else:
        if changed:
            messages.success(request, "Calibration cancelled; the candidates it measured are kept.")
        else:
            messages.error(request, f"Only a queued or running calibration can be cancelled (it is "
                                    f"{calibration.status}).")
    return redirect("experiment_detail", pk=pk)


@login_required
def worker_list(request: HttpRequest) -> HttpResponse:
    """Staff only (a 404 for anyone else): the worker processes seen lately, what each runs and when it last
    renewed its lease."""
    if not request.user.is_staff:
        raise Http404("no such page")
    paginator = Paginator(selectors.workers_seen(), 50)
    return render(request, "experiments/workers.html", {
        "page": paginator.get_page(request.GET.get("page")), "lease": settings.NAS_LEASE_SECONDS})

