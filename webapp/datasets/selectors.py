"""Which datasets a user sees and a team may search on: every dataset lookup goes through here."""
from __future__ import annotations

import re

from django.db.models import Case, F, Q, QuerySet, Value, When
from django.http import Http404

from nasjobs.datasets import DATASETS
from webapp.datasets.models import UPLOAD_PREFIX, Dataset
from webapp.teams.selectors import member_teams, visible_team_ids

LIST_FIELDS = ("id", "team_id", "team__name", "owner__username", "name", "title", "kind", "source", "status",
               "input_shape", "num_classes", "split_sizes", "created_at")


def datasets_visible_to(user) -> QuerySet[Dataset]:
    """The built-ins and the uploads of the user's teams (every team's for staff)."""
    if not user.is_authenticated:
        return Dataset.objects.none()
    teams = visible_team_ids(user)
    qs = Dataset.objects.all() if teams is None else Dataset.objects.filter(Q(team__isnull=True) | Q(team_id__in=teams))
    return qs.select_related("team", "owner")


def dataset_for_user(user, pk: int) -> Dataset:
    """One dataset, or 404 when it does not exist or belongs to a team the user does not see."""
    dataset = datasets_visible_to(user).filter(pk=pk).first()
    if dataset is None:
        raise Http404("no such dataset")
    return dataset


def dataset_list(user, kind: str = "") -> QuerySet[Dataset]:
    """A page's rows: built-ins first, then uploads newest first; no per-class figures loaded."""
    qs = datasets_visible_to(user).only(*LIST_FIELDS)
    if kind:
        qs = qs.filter(kind=kind)
    builtin = Q(team__isnull=True)
    # Built-ins first by name, then uploads newest first.
    return qs.order_by(Case(When(builtin, then=Value(0)), default=Value(1)), Case(When(builtin, then=F("name"))),
                       "-created_at", "name")


def upload_pk(engine_name: str) -> int | None:
    match = re.fullmatch(rf"{UPLOAD_PREFIX}([0-9]+)", engine_name or "")
    return int(match.group(1)) if match else None


def dataset_by_engine_name(engine_name: str) -> Dataset | None:
    pk = upload_pk(engine_name)
    if pk is not None:
        return Dataset.objects.filter(pk=pk, team__isnull=False).first()
    return Dataset.objects.filter(name=engine_name, team__isnull=True).first()


def datasets_for_submission(user) -> QuerySet[Dataset]:
    """What the experiment form offers: built-ins, and the ready uploads of the teams the user submits to."""
    return (Dataset.objects.filter(Q(team__isnull=True) | Q(team__in=member_teams(user).values("pk"),
                                                          status=Dataset.Status.READY))
            .select_related("team").only("id", "name", "title", "kind", "team_id", "team__name")
            .order_by(F("team_id").asc(nulls_first=True), "name"))


def dataset_labels(engine_names) -> dict[str, str]:
    """How a page names the datasets experiments store: an upload's own name for `upload-<pk>` (one query)."""
    pks = {pk for pk in map(upload_pk, set(engine_names)) if pk is not None}
    return {f"{UPLOAD_PREFIX}{pk}": name for pk, name in Dataset.objects.filter(pk__in=pks, team__isnull=False)
            .values_list("pk", "name")} if pks else {}


def dataset_reference(team, ref: str | int) -> str:
    """The engine name of the dataset an experiment of `team` names: a built-in's name, `upload-<pk>`, the name of
    one of the team's uploads, or a dataset's id (as the list and the API show it). Anything else is returned as
    given, for validation to refuse with the known names."""
    ref = str(ref).strip()
    if ref in DATASETS.names() or upload_pk(ref) is not None:
        return ref
    if ref.isdigit():
        row = Dataset.objects.filter(Q(team__isnull=True) | Q(team=team), pk=int(ref)).first()
    else:
        row = Dataset.objects.filter(team=team, name=ref).first()
    return row.engine_name if row is not None else ref


def dataset_refusal(team, engine_name: str) -> str:
    """Why an experiment of `team` may not use this dataset ("" when it may): an upload belongs to one team and
    must have finished processing."""
    if upload_pk(engine_name) is None:
        return ""
    dataset = dataset_by_engine_name(engine_name)
    if dataset is None or dataset.team_id != team.pk:
        return f"unknown dataset {engine_name!r} in team {team.name}"
    if dataset.status == Dataset.Status.PROCESSING:
        return f"dataset {dataset.name!r} is still processing; try again when it is ready"
    if dataset.status == Dataset.Status.FAILED:
        return f"dataset {dataset.name!r} failed to process ({dataset.error}); upload it again"
    return ""


def dataset_json(dataset: Dataset, detail: bool = False) -> dict:
    """A dataset as the API shows it; `detail` adds the class names and the counts per class and split."""
    extra = {"class_names": dataset.class_names, "class_counts": dataset.class_counts,
             "options": dataset.options} if detail else {}
    return {"id": dataset.pk, "name": dataset.name, "engine_name": dataset.engine_name,
            "team": dataset.team.name if dataset.team_id else None, "builtin": dataset.is_builtin,
            "owner": dataset.owner.username if dataset.owner_id else None, "title": dataset.title,
            "kind": dataset.kind, "source": dataset.source, "status": dataset.status, "error": dataset.error,
            "input_shape": dataset.input_shape, "num_classes": dataset.num_classes,
            "split_sizes": dataset.split_sizes, "created_at": dataset.created_at.isoformat(), **extra}
