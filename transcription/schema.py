"""OpenAPI documentation of what the transcription API returns.

These serializers are never used to build a response: transcription.events builds the JSON
(the progress object, the run). They describe it for drf-spectacular, so keep them in step
with `progress_object` and `run_representation`; tests/test_openapi.py checks the two agree.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tasks_admin.models import JobStatus
from transcription.models import RunMode, RunStatus, Task
from transcription.serializers import STAFF_PRIORITY_RANGE, USER_PRIORITY_RANGE, SubmitSerializer

# --- Input ----------------------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.BINARY)
class UploadField(serializers.FileField):
    """A file part of a multipart body (drf-spectacular would call it a URL)."""


class SubmitRequestSerializer(SubmitSerializer):
    """The multipart upload of `POST /api/transcribe`, with the limits the API enforces."""

    file = UploadField(help_text="The audio; what it is is read from its bytes.")
    # A ChoiceField here, for the enum in the schema; SubmitSerializer checks the same list.
    model = serializers.ChoiceField(  # type: ignore[assignment]
        choices=settings.WHISPER_MODELS_ALLOWED,
        required=False,
        help_text=f"Default: {settings.WHISPER_MODEL}.",
    )
    language = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=16,
        help_text="A Whisper language code (en, de, fr…); empty: detect it. English-only "
        "models (`*.en`) take only `en`.",
    )
    task = serializers.ChoiceField(
        choices=Task.choices,
        default=Task.TRANSCRIBE,
        help_text="`translate` (into English) needs a multilingual model.",
    )
    priority = serializers.IntegerField(
        required=False,
        default=0,
        min_value=STAFF_PRIORITY_RANGE[0],
        max_value=STAFF_PRIORITY_RANGE[1],
        help_text=f"Higher goes first. Users: {USER_PRIORITY_RANGE[0]} to "
        f"{USER_PRIORITY_RANGE[1]}; staff: {STAFF_PRIORITY_RANGE[0]} to "
        f"{STAFF_PRIORITY_RANGE[1]}.",
    )
    mode = serializers.ChoiceField(
        choices=["auto", "sync", "async"],
        default="auto",
        help_text="auto: sync when the file is small and short and a sync slot is free; "
        "sync above the limits is a 400.",
    )
    callbackUrl = serializers.URLField(
        required=False, allow_blank=True, max_length=2000, help_text="An http(s) URL."
    )


class TokenAnswerSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as `Authorization: Bearer <token>`.")


# --- The progress object ------------------------------------------------------------------


class AudioSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    filename = serializers.CharField(help_text="The client's filename, sanitized; display only.")
    durationMs = serializers.IntegerField()
    sizeBytes = serializers.IntegerField()


class RunJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    jobType = serializers.CharField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    attempts = serializers.IntegerField()
    runAfter = serializers.DateTimeField(help_text="Not started before this time.")
    lastError = serializers.CharField(allow_null=True)


class RunErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField(allow_blank=True)


class RunLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    events = serializers.CharField()
    transcript = serializers.CharField()


class ProgressSerializer(serializers.Serializer):
    """The progress object: `GET /api/runs/{runId}/progress` and the `data` of run events."""

    runId = serializers.UUIDField()
    audioId = serializers.UUIDField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    mode = serializers.ChoiceField(choices=RunMode.choices)
    progress = serializers.FloatField(min_value=0, max_value=100, help_text="Percent.")
    queuePosition = serializers.IntegerField(
        min_value=0, help_text="1 is next in line; 0 when the run is not waiting in the queue."
    )
    timeElapsed = serializers.IntegerField(
        allow_null=True, help_text="Milliseconds since processing started; null before."
    )
    estimatedTimeRemaining = serializers.IntegerField(
        allow_null=True, min_value=0, help_text="Seconds; null until it can be estimated."
    )
    attempts = serializers.IntegerField(min_value=0)
    maxAttempts = serializers.IntegerField(min_value=0)
    audio = AudioSummarySerializer()
    jobs = RunJobSerializer(many=True)
    error = RunErrorSerializer(allow_null=True)
    links = RunLinksSerializer()


# --- The run --------------------------------------------------------------------------------


class RunOptionsSerializer(serializers.Serializer):
    model = serializers.CharField()
    language = serializers.CharField(allow_null=True, help_text="As asked for; null: detect.")
    task = serializers.ChoiceField(choices=Task.choices)
    wordTimestamps = serializers.BooleanField()
    vadFilter = serializers.BooleanField()
    beamSize = serializers.IntegerField()
    initialPrompt = serializers.CharField(allow_null=True)


class WordSerializer(serializers.Serializer):
    start = serializers.FloatField()
    end = serializers.FloatField()
    word = serializers.CharField(allow_blank=True)
    probability = serializers.FloatField()


class SegmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    start = serializers.FloatField(help_text="Seconds.")
    end = serializers.FloatField(help_text="Seconds.")
    text = serializers.CharField(allow_blank=True)
    words = WordSerializer(many=True, required=False, help_text="With wordTimestamps only.")


class RunSerializer(ProgressSerializer):
    """A run as the API returns it: the progress object, its options and, once it has
    succeeded, its transcript."""

    createdAt = serializers.DateTimeField()
    startedAt = serializers.DateTimeField(allow_null=True)
    finishedAt = serializers.DateTimeField(allow_null=True)
    options = RunOptionsSerializer()
    priority = serializers.IntegerField()
    callbackUrl = serializers.CharField(allow_null=True)
    eventsToken = serializers.CharField(
        help_text="A signed, read-only token for `?access_token=` on the event streams; it "
        "expires after EVENTS_TOKEN_TTL seconds."
    )
    text = serializers.CharField(required=False, allow_blank=True, help_text="Succeeded only.")
    segments = SegmentSerializer(many=True, required=False, help_text="Succeeded only.")
    language = serializers.CharField(
        required=False, allow_blank=True, help_text="Detected language; succeeded only."
    )
    languageProbability = serializers.FloatField(
        required=False, allow_null=True, help_text="Succeeded only."
    )


class RunPageSerializer(serializers.Serializer):
    """One page of runs (`?limit=&offset=`), newest first."""

    count = serializers.IntegerField(min_value=0)
    next = serializers.CharField(allow_null=True, help_text="URL of the next page.")
    previous = serializers.CharField(allow_null=True, help_text="URL of the previous page.")
    results = RunSerializer(many=True)


class TranscriptJsonSerializer(serializers.Serializer):
    """`?format=json` of the transcript endpoint."""

    runId = serializers.UUIDField()
    language = serializers.CharField(allow_blank=True)
    languageProbability = serializers.FloatField(allow_null=True)
    durationMs = serializers.IntegerField()
    text = serializers.CharField(allow_blank=True)
    segments = SegmentSerializer(many=True)


# --- The two event streams (plain Django views, added by a postprocessing hook) ------------

_SSE_DESCRIPTION = (
    "Server-Sent Events (`text/event-stream`). Every event has an `id`; reconnect with "
    "`Last-Event-ID` (or `?lastEventId=`) to get each missed event once, in order. "
    'A `heartbeat` event (`{"event": "heartbeat", "timestamp": …}`) is sent every '
    "SSE_HEARTBEAT_INTERVAL_MS. Auth: session cookie, `Authorization: Bearer`, or "
    "`?access_token=<eventsToken>` (the API token is refused in the URL)."
)


def _sse_operation(
    operation_id: str, summary: str, description: str, *, run_id: bool
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    if run_id:
        parameters.append(
            {
                "name": "run_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            }
        )
    parameters += [
        {
            "name": "access_token",
            "in": "query",
            "required": False,
            "description": "The `eventsToken` of a run (for EventSource, which sends no "
            "headers). Not the API token.",
            "schema": {"type": "string"},
        },
        {
            "name": "lastEventId",
            "in": "query",
            "required": False,
            "description": "Resume after this event id (as the `Last-Event-ID` header).",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "Resume after this event id; EventSource sends it on reconnect.",
            "schema": {"type": "integer", "minimum": 0},
        },
    ]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses: dict[str, Any] = {
        "200": {
            "description": description,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "401": {
            "description": "No credentials, or an invalid or expired events token.",
            "content": error,
        },
    }
    if run_id:
        responses["404"] = {"description": "No such run, or not yours.", "content": error}
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": _SSE_DESCRIPTION,
        "parameters": parameters,
        "tags": ["runs"],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}, {}],
        "responses": responses,
    }


def add_event_streams(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: the SSE endpoints are async Django views that
    drf-spectacular cannot see; describe them by hand."""
    paths = result.setdefault("paths", {})
    paths["/api/runs/events"] = {
        "get": _sse_operation(
            "streamUserEvents",
            "Live events of all your runs (staff: all runs)",
            '`snapshot` (`{"runs": [progress object…]}`, the active runs, on connect), '
            "then `update` and `done` (the progress object of one run plus `event`), and "
            "`heartbeat`.",
            run_id=False,
        )
    }
    paths["/api/runs/{run_id}/events"] = {
        "get": _sse_operation(
            "streamRunEvents",
            "Live events of one run",
            "`init` (the progress object, first on every connect), `update` (with "
            "`newSegments`), `error` (an attempt failed: `attempt`, `willRetry`, `retryAt`), "
            "`done` (terminal; with `text` when succeeded; the stream then ends) and "
            "`heartbeat`. Each `data` is the progress object plus `event`.",
            run_id=True,
        )
    }
    result["paths"] = dict(sorted(paths.items()))
    return result
