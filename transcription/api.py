"""The REST API (DESIGN.md, "HTTP API"). Views parse, call one service, shape the answer."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from lingoloop.errors import ApiError
from lingoloop.login_throttle import record_api_login, too_many_attempts
from lingoloop.openapi import error_responses
from lingoloop.pagination import BoundedLimitOffsetPagination
from transcription import catalogue, services
from transcription.detection import detect_language
from transcription.exports import CONTENT_TYPES, LEVELS, RENDERERS, VERSIONS, render
from transcription.models import RunStatus, TranscriptRun
from transcription.queries import filter_runs, valid_status
from transcription.representations import (
    DetectionSerializer,
    ModelListSerializer,
    ProgressSerializer,
    RunPageSerializer,
    RunSerializer,
    SegmentAnswerSerializer,
    TokenAnswerSerializer,
    TranscriptJsonSerializer,
    progress_object,
    run_context,
    run_object,
    with_relations,
)
from transcription.serializers import (
    DetectLanguageRequestSerializer,
    DetectLanguageSerializer,
    SegmentCorrectionSerializer,
    SubmitRequestSerializer,
    SubmitSerializer,
    TokenRequestSerializer,
)


def runs_visible_to(request: Request) -> QuerySet[TranscriptRun]:
    """Every lookup goes through here: someone else's run is simply not found (404)."""
    runs = with_relations(TranscriptRun.objects.all())
    return runs if request.user.is_staff else runs.filter(owner_id=request.user.pk)


def refuse_more_than_one_file(request: Request) -> None:
    """An upload endpoint takes one `file` part: a second one would be silently ignored."""
    if len(request.FILES.getlist("file")) > 1:
        raise ApiError("too_many_files", "Send one file per request.", field="file")


def get_run(request: Request, run_id: uuid.UUID) -> TranscriptRun:
    run = runs_visible_to(request).filter(pk=run_id).first()
    if run is None:
        raise ApiError("not_found", "No such run.", status_code=status.HTTP_404_NOT_FOUND)
    return run


