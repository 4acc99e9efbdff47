"""The REST API: a thin layer over the experiment services and selectors, with the pages' access rules."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from django.http import FileResponse, HttpResponseBase
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from nasjobs.search import ExperimentSpec, SpecError
from webapp.api.serializers import DatasetUploadSerializer, ExperimentCreateSerializer, ExtendSerializer, \
    RetrainSerializer, ReviewSerializer, TokenRequestSerializer
from webapp.datasets import selectors as dataset_selectors
from webapp.datasets import services as dataset_services
from webapp.datasets.models import Dataset
from webapp.experiments import selectors, services
from webapp.experiments.models import Experiment, Trial
from webapp.teams import selectors as team_selectors
from webapp.teams.services import team_usage

TRIAL_ORDERINGS = ("val_acc", "params", "flops", "train_seconds", "search_seconds", "number")
FREE = inline_serializer("Object", fields={})


def spec_error(exc: SpecError) -> ValidationError:
    """A validation error keyed by the field at fault (`options.space.max_layers` for an option)."""
    field = f"options.{exc.field}" if "." in exc.field else exc.field
    return ValidationError({field: [exc.message]})


def experiment_json(user, experiment: Experiment) -> dict[str, Any]:
    data = selectors.experiment_summary(experiment)
    if experiment.traceback and selectors.can_see_traceback(user, experiment):
        data["traceback"] = experiment.traceback
    return data


class TokenView(APIView):
    """POST username and password for a token; DELETE (with the token) revokes it."""

    def get_permissions(self):
        return [AllowAny()] if self.request.method == "POST" else [IsAuthenticated()]

    @extend_schema(request=TokenRequestSerializer, responses={200: inline_serializer(
        "Token", fields={"token": serializers.CharField()})}, auth=[])
    def post(self, request: Request) -> Response:
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The underlying HttpRequest, so a django-axes lockout reaches its middleware and answers 429 with when
        # to retry, as the web login does.
        user = authenticate(request._request, username=data.validated_data["username"],
                            password=data.validated_data["password"])
        if user is None or not user.is_active:
            raise ValidationError({"non_field_errors": ["unable to log in with these credentials"]})
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request) -> Response:
        Token.objects.filter(user=request.user).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class ExperimentViewSet(viewsets.GenericViewSet):
    """Experiments of the caller's teams. Another team's experiment is a 404, exactly like a missing one."""

    queryset = Experiment.objects.none()

    def get_queryset(self):
        return selectors.experiment_list(self.request.user, self.request.query_params)

    @extend_schema(parameters=[OpenApiParameter(f, str) for f in selectors.LIST_FILTERS], responses=FREE)
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([selectors.experiment_row_json(e) for e in page])

    @extend_schema(request=ExperimentCreateSerializer, responses={201: FREE})
    def create(self, request: Request) -> Response:
        data = ExperimentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        name, team = fields.pop("name"), fields.pop("team", None)
        try:
            experiment = services.experiment_create(user=request.user, name=name, team=team,
                                                    spec=ExperimentSpec(**fields))
        except SpecError as exc:
            raise spec_error(exc) from None
        return Response(experiment_json(request.user, experiment), status=status.HTTP_201_CREATED)

    @extend_schema(responses=FREE)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(experiment_json(request.user, selectors.experiment_for_user(request.user, int(pk))))

    @extend_schema(responses={204: None, 409: FREE})
    def destroy(self, request: Request, pk: str) -> Response:
        experiment = selectors.experiment_for_user(request.user, int(pk))
        if not services.experiment_delete(experiment, request.user):
            return Response({"detail": f"experiment {pk} is {experiment.status}: cancel it first"},
                            status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _change(self, request: Request, pk: str, change, refused: str) -> Response:
        experiment = selectors.experiment_for_user(request.user, int(pk))
        try:
            changed = change(experiment)
        except SpecError as exc:
            raise spec_error(exc) from None
        if not changed:
            return Response({"detail": refused.format(status=experiment.status)}, status=status.HTTP_409_CONFLICT)
        experiment.refresh_from_db()
        return Response(experiment_json(request.user, experiment))

    @extend_schema(request=None, responses={200: FREE, 409: FREE})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        return self._change(request, pk, lambda e: services.experiment_cancel(e, request.user),
                            "only a pending, queued or running experiment can be cancelled (it is {status})")

    @extend_schema(request=None, responses={200: FREE, 409: FREE})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return self._change(request, pk, lambda e: services.experiment_resume(e, request.user),
                            "only a cancelled or failed experiment can be resumed (it is {status})")

    @extend_schema(request=ExtendSerializer, responses={200: FREE, 400: FREE, 409: FREE})
    @action(detail=True, methods=["post"])
    def extend(self, request: Request, pk: str) -> Response:
        """More trials for a succeeded search: it continues the same strategy state (or waits for review)."""
        selectors.experiment_for_user(request.user, int(pk))  # another team's is a 404 before its body is read
        data = ExtendSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return self._change(request, pk, lambda e: services.experiment_extend(e, request.user,
                                                                              data.validated_data["trials"]),
                            "only a succeeded experiment can be extended (it is {status})")

    @extend_schema(request=RetrainSerializer, responses={201: FREE, 400: FREE})
    @action(detail=True, methods=["post"])
    def retrain(self, request: Request, pk: str) -> Response:
        """Train the best architecture from scratch for `epochs` epochs, as a retraining beside the search."""
        experiment = selectors.experiment_for_user(request.user, int(pk))  # a 404 before the body is read
        data = RetrainSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            trial = services.experiment_retrain(experiment, request.user, data.validated_data["epochs"])
        except SpecError as exc:
            raise spec_error(exc) from None
        return Response(selectors.retrain_to_json(trial), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: FREE, 409: FREE})
    @action(detail=True, methods=["post"], url_path=r"calibrations/(?P<calibration_id>[0-9]+)/cancel")
    def calibration_cancel(self, request: Request, pk: str, calibration_id: str) -> Response:
        """Stop a queued or running calibration (its id is the experiment's `trust.id`); 409 once it has ended."""
        _, calibration = selectors.calibration_for_user(request.user, int(pk), int(calibration_id))
        if not services.calibration_cancel(calibration, request.user):
            return Response({"detail": f"only a queued or running calibration can be cancelled (it is "
                                       f"{calibration.status})"}, status=status.HTTP_409_CONFLICT)
        calibration.refresh_from_db()
        return Response(selectors.calibration_to_json(calibration))

    def _review(self, request: Request, pk: str, approve: bool) -> Response:
        selectors.experiment_for_user(request.user, int(pk))  # another team's is a 404 before its body is read
        review = ReviewSerializer(data=request.data)
        review.is_valid(raise_exception=True)
        comment = review.validated_data["comment"]
        decide = services.experiment_approve if approve else services.experiment_reject
        return self._change(request, pk, lambda e: decide(e, request.user, comment),
                            f"only a pending experiment can be {'approved' if approve else 'rejected'} "
                            "(it is {status})")

    @extend_schema(request=ReviewSerializer, responses={200: FREE, 409: FREE})
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        return self._review(request, pk, approve=True)

    @extend_schema(request=ReviewSerializer, responses={200: FREE, 409: FREE})
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str) -> Response:
        return self._review(request, pk, approve=False)

    @extend_schema(parameters=[
        OpenApiParameter("ordering", str, enum=[o for f in TRIAL_ORDERINGS for o in (f, f"-{f}")]),
        OpenApiParameter("status", str, enum=[s for s, _ in Trial.Status.choices],
                         description="Only trials in this status (default: all; pending, running and failed "
                                     "ones have no figure yet)")], responses=FREE)
    @action(detail=True, methods=["get"])
    def trials(self, request: Request, pk: str) -> Response:
        experiment = selectors.experiment_for_user(request.user, int(pk))
        ordering = request.query_params.get("ordering", "-val_acc")
        if ordering.lstrip("-") not in TRIAL_ORDERINGS:
            raise ValidationError({"ordering": [f"one of {', '.join(TRIAL_ORDERINGS)}, '-' first for descending"]})
        trials = experiment.trials.defer(*Trial.BLOBS).order_by(ordering, "number")
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in Trial.Status.values:
                raise ValidationError({"status": [f"one of {', '.join(Trial.Status.values)}"]})
            trials = trials.filter(status=wanted)
        page = self.paginate_queryset(trials)
        return self.get_paginated_response([selectors.trial_to_json(t) for t in page])

    @extend_schema(request=None, responses={200: FREE, 202: FREE, 400: FREE})
    @action(detail=True, methods=["get", "post"], url_path=r"trials/(?P<number>[0-9]+)/exports/(?P<fmt>[^/]+)")
    def export(self, request: Request, pk: str, number: str, fmt: str) -> Response:
        """GET: the trial's export in `fmt` (`status` "none" until requested). POST: request it (built once by a
        worker; a failed one is retried): 202 while it builds, 200 once it is ready to download."""
        experiment, trial = selectors.trial_for_user(request.user, int(pk), int(number))
        try:
            export = (services.export_request(experiment, trial, fmt, request.user) if request.method == "POST"
                      else selectors.export_for_user(request.user, int(pk), int(number), fmt)[2])
        except SpecError as exc:
            raise spec_error(exc) from None
        data = selectors.export_to_json(fmt, export)
        data["download"] = request.build_absolute_uri(reverse("api-experiment-export-download",
                                                              args=[pk, number, fmt]))
        ready = export is not None and export.status == export.Status.READY
        return Response(data, status=status.HTTP_200_OK if ready or request.method == "GET"
                        else status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "application/octet-stream"): bytes, 404: FREE, 409: FREE})
    @action(detail=True, methods=["get"], url_path=r"trials/(?P<number>[0-9]+)/exports/(?P<fmt>[^/]+)/download")
    def export_download(self, request: Request, pk: str, number: str, fmt: str) -> HttpResponseBase:
        """The built file, streamed (never built here): 409 while it builds or after it failed, 404 before it
        is requested."""
        try:
            path, filename, content_type = selectors.export_download(request.user, int(pk), int(number), fmt)
        except SpecError as exc:
            raise spec_error(exc) from None
        except selectors.ExportUnavailable as exc:
            return Response({"detail": exc.message}, status=exc.status)
        return FileResponse(path.open("rb"), as_attachment=True, filename=filename, content_type=content_type)


