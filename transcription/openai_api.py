"""OpenAI's audio API under /v1/ (issue 17), on top of the same runs, jobs and events.

Programs that already speak `POST /v1/audio/transcriptions` (the official `openai` SDKs and
the clients built like them) work against LingoLoop with only their base URL and key changed.
Nothing here is a second pipeline:

* A request is read by `OpenAIFormSerializer` (OpenAI's parameter names), translated into a
  LingoLoop upload and validated again by the API's own `SubmitSerializer`, then submitted by
  `services.run_submit` like any upload: a short file is transcribed in the request, a long
  one queued for the workers. Either way it is a run of the caller's, on the runs page, in the
  admin and the metrics, with its events and exports.
* A queued run is waited for on its event channel (`lingoloop.eventhub.Subscription`), in the
  event loop: the web process waits, it does not transcribe, and a waiting client costs no
  thread. A client that goes away does not cancel the run unless OPENAI_CANCEL_ON_DISCONNECT.
* `stream=true` answers Server-Sent Events in OpenAI's shape, fed by the run's `newSegments`.
* Errors are OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) with the
  statuses the SDK maps to its exception classes: a file that is not audio is a 400
  (`BadRequestError`), not the 415 of /api/.

The parameters LingoLoop cannot honour are refused by name (`temperature` above 0, `include[]`,
`known_speaker_references[]`, a `chunking_strategy` other than `auto`); `prompt` is
faster-whisper's initial prompt, as it is Whisper's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lingoloop.errors import ApiError, api_exception_handler
from lingoloop.eventhub import Subscription, current_id, db_call, payload
from lingoloop.streaming import EventStreamResponse
from transcription import catalogue, services
from transcription.api import refuse_more_than_one_file
from transcription.events import run_channel
from transcription.exports import CONTENT_TYPES, render
from transcription.languages import LANGUAGE_NAMES
from transcription.models import Channels, RunStatus, TranscriptRun
from transcription.serializers import SubmitSerializer

logger = logging.getLogger(__name__)

# OpenAI's name for "the model this server offers": the default model here.
DEFAULT_MODEL_ALIAS = "whisper-1"
FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
STREAMED_FORMATS = ("json", "text", "diarized_json")

# --- Errors ----------------------------------------------------------------------------------

# The LingoLoop field an error names, as the OpenAI parameter the client sent.
PARAMS = {
    "initialPrompt": "prompt",
    "wordTimestamps": "timestamp_granularities[]",
    "speakerNames": "known_speaker_names[]",
    "channels": "response_format",
    "task": "model",
}
# The SDK raises BadRequestError for 400 and a bare APIStatusError for 415/422: a file that
# is not audio, or has no audio stream, is a bad request to an OpenAI client.
STATUSES = {415: 400, 422: 400}
TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def error_type(status_code: int) -> str:
    if status_code >= 500:
        return "server_error"
    return TYPES.get(status_code, "invalid_request_error")


def _body(message: str, code: str, param: str | None, status_code: int) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": error_type(status_code),
            "param": param,
            "code": code,
        }
    }


def error_body(error: ApiError) -> dict[str, Any]:
    """An `ApiError` in OpenAI's shape (lingoloop/server.py's 413 under /v1/)."""
    field = PARAMS.get(error.field, error.field) if error.field else None
    return _body(error.message, error.code, field, error.status_code)


def openai_error(
    message: str,
    *,
    code: str,
    param: str | None = None,
    status_code: int = 400,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    status_code = STATUSES.get(status_code, status_code)
    response = JsonResponse(_body(message, code, param, status_code), status=status_code)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def as_openai_error(response: HttpResponseBase, data: dict[str, Any]) -> JsonResponse:
    """An answer in the API's error shape, in OpenAI's instead (its headers kept)."""
    error = data["error"]
    field = error.get("field")
    param = PARAMS.get(field, field) if field else None
    headers = {
        name: value
        for name, value in response.items()
        if name.lower() in ("retry-after", "www-authenticate")
    }
    return openai_error(
        error["message"],
        code=error["code"],
        param=param,
        status_code=response.status_code,
        headers=headers,
    )


def exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponseBase | None:
    """The API's exception handler, answering in OpenAI's error shape."""
    response = api_exception_handler(exc, context)
    if response is None:
        return None
    return as_openai_error(response, response.data)


# --- The request -----------------------------------------------------------------------------


class OpenAIFormSerializer(serializers.Serializer):
    """The multipart form of `POST /v1/audio/transcriptions` and `/v1/audio/translations`,
    as the `openai` package sends it (list parameters as `name[]`)."""

    KNOWN = {
        "file",
        "model",
        "language",
        "prompt",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
        "stream",
        "chunking_strategy",
        "include[]",
        "known_speaker_names[]",
        "known_speaker_references[]",
    }

    model = serializers.CharField(max_length=200)
    language = serializers.CharField(required=False, allow_blank=True, default="")
    prompt = serializers.CharField(required=False, allow_blank=True, default="")
    response_format = serializers.ChoiceField(choices=FORMATS, default="json")
    temperature = serializers.FloatField(required=False, default=0.0)
    stream = serializers.BooleanField(required=False, default=False)
    chunking_strategy = serializers.CharField(required=False, default="auto")

    def __init__(self, *args: Any, task: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task = task

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        unknown = sorted(set(data) - self.KNOWN)
        if unknown:
            raise serializers.ValidationError(
                {unknown[0]: f"LingoLoop does not know the parameter {unknown[0]!r}."},
                code="unknown_parameter",
            )
        values = super().to_internal_value(data)
        values["granularities"] = data.getlist("timestamp_granularities[]")
        values["speaker_names"] = data.getlist("known_speaker_names[]")
        values["include"] = data.getlist("include[]")
        values["references"] = data.getlist("known_speaker_references[]")
        return values

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        refuse = _refusal(attrs, self.task)
        if refuse is not None:
            param, message = refuse
            raise serializers.ValidationError({param: message}, code="unsupported_parameter")
        return attrs

    def lingoloop_upload(self, file: Any) -> dict[str, Any]:
        """The same request as `POST /api/transcribe` fields."""
        data = self.validated_data
        model = data["model"]
        diarized = data["response_format"] == "diarized_json"
        return {
            "file": file,
            "model": settings.WHISPER_MODEL if model == DEFAULT_MODEL_ALIAS else model,
            "language": data["language"],
            "task": self.task,
            "initialPrompt": data["prompt"],
            "wordTimestamps": "word" in data["granularities"],
            "channels": Channels.SEPARATE if diarized else Channels.MIX,
            "speakerNames": ",".join(data["speaker_names"]),
            "mode": "auto",
        }

    def wants(self) -> Wants:
        data = self.validated_data
        return Wants(
            task=self.task,
            format=data["response_format"],
            words="word" in data["granularities"],
            segments="segment" in data["granularities"] or not data["granularities"],
            stream=data["stream"],
        )


def _refusal(attrs: dict[str, Any], task: str) -> tuple[str, str] | None:
    """(parameter, why) for a request LingoLoop cannot answer as asked; None when it can."""
    if attrs["temperature"] != 0:
        return (
            "temperature",
            "LingoLoop decodes at temperature 0 and raises it by itself only where the text "
            "fails its checks (faster-whisper's fallback); other temperatures are not offered.",
        )
    if attrs["chunking_strategy"] != "auto":
        return (
            "chunking_strategy",
            "Only `auto` is offered: long recordings are cut at silences by the server.",
        )
    if attrs["include"]:
        return ("include[]", "Log probabilities (include[]=logprobs) are not offered.")
    if attrs["references"]:
        return (
            "known_speaker_references[]",
            "Voices are not matched to samples here: with response_format=diarized_json each "
            "channel of the recording is one speaker, named by known_speaker_names[].",
        )
    unknown = sorted(set(attrs["granularities"]) - {"segment", "word"})
    if unknown:
        return ("timestamp_granularities[]", f"Unknown granularity {unknown[0]!r}.")
    if attrs["granularities"] and attrs["response_format"] != "verbose_json":
        return (
            "timestamp_granularities[]",
            "Timestamp granularities go with response_format=verbose_json.",
        )
    if attrs["stream"] and attrs["response_format"] not in STREAMED_FORMATS:
        return (
            "stream",
            f"response_format={attrs['response_format']} is not streamed; stream "
            f"{', '.join(STREAMED_FORMATS)}.",
        )
    if task == "translate" and attrs["response_format"] == "diarized_json":
        return ("response_format", "Translations have no diarized_json.")
    if attrs["speaker_names"] and attrs["response_format"] != "diarized_json":
        return ("known_speaker_names[]", "Speaker names go with response_format=diarized_json.")
    if any("," in name for name in attrs["speaker_names"]):
        return ("known_speaker_names[]", "A speaker name may not hold a comma.")
    return None


@dataclass(frozen=True)
class Wants:
    """How the client wants its answer."""

    task: str
    format: str
    words: bool
    segments: bool
    stream: bool


class Submitted(HttpResponse):
    """Not sent: what the submitting view hands the waiting view (the run to answer for)."""

    def __init__(self, run_id: uuid.UUID, wants: Wants) -> None:
        super().__init__(status=status.HTTP_202_ACCEPTED)
        self.run_id = run_id
        self.wants = wants


class _SubmitView(APIView):
    """The upload, as a DRF view: authentication, CSRF for the session, parsing, the
    API's limits and refusals (in OpenAI's error shape), then `services.run_submit`."""

    schema = None

    task = "transcribe"
    parser_classes = [MultiPartParser, FormParser]

    def get_exception_handler(self) -> Callable[..., Any]:
        return exception_handler

    def post(self, request: Request) -> HttpResponseBase:
        refuse_more_than_one_file(request)
        form = OpenAIFormSerializer(data=request.data, task=self.task)
        form.is_valid(raise_exception=True)
        file = request.FILES.get("file")
        if file is None:
            raise serializers.ValidationError({"file": "No file was submitted."}, code="required")
        upload = SubmitSerializer(data=form.lingoloop_upload(file), context={"request": request})
        upload.is_valid(raise_exception=True)
        run, _ = services.run_submit(
            owner=request.user,  # type: ignore[arg-type]  # IsAuthenticated: never anonymous
            upload=upload.validated_data["file"],
            options=upload.options(),
        )
        return Submitted(run.pk, form.wants())


class _TranscriptionView(_SubmitView):
    task = "transcribe"


class _TranslationView(_SubmitView):
    task = "translate"


def _submit(view: Callable[[HttpRequest], HttpResponseBase], request: HttpRequest) -> Any:
    response = view(request)
    if isinstance(response, Response):
        response.render()
    return response


# --- Waiting for the run ---------------------------------------------------------------------


def _read_run(run_id: uuid.UUID) -> TranscriptRun:
    return TranscriptRun.objects.select_related("audio").get(pk=run_id)


def _opening(run_id: uuid.UUID) -> tuple[int, TranscriptRun]:
    # The id first, the run second: an event sent in between is in both, never in neither.
    start_id = current_id(run_channel(run_id))
    return start_id, _read_run(run_id)


async def run_progress(run_id: uuid.UUID) -> AsyncIterator[list[dict[str, Any]] | TranscriptRun]:
    """The run's new segments as they are announced (lists, each segment once, in order),
    then the finished run; an empty list now and then while nothing happens (a heartbeat)."""
    start_id, run = await db_call(_opening, run_id)
    sent = len(run.segments)
    if sent:
        yield list(run.segments)
    if run.is_finished:
        yield run
        return
    heartbeat = settings.SSE_HEARTBEAT_INTERVAL_MS / 1000
    async with Subscription(run_channel(run_id), start_id) as subscription:
        pending = await subscription.catch_up()
        while True:
            for _, event in pending:
                data = payload(event)
                new = [s for s in data.get("newSegments") or [] if s.get("id", 0) >= sent]
                if new:
                    sent = new[-1]["id"] + 1
                    yield new
                if event.type == "done":
                    yield await db_call(_read_run, run_id)
                    return
            if not await subscription.wait(heartbeat):
                yield []
            pending = await subscription.next_events()


async def finished_run(run_id: uuid.UUID) -> TranscriptRun:
    async for item in run_progress(run_id):
        if isinstance(item, TranscriptRun):
            return item
    raise AssertionError("the run's events ended before it finished")


def _cancel_abandoned(run_id: uuid.UUID) -> None:
    run = TranscriptRun.objects.get(pk=run_id)
    if not run.is_finished:
        logger.info("run %s: its /v1/ client went away; cancelling it", run_id)
        services.run_cancel(run=run)


# --- The answer ------------------------------------------------------------------------------


def _seconds(run: TranscriptRun) -> float:
    return round(run.audio.duration_ms / 1000, 3)


def _usage(run: TranscriptRun) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(run.audio.duration_ms / 1000)}


def _language_name(run: TranscriptRun) -> str:
    code = run.detected_language or run.language or "en"
    return LANGUAGE_NAMES.get(code, code).lower()


def _verbose(run: TranscriptRun, wants: Wants) -> dict[str, Any]:
    """OpenAI's `verbose_json`. Segments carry what LingoLoop keeps of them: their decoding
    statistics (avg_logprob, compression_ratio, no_speech_prob) and tokens are not kept."""
    segments = run.corrected_segments()
    answer: dict[str, Any] = {
        "task": wants.task,
        "language": _language_name(run),
        "duration": _seconds(run),
        "text": run.text,
    }
    if wants.segments:
        answer["segments"] = [
            {
                "id": segment["id"],
                "seek": round(segment["start"] * 100),
                "start": segment["start"],
                "end": segment["end"],
                "text": segment["text"],
                "tokens": [],
                "temperature": 0.0,
            }
            for segment in segments
        ]
    if wants.words:
        answer["words"] = [
            {"word": word["word"].strip(), "start": word["start"], "end": word["end"]}
            for segment in segments
            for word in segment.get("words", [])
        ]
    answer["usage"] = _usage(run)
    return answer


def _diarized_segment(segment: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "transcript.text.segment",
        "id": f"seg_{segment['id']}",
        "start": segment["start"],
        "end": segment["end"],
        "text": segment["text"],
        "speaker": segment.get("speaker", ""),
    }


def _diarized(run: TranscriptRun) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "duration": _seconds(run),
        "text": run.text,
        "segments": [_diarized_segment(segment) for segment in run.corrected_segments()],
        "usage": _usage(run),
    }


def _failure(run: TranscriptRun) -> ApiError:
    """Why a finished run has no transcript: for the answer, or the stream's last event."""
    if run.status == RunStatus.CANCELLED:
        return ApiError(
            "run_cancelled", "The run was cancelled before it finished.", status_code=409
        )
    # The user's file (or request) is at fault, or the server.
    client_errors = {
        "undecodable",
        "audio_too_long",
        "audio_missing",
        "not_multichannel",
        "unknown_language",
    }
    return ApiError(
        run.error_code or "run_failed",
        run.error_message or "The transcription failed.",
        status_code=400 if run.error_code in client_errors else 500,
    )


