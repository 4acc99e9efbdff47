"""Dataset pages: the list, an upload form, and a page per dataset with its preview and experiments."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from nasjobs.datasets import DATASETS, builtin_folder
from nasjobs.search import SpecError
from nasjobs.uploads import dataset_preview
from webapp.datasets import selectors, services
from webapp.datasets.forms import DatasetUploadForm
from webapp.datasets.models import Dataset
from webapp.experiments.selectors import experiments_visible_to
from webapp.teams.selectors import is_team_admin

PAGE_SIZE = 25
SIGNAL_W, SIGNAL_H = 160, 48


def _unavailable(dataset: Dataset) -> str:
    """Why a built-in cannot be loaded on this machine ("" when it can): torchvision files not under
    NAS_DATA_ROOT."""
    if not dataset.is_builtin or dataset.name not in DATASETS.names():
        return ""
    entry = DATASETS.get(dataset.name)
    return entry.unavailable() if hasattr(entry, "unavailable") else ""


def dataset_list(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind", "")
    kind = kind if kind in Dataset.Kind.values else ""
    page = Paginator(selectors.dataset_list(request.user, kind), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"dataset": d, "unavailable": _unavailable(d)} for d in page.object_list]
    return render(request, "datasets/list.html", {"page": page, "rows": rows, "kind": kind,
                                                  "kinds": Dataset.Kind.choices,
                                                  "query": f"kind={kind}" if kind else ""})


def dataset_new(request: HttpRequest) -> HttpResponse:
    form = DatasetUploadForm(request.POST or None, request.FILES or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            dataset = services.dataset_upload(user=request.user, team=data["team"], name=data["name"],
                                              kind=data["kind"], upload=data["file"],
                                              label_column=data["label_column"], resize=data["resize"],
                                              title=data["title"])
        except SpecError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            messages.info(request, f"Dataset {dataset.name} accepted; a worker is decoding it.")
            return redirect("dataset_detail", pk=dataset.pk)
    return render(request, "datasets/new.html", {"form": form})


def _signal_path(values: list[float]) -> str:
    """A signal's first channel as an SVG polyline's points, scaled into SIGNAL_W x SIGNAL_H."""
    series = values[0] if values and isinstance(values[0], list) else values
    if not series:
        return ""
    low, high = min(series), max(series)
    span = (high - low) or 1.0
    step = SIGNAL_W / max(len(series) - 1, 1)
    return " ".join(f"{i * step:.1f},{SIGNAL_H - 2 - (v - low) / span * (SIGNAL_H - 4):.1f}"
                    for i, v in enumerate(series))


def _preview(dataset: Dataset) -> dict[str, Any] | None:
    if dataset.status != Dataset.Status.READY:
        return None
    folder = builtin_folder(dataset.name) if dataset.is_builtin else dataset.folder()
    if folder is None or not folder.exists():
        return None
    preview = dataset_preview(folder, samples_per_class=6 if dataset.kind == "image" else 2)
    if preview["kind"] == "signal":
        preview["samples"] = {c: [_signal_path(s) for s in samples] for c, samples in preview["samples"].items()}
    if preview["kind"] == "table":
        names = preview["feature_names"] or []
        preview["columns"] = names[:12]
        preview["rows"] = [(c, [row[n] for n in preview["columns"]]) for c, rows in preview["samples"].items()
                           for row in rows]
    return preview


def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = selectors.dataset_for_user(request.user, pk)
    if dataset.is_builtin:
        dataset = services.builtin_stats_fill(dataset)
    counts = {split: list(dataset.class_counts.get(split) or []) for split in ("train", "val", "test")}
    balance = [{"name": name, **{split: c[i] if i < len(c) else 0 for split, c in counts.items()}}
               for i, name in enumerate(dataset.class_names)] if dataset.class_counts else []
    experiments = (experiments_visible_to(request.user).filter(dataset=dataset.engine_name)
                   .only("id", "name", "status", "space", "strategy", "estimator", "options", "best_val_acc",
                         "created_at", "team__name")
                   .select_related("team").order_by("-created_at")[:20])
    can_delete = not dataset.is_builtin and (request.user.is_staff or dataset.owner_id == request.user.pk
                                             or is_team_admin(request.user, dataset.team_id))
    return render(request, "datasets/detail.html", {
        "dataset": dataset, "preview": _preview(dataset), "balance": balance, "experiments": experiments,
        "unavailable": _unavailable(dataset), "can_delete": can_delete, "signal_w": SIGNAL_W,
        "signal_h": SIGNAL_H})


@require_POST
def dataset_delete(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = selectors.dataset_for_user(request.user, pk)
    try:
        services.dataset_delete(dataset, request.user)
    except (PermissionDenied, SpecError) as exc:
        messages.error(request, f"Not deleted: {getattr(exc, 'message', exc)}")
        return redirect("dataset_detail", pk=pk)
    messages.info(request, f"Dataset {dataset.name} deleted.")
    return redirect("dataset_list")