class DatasetViewSet(viewsets.GenericViewSet):
    """The built-in datasets and the caller's teams' uploads; another team's dataset is a 404. POST uploads one
    (multipart), refused with 400 and a field message before anything is stored, or accepted with 201 while a
    worker decodes it (`status` becomes `ready` or `failed`)."""

    queryset = Dataset.objects.none()
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(parameters=[OpenApiParameter("kind", str)], responses=FREE)
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(dataset_selectors.dataset_list(request.user, request.query_params.get(
            "kind", "")))
        return self.get_paginated_response([dataset_selectors.dataset_json(d) for d in page])

    @extend_schema(responses=FREE)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(dataset_selectors.dataset_json(dataset_selectors.dataset_for_user(request.user, int(pk)),
                                                       detail=True))

    @extend_schema(request=DatasetUploadSerializer, responses={201: FREE})
    def create(self, request: Request) -> Response:
        data = DatasetUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        try:
            dataset = dataset_services.dataset_upload(
                user=request.user, team=fields.get("team"), name=fields["name"], kind=fields["kind"],
                upload=fields["file"], label_column=fields.get("label_column", ""), resize=fields.get("resize"),
                title=fields.get("title", ""))
        except SpecError as exc:
            raise spec_error(exc) from None
        return Response(dataset_selectors.dataset_json(dataset, detail=True), status=status.HTTP_201_CREATED)


class TeamViewSet(viewsets.GenericViewSet):
    """The caller's teams, their role, and this month's compute against the quota."""

    queryset = Experiment.objects.none()

    @extend_schema(responses=FREE)
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(list(team_selectors.user_teams(request.user).order_by("name")))
        return self.get_paginated_response([{
            "id": t.pk, "name": t.name, "role": team_selectors.role_in(request.user, t.pk),
            "monthly_quota": t.monthly_quota, "review_threshold": t.review_threshold, "used_this_month":
            team_usage(t)} for t in page])