def answer(run: TranscriptRun, wants: Wants) -> HttpResponse:
    """The finished run in the format asked for."""
    if run.status != RunStatus.SUCCEEDED:
        failure = _failure(run)
        return openai_error(failure.message, code=failure.code, status_code=failure.status_code)
    response: HttpResponse
    if wants.format == "json":
        response = JsonResponse({"text": run.text, "usage": _usage(run)})
    elif wants.format == "verbose_json":
        response = JsonResponse(_verbose(run, wants))
    elif wants.format == "diarized_json":
        response = JsonResponse(_diarized(run))
    elif wants.format == "text":
        response = HttpResponse(run.text + "\n", content_type=CONTENT_TYPES["txt"])
    else:
        response = HttpResponse(
            render(run.transcript(), wants.format), content_type=CONTENT_TYPES[wants.format]
        )
    response["X-LingoLoop-Run"] = str(run.pk)
    return response


def _event(data: dict[str, Any]) -> str:
    return "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"


async def _openai_stream(run_id: uuid.UUID, wants: Wants) -> AsyncIterator[str]:
    """`transcript.text.delta` for each new segment (and `transcript.text.segment` for
    diarized_json), then `transcript.text.done` with the whole text; a run that fails ends
    the stream with an error event, which the SDK raises as APIError."""
    first = True
    async for item in run_progress(run_id):
        if isinstance(item, TranscriptRun):
            if item.status != RunStatus.SUCCEEDED:
                yield _event(error_body(_failure(item)))
                return
            yield _event({"type": "transcript.text.done", "text": item.text, "usage": _usage(item)})
            return
        if not item:
            yield ": keep-alive\n\n"
            continue
        for segment in item:
            text = segment["text"].strip()
            if wants.format == "diarized_json":
                yield _event(_diarized_segment(segment))
            if text:
                yield _event(
                    {"type": "transcript.text.delta", "delta": text if first else f" {text}"}
                )
                first = False


