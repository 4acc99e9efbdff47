"""Pages and the JSON progress endpoint. Views validate and delegate; logic lives in services/selectors."""
from __future__ import annotations

from typing import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_POST

from nasjobs.options import parse_config
from nasjobs.search import SpecError
from webapp.datasets.selectors import dataset_by_engine_name, dataset_labels
from webapp.experiments import selectors, services
from webapp.experiments.diagrams import DiagramError, graph_to_svg
from webapp.experiments.forms import CalibrationForm, ExperimentForm, ReviewForm, kind_conflicts
from webapp.experiments.models import Experiment, SearchEpoch, Trial

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


@login_required
def experiment_new(request: HttpRequest) -> HttpResponse:
    form = ExperimentForm(request.POST or None, user=request.user)
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
        "in_flight": selectors.experiment_in_flight(experiment),
        "failures": selectors.experiment_failures(experiment),
        "leaderboard": selectors.experiment_leaderboard(experiment)})


@login_required
def experiment_status(request: HttpRequest, pk: int) -> JsonResponse:
    experiment = selectors.experiment_for_user(request.user, pk)
    return JsonResponse(selectors.experiment_summary(experiment, leaderboard=None))


@gzip_page
@login_required
def experiment_points(request: HttpRequest, pk: int) -> JsonResponse:
    """Every trial with a figure, as columns for the page's charts (fetched once; the poll adds what changes)."""
    experiment = selectors.experiment_for_user(request.user, pk)
    return JsonResponse(selectors.experiment_points(experiment), json_dumps_params={"separators": (",", ":")})


@login_required
def trial_detail(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    experiment, trial = selectors.trial_for_user(request.user, pk, number)
    return render(request, "experiments/trial.html", {
        "experiment": experiment, "trial": trial, "diagram": _diagram(experiment, trial),
        "timings": selectors.trial_timings(trial), "epochs": selectors.trial_epochs(trial),
        "fidelity": selectors.trial_fidelity(trial),
        "curves": {"val_acc": trial.curve, "train_loss": trial.loss_curve},
        "can_see_traceback": selectors.can_see_traceback(request.user, experiment)})


@login_required
def trial_export(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    """Download the trial as a runnable PyTorch model (a zip: torch.export program, weights, README)."""
    experiment, trial = selectors.trial_for_user(request.user, pk, number)
    response = HttpResponse(services.trial_export(experiment, trial), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="nasboard-{pk}-trial-{number}.zip"'
    return response


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


@login_required
def worker_list(request: HttpRequest) -> HttpResponse:
    """Staff only (a 404 for anyone else): the worker processes seen lately, what each runs and when it last
    renewed its lease."""
    if not request.user.is_staff:
        raise Http404("no such page")
    paginator = Paginator(selectors.workers_seen(), 50)
    return render(request, "experiments/workers.html", {
        "page": paginator.get_page(request.GET.get("page")), "lease": settings.NAS_LEASE_SECONDS})