class TokenView(APIView):
    """Trade a username and password for the long-lived API token.

    Failed logins are counted like those of the login pages (lingoloop/login_throttle.py).
    """

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="obtainToken",
        tags=["auth"],
        request=TokenRequestSerializer,
        parameters=[
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[429],
                description="Seconds until logins from this address or for this user are "
                "accepted again.",
            ),
        ],
        responses={
            200: TokenAnswerSerializer,
            **error_responses(
                400,
                401,
                415,
                429,
                e400="A missing or malformed field.",
                e401="Wrong username or password (`invalid_credentials`).",
                e429="Too many failed logins (`too_many_login_attempts`): see `Retry-After`.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        credentials = {
            "username": serializer.validated_data["username"],
            "password": serializer.validated_data["password"],
        }
        user = authenticate(request, **credentials)
        if user is None:
            # django-axes marks the request when this failure reached the limit, or when the
            # login was refused unchecked because an earlier one had.
            if getattr(request, "axes_locked_out", False):
                raise too_many_attempts(request, {"username": credentials["username"]})
            raise ApiError(
                "invalid_credentials",
                "Wrong username or password.",
                status_code=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": "Bearer"},
            )
        record_api_login(request, user.get_username())
        token, _ = Token.objects.get_or_create(user=user)
        return Response(TokenAnswerSerializer(token).data)


class ModelListView(APIView):
    @extend_schema(
        operation_id="listModels",
        tags=["models"],
        responses={200: ModelListSerializer, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        """The Whisper models this server can load, the default first: what `model` takes
        everywhere, with the languages each knows and whether it translates."""
        default = settings.WHISPER_MODEL
        answer = ModelListSerializer(
            {"default": default, "models": catalogue.available()}, context={"default": default}
        )
        return Response(answer.data)


class DetectLanguageView(APIView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "detect-language"

    @extend_schema(
        operation_id="detectLanguage",
        tags=["models"],
        request={"multipart/form-data": DetectLanguageRequestSerializer},
        responses={
            200: DetectionSerializer,
            **error_responses(
                400,
                401,
                413,
                415,
                422,
                429,
                503,
                e503="Every slot that could listen is busy: see `Retry-After`.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        """Which language an upload speaks, at once, from its first 30 seconds: the five most
        likely with their probabilities. No run is made, nothing is kept, and it never waits
        for the queue (a worker need not be running)."""
        refuse_more_than_one_file(request)
        serializer = DetectLanguageSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        detection = detect_language(
            upload=serializer.validated_data["file"],
            model_name=serializer.validated_data.get("model") or None,
        )
        return Response(DetectionSerializer.of(detection))


class TranscribeView(APIView):
    @extend_schema(
        operation_id="transcribe",
        tags=["runs"],
        request={"multipart/form-data": SubmitRequestSerializer},
        parameters=[
            OpenApiParameter(
                "Location",
                str,
                OpenApiParameter.HEADER,
                required=True,
                response=[202],
                description="The queued run: `/api/runs/{runId}`.",
            ),
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[429],
                description="Seconds to wait before uploading again.",
            ),
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "maxLength": 200, "pattern": "^[\\x20-\\x7e]*$"},
                OpenApiParameter.HEADER,
                description="The same key from the same user returns the run it first "
                "created (200) instead of a new one.",
            ),
        ],
        responses={
            200: OpenApiResponse(RunSerializer, "The run this Idempotency-Key created before."),
            201: OpenApiResponse(RunSerializer, "Transcribed at once (sync): the finished run."),
            202: OpenApiResponse(
                RunSerializer, "Queued (async): `Location` names the run; follow its events."
            ),
            **error_responses(
                400,
                401,
                403,
                413,
                415,
                422,
                429,
                507,
                e415="The file is not audio, or the body is not multipart/form-data.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        refuse_more_than_one_file(request)
        serializer = SubmitSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and (len(key) > 200 or not key.isprintable() or not key.isascii()):
            raise ApiError(
                "invalid",
                "Idempotency-Key must be at most 200 printable ASCII characters.",
                field="Idempotency-Key",
            )
        run, created = services.run_submit(
            owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated: never anonymous
            upload=serializer.validated_data["file"],
            options=serializer.options(),
            idempotency_key=key,
        )
        run = get_run(request, run.pk)
        answer = status_for(run, created)
        headers = {"Location": f"/api/runs/{run.pk}"} if answer == status.HTTP_202_ACCEPTED else {}
        return Response(run_object(run), status=answer, headers=headers)


def status_for(run: TranscriptRun, created: bool) -> int:
    if not created:
        return status.HTTP_200_OK
    return status.HTTP_201_CREATED if run.is_finished else status.HTTP_202_ACCEPTED


class RunListView(APIView):
    @extend_schema(
        operation_id="listRuns",
        tags=["runs"],
        parameters=[
            OpenApiParameter(
                "status", str, enum=RunStatus.values, description="Only runs with this status."
            ),
            OpenApiParameter(
                "q",
                str,
                description="Only runs whose file name or transcript contains every word of "
                "this (case-insensitive; the first 10 words of the first 200 characters). "
                "The runs page searches the same way.",
            ),
            OpenApiParameter(
                "limit",
                int,
                description="Page size (default 50, at most 200); an unusable value means 50.",
            ),
            OpenApiParameter("offset", int, description="Runs to skip; an unusable value means 0."),
        ],
        responses={200: RunPageSerializer, **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        wanted = request.query_params.get("status")
        if wanted and not valid_status(wanted):
            raise ApiError(
                "invalid_choice",
                f"status must be one of {', '.join(RunStatus.values)}.",
                field="status",
            )
        runs = filter_runs(
            runs_visible_to(request).order_by("-created_at"),
            status=wanted,
            q=request.query_params.get("q"),
        )
        paginator = BoundedLimitOffsetPagination()
        page = paginator.paginate_queryset(runs, request, view=self) or []
        answer = {
            "count": paginator.count,
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "results": page,
        }
        return Response(RunPageSerializer(answer, context=run_context(page)).data)


class RunDetailView(APIView):
    @extend_schema(
        operation_id="getRun",
        tags=["runs"],
        responses={200: RunSerializer, **error_responses(401, 404)},
    )
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        return Response(run_object(get_run(request, run_id)))

    @extend_schema(
        operation_id="deleteRun",
        tags=["runs"],
        description="A finished run and, once no other run uses it, its audio.",
        responses={
            204: None,
            **error_responses(401, 403, 404, 409, e409="The run is still queued or processing."),
        },
    )
    def delete(self, request: Request, run_id: uuid.UUID) -> Response:
        services.run_delete(run=get_run(request, run_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RunProgressView(APIView):
    @extend_schema(
        operation_id="getRunProgress",
        tags=["runs"],
        description="The progress object: the polling fallback to the event stream.",
        responses={200: ProgressSerializer, **error_responses(401, 404)},
    )
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        return Response(progress_object(get_run(request, run_id)))


class RunActionView(APIView):
    """POST: one service applied to the run (`action`); the answer is the run after it, with
    status `answer`, or a 409 when the run's state does not allow it (`conflict` says when)."""

    action: Callable[..., TranscriptRun]
    answer: int = status.HTTP_200_OK
    operation_id: str
    conflict: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        schema = extend_schema(
            operation_id=cls.operation_id,
            tags=["runs"],
            description=cls.__doc__,
            request=None,
            responses={
                cls.answer: RunSerializer,
                **error_responses(401, 403, 404, 409, e409=cls.conflict),
            },
        )
        extend_schema_view(post=schema)(cls)

    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        run = type(self).action(run=get_run(request, run_id))
        return Response(run_object(run), status=self.answer)


class RunCancelView(RunActionView):
    """Queued: cancelled at once. Processing: stops at the next segment."""

    action = staticmethod(services.run_cancel)
    operation_id = "cancelRun"
    conflict = "The run has already finished."


class RunRetryView(RunActionView):
    """A failed or cancelled run queued again, with fresh attempts."""

    action = staticmethod(services.run_retry)
    answer = status.HTTP_202_ACCEPTED
    operation_id = "retryRun"
    conflict = "The run is not failed or cancelled, or its audio was purged."


class FormatParameterNegotiation(DefaultContentNegotiation):
    """`?format=` picks the transcript's type, not `Accept`: a client that accepts only
    `text/vtt` gets its VTT file, not a 406. Refusals are JSON whatever it accepts."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))  # JSONRenderer: the API renders nothing else
        return renderer, renderer.media_type


def _choice(request: Request, name: str, choices: Iterable[str], default: str) -> str:
    value = request.query_params.get(name, default)
    if value not in choices:
        raise ApiError("invalid_choice", f"{name} must be one of {', '.join(choices)}.", field=name)
    return value


class RunTranscriptView(APIView):
    content_negotiation_class = FormatParameterNegotiation

    @extend_schema(
        operation_id="getRunTranscript",
        tags=["runs"],
        description="The transcript of a succeeded run as a file (`Content-Disposition: "
        "attachment`), with the owner's corrections unless `version=original`.",
        parameters=[
            OpenApiParameter("format", str, enum=list(RENDERERS), default="txt"),
            OpenApiParameter(
                "version",
                str,
                enum=list(VERSIONS),
                default="edited",
                description="`edited`: with the owner's corrections of segments; "
                "`original`: as the model made it.",
            ),
            OpenApiParameter(
                "level",
                str,
                enum=list(LEVELS),
                default="segment",
                description="`word`: one cue (srt, vtt) or row (tsv) per word, for runs "
                "transcribed with wordTimestamps (else 409); a corrected segment stays one "
                "cue. txt and json are the same at both levels (json segments carry their "
                "words).",
            ),
        ],
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, "The transcript file."),
            (200, "application/x-subrip"): OpenApiTypes.STR,
            (200, "text/vtt"): OpenApiTypes.STR,
            (200, "text/tab-separated-values"): OpenApiTypes.STR,
            (200, "application/json"): TranscriptJsonSerializer,
            **error_responses(
                400,
                401,
                404,
                409,
                e409="The run has not succeeded, or `level=word` for a run without word "
                "timestamps.",
            ),
        },
    )
    def get(self, request: Request, run_id: uuid.UUID) -> HttpResponse:
        run = get_run(request, run_id)
        fmt = _choice(request, "format", RENDERERS, "txt")
        version = _choice(request, "version", VERSIONS, "edited")
        level = _choice(request, "level", LEVELS, "segment")
        if run.status != RunStatus.SUCCEEDED:
            raise ApiError(
                "transcript_not_ready",
                f"The run is {run.status}; its transcript exists once it has succeeded.",
                status_code=status.HTTP_409_CONFLICT,
            )
        if level == "word" and not run.word_timestamps:
            raise ApiError(
                "no_word_timestamps",
                "The run was transcribed without word timestamps: only level=segment exists.",
                field="level",
                status_code=status.HTTP_409_CONFLICT,
            )
        transcript = run.transcript(original=version == "original")
        response = HttpResponse(render(transcript, fmt, level), content_type=CONTENT_TYPES[fmt])
        stem = run.audio.original_filename.rsplit(".", 1)[0] or "transcript"
        safe_stem = "".join(ch if ch.isalnum() or ch in "-_ " else "_" for ch in stem)[:100]
        name = [safe_stem]
        if version == "original":
            name.append("original")
        if level == "word" and fmt in ("srt", "vtt", "tsv"):
            name.append("words")
        response["Content-Disposition"] = f'attachment; filename="{".".join(name)}.{fmt}"'
        return response


class RunSegmentView(APIView):
    """One segment of a succeeded run's transcript, corrected by its owner. The correction is
    kept beside the model's text, which stays as it was."""

    def _owned_run(self, request: Request, run_id: uuid.UUID) -> TranscriptRun:
        run = get_run(request, run_id)
        if run.owner_id != request.user.pk:  # staff see other people's runs, but not edit them
            raise ApiError(
                "permission_denied",
                "Only the run's owner can correct its transcript.",
                status_code=status.HTTP_403_FORBIDDEN,
            )
        return run

    def _answer(self, change: Callable[[], dict[str, Any]]) -> Response:
        try:
            return Response(change())
        except services.NoSuchSegment:
            raise ApiError(
                "not_found",
                "The transcript has no such segment.",
                field="segment_id",
                status_code=status.HTTP_404_NOT_FOUND,
            ) from None

    @extend_schema(
        operation_id="correctRunSegment",
        tags=["runs"],
        description="Correct the text of one segment (its `id`). The run's `text` and "
        "`segments` and every transcript format show the correction from then on; "
        "`version=original` and the segment's `originalText` keep the model's. The model's "
        "own text removes the correction. No event or webhook is sent.",
        request=SegmentCorrectionSerializer,
        responses={
            200: SegmentAnswerSerializer,
            **error_responses(
                400,
                401,
                403,
                404,
                409,
                415,
                e403="Not the run's owner, or a session request without its CSRF token.",
                e404="No such run, not yours, or no such segment.",
                e409="The run has not succeeded.",
            ),
        },
    )
    def patch(self, request: Request, run_id: uuid.UUID, segment_id: int) -> Response:
        run = self._owned_run(request, run_id)
        serializer = SegmentCorrectionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        text = serializer.validated_data.get("text")
        return self._answer(
            lambda: services.segment_correct(run=run, segment_id=segment_id, text=text)
        )

    @extend_schema(
        operation_id="revertRunSegment",
        tags=["runs"],
        description="Drop the correction of one segment: the model's text again.",
        responses={
            200: SegmentAnswerSerializer,
            **error_responses(
                401,
                403,
                404,
                409,
                e403="Not the run's owner, or a session request without its CSRF token.",
                e404="No such run, not yours, or no such segment.",
                e409="The run has not succeeded.",
            ),
        },
    )
    def delete(self, request: Request, run_id: uuid.UUID, segment_id: int) -> Response:
        run = self._owned_run(request, run_id)
        return self._answer(lambda: services.segment_revert(run=run, segment_id=segment_id))