async def _respond(request: HttpRequest, view: Callable[..., HttpResponseBase]) -> HttpResponseBase:
    submitted = await sync_to_async(_submit)(view, request)
    if not isinstance(submitted, Submitted):
        return submitted  # type: ignore[no-any-return]
    run_id, wants = submitted.run_id, submitted.wants
    if wants.stream:
        response = EventStreamResponse(_openai_stream(run_id, wants))
        response["X-LingoLoop-Run"] = str(run_id)
        return response
    try:
        run = await finished_run(run_id)
    except asyncio.CancelledError:
        if settings.OPENAI_CANCEL_ON_DISCONNECT:
            await asyncio.shield(db_call(_cancel_abandoned, run_id))
        raise
    return await db_call(answer, run, wants)


_transcription_view = _TranscriptionView.as_view()
_translation_view = _TranslationView.as_view()


@csrf_exempt
async def transcriptions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return openai_error("Use POST.", code="method_not_allowed", status_code=405)
    return await _respond(request, _transcription_view)


@csrf_exempt
async def translations(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return openai_error("Use POST.", code="method_not_allowed", status_code=405)
    return await _respond(request, _translation_view)


def model_entries() -> list[dict[str, Any]]:
    """OpenAI's model objects for the models this server can load, `whisper-1` (its default
    model) first."""
    owned_by = "lingoloop"
    return [
        {"id": DEFAULT_MODEL_ALIAS, "object": "model", "created": 0, "owned_by": owned_by},
        *(
            {"id": model.name, "object": "model", "created": 0, "owned_by": owned_by}
            for model in catalogue.available()
        ),
    ]


class ModelsView(APIView):
    """`GET /v1/models`."""

    schema = None  # OpenAI documents /v1/; LingoLoop's document is /api/'s

    def get_exception_handler(self) -> Callable[..., Any]:
        return exception_handler

    def get(self, request: Request) -> JsonResponse:
        return JsonResponse({"object": "list", "data": model_entries()})


class ModelView(ModelsView):
    """`GET /v1/models/{model}`."""

    def get(self, request: Request, model: str) -> JsonResponse:  # type: ignore[override]
        found = next((entry for entry in model_entries() if entry["id"] == model), None)
        if found is None:
            return openai_error(
                f"The model {model!r} does not exist here.", code="model_not_found", status_code=404
            )
        return JsonResponse(found)


def not_found(request: HttpRequest) -> JsonResponse:
    return openai_error(
        f"Unknown request URL: {request.method} {request.path}.",
        code="unknown_url",
        status_code=404,
    )
