"""Pages and the JSON progress endpoint. Views validate and delegate; logic lives in services/selectors."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from nasjobs.options import parse_config
from nasjobs.search import SpecError
from webapp.experiments import selectors, services
from webapp.experiments.diagrams import DiagramError, graph_to_svg
from webapp.experiments.forms import CalibrationForm, ExperimentForm
from webapp.experiments.models import Experiment, SearchEpoch, Trial


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
    return render(request, "experiments/list.html", {"experiments": selectors.experiment_list()})


@login_required
def experiment_new(request: HttpRequest) -> HttpResponse:
    form = ExperimentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            experiment = services.experiment_create(user=request.user, name=form.cleaned_data["name"],
                                                    spec=form.spec)
        except SpecError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            return redirect("experiment_detail", pk=experiment.pk)
    return render(request, "experiments/new.html", {"form": form})


@login_required
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=pk)
    best = selectors.experiment_best_trial(experiment)
    return render(request, "experiments/detail.html", {
        "experiment": experiment, "best": best, "diagram": _diagram(experiment, best),
        "exploration": selectors.experiment_exploration(experiment),
        "calibration": experiment.calibrations.first(),
        "calibration_form": CalibrationForm(initial=CalibrationForm.defaults(experiment)),
        "has_search_epochs": experiment.search_epochs.exists() or getattr(
            experiment.spec().component_class("strategy"), "differentiable", False),
        "leaderboard": selectors.experiment_leaderboard(experiment)})


@login_required
def experiment_status(request: HttpRequest, pk: int) -> JsonResponse:
    experiment = get_object_or_404(Experiment, pk=pk)
    return JsonResponse(selectors.experiment_summary(experiment, leaderboard=None))


@login_required
def trial_detail(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=pk)
    trial = get_object_or_404(Trial, experiment=experiment, number=number)
    return render(request, "experiments/trial.html", {
        "experiment": experiment, "trial": trial, "diagram": _diagram(experiment, trial)})


@login_required
def trial_export(request: HttpRequest, pk: int, number: int) -> HttpResponse:
    """Download the trial as a runnable PyTorch model (a zip: torch.export program, weights, README)."""
    experiment = get_object_or_404(Experiment, pk=pk)
    trial = get_object_or_404(Trial, experiment=experiment, number=number)
    response = HttpResponse(services.trial_export(experiment, trial), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="nasboard-{pk}-trial-{number}.zip"'
    return response


@login_required
def search_epoch_diagram(request: HttpRequest, pk: int, epoch: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=pk)
    row = get_object_or_404(SearchEpoch, experiment=experiment, epoch=epoch)
    diagram = _arch_svg(experiment, row.genotype)
    if "svg" not in diagram:
        return HttpResponse(diagram["error"], status=500, content_type="text/plain")
    return HttpResponse(diagram["svg"], content_type="image/svg+xml")


@require_POST
@login_required
def experiment_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=pk)
    if services.experiment_cancel(experiment):
        messages.success(request, "Experiment cancelled; its trials are kept and it can be resumed.")
    else:
        messages.error(request, f"Only a queued or running experiment can be cancelled (it is {experiment.status}).")
    return redirect("experiment_detail", pk=pk)


@require_POST
@login_required
def experiment_calibrate(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=pk)
    form = CalibrationForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Calibration not started: " + "; ".join(
            f"{form.fields[f].label}: {' '.join(e)}" for f, e in form.errors.items()))
        return redirect("experiment_detail", pk=pk)
    try:
        services.calibration_create(experiment=experiment, user=request.user, **form.cleaned_data)
    except SpecError as exc:
        messages.error(request, f"Calibration not started: {exc.message}")
    else:
        messages.success(request, "Calibration queued: a worker trains the candidates and reports the trust.")
    return redirect("experiment_detail", pk=pk)


@require_POST
@login_required
def experiment_resume(request: HttpRequest, pk: int) -> HttpResponse:
    experiment = get_object_or_404(Experiment, pk=pk)
    if services.experiment_resume(experiment):
        messages.success(request, "Experiment queued again; it continues from its last trial.")
    else:
        messages.error(request, f"Only a cancelled or failed experiment can be resumed (it is {experiment.status}).")
    return redirect("experiment_detail", pk=pk)
