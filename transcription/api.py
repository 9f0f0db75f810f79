"""The REST API (DESIGN.md, "HTTP API"). Views parse, call one service, shape the answer."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import authenticate
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from lingoloop.errors import ApiError
from transcription import services
from transcription.events import progress_object, run_representation
from transcription.exports import CONTENT_TYPES, RENDERERS
from transcription.models import RunStatus, TranscriptRun
from transcription.serializers import SubmitSerializer, TokenRequestSerializer


def runs_visible_to(request: Request) -> QuerySet[TranscriptRun]:
    """Every lookup goes through here: someone else's run is simply not found (404)."""
    runs = TranscriptRun.objects.select_related("audio").prefetch_related("jobs")
    return runs if request.user.is_staff else runs.filter(owner_id=request.user.pk)


def get_run(request: Request, run_id: uuid.UUID) -> TranscriptRun:
    run = runs_visible_to(request).filter(pk=run_id).first()
    if run is None:
        raise ApiError("not_found", "No such run.", status_code=status.HTTP_404_NOT_FOUND)
    return run


class TokenView(APIView):
    """Trade a username and password for the long-lived API token."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(request=TokenRequestSerializer, responses={200: dict})
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None:
            raise ApiError("invalid_credentials", "Wrong username or password.")
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class UploadRateThrottle(UserRateThrottle):
    """UPLOADS_PER_MINUTE per user; refused uploads answer 429 with Retry-After."""

    scope = "uploads"


class TranscribeView(APIView):
    throttle_classes = [UploadRateThrottle]

    @extend_schema(
        request={"multipart/form-data": SubmitSerializer}, responses={201: dict, 202: dict}
    )
    def post(self, request: Request) -> Response:
        if len(request.FILES.getlist("file")) > 1:
            raise ApiError("too_many_files", "Send one file per request.", field="file")
        serializer = SubmitSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 200:
            raise ApiError("invalid", "Idempotency-Key is longer than 200 characters.")
        run, created = services.run_submit(
            owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated: never anonymous
            upload=serializer.validated_data["file"],
            options=serializer.options(),
            idempotency_key=key,
        )
        run = get_run(request, run.pk)
        answer = status_for(run, created)
        headers = {"Location": f"/api/runs/{run.pk}"} if answer == status.HTTP_202_ACCEPTED else {}
        return Response(run_representation(run), status=answer, headers=headers)


def status_for(run: TranscriptRun, created: bool) -> int:
    if not created:
        return status.HTTP_200_OK
    return status.HTTP_201_CREATED if run.is_finished else status.HTTP_202_ACCEPTED


class RunListView(APIView):
    def get(self, request: Request) -> Response:
        runs = runs_visible_to(request).order_by("-created_at")
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in RunStatus.values:
                raise ApiError(
                    "invalid_choice",
                    f"status must be one of {', '.join(RunStatus.values)}.",
                    field="status",
                )
            runs = runs.filter(status=wanted)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(runs, request, view=self) or []
        return paginator.get_paginated_response([run_representation(run) for run in page])


class RunDetailView(APIView):
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        return Response(run_representation(get_run(request, run_id)))

    def delete(self, request: Request, run_id: uuid.UUID) -> Response:
        services.run_delete(run=get_run(request, run_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RunProgressView(APIView):
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        return Response(progress_object(get_run(request, run_id)))


class RunCancelView(APIView):
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        run = services.run_cancel(run=get_run(request, run_id))
        return Response(run_representation(run))


class RunRetryView(APIView):
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        run = services.run_retry(run=get_run(request, run_id))
        return Response(run_representation(run), status=status.HTTP_202_ACCEPTED)


class RunTranscriptView(APIView):
    def get(self, request: Request, run_id: uuid.UUID) -> HttpResponse:
        run = get_run(request, run_id)
        fmt = request.query_params.get("format", "txt")
        if fmt not in RENDERERS:
            raise ApiError(
                "invalid_choice",
                f"format must be one of {', '.join(RENDERERS)}.",
                field="format",
            )
        if run.status != RunStatus.SUCCEEDED:
            raise ApiError(
                "transcript_not_ready",
                f"The run is {run.status}; its transcript exists once it has succeeded.",
                status_code=status.HTTP_409_CONFLICT,
            )
        response = HttpResponse(RENDERERS[fmt](run), content_type=CONTENT_TYPES[fmt])
        stem = run.audio.original_filename.rsplit(".", 1)[0] or "transcript"
        safe_stem = "".join(ch if ch.isalnum() or ch in "-_ " else "_" for ch in stem)[:100]
        response["Content-Disposition"] = f'attachment; filename="{safe_stem}.{fmt}"'
        return response
