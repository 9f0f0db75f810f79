"""What the transcription API answers, in one place: DRF output serializers.

They build every JSON body of the API (the progress object, the run, a page of runs, the
transcript JSON, the token answer) and the `data` of every run event, and drf-spectacular
documents the API from them: the shape is written once. DESIGN.md ("HTTP API", "Events") is
the contract they keep.

Whatever a serializer needs beyond the run's own rows (queue positions, worker processes,
recent speed, events tokens) is read once for all the runs of an answer and handed over in
the serializer's context (`progress_context`, `run_context`): a page of runs costs the same
few queries whatever it holds. Runs come with their audio and jobs (`with_relations`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any, ClassVar

from django.db.models import QuerySet, prefetch_related_objects
from django.urls import get_script_prefix, get_urlconf, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tasks_admin.models import JobStatus
from transcription.models import (
    Channels,
    QueueSnapshot,
    RunMode,
    RunStatus,
    Task,
    TranscriptRun,
)
from transcription.tokens import events_token_for


def with_relations(runs: QuerySet[TranscriptRun]) -> QuerySet[TranscriptRun]:
    """What the serializers read of a run besides its own row, in two queries for any number."""
    return runs.select_related("audio").prefetch_related("jobs")


# --- Fields ---------------------------------------------------------------------------------


class UtcDateTimeField(serializers.DateTimeField):
    """ISO 8601 in UTC with a Z, whatever time zone is active."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)


@extend_schema_field(serializers.CharField(allow_null=True))
class BlankAsNullField(serializers.Field[str, str, str | None, Any]):
    """A text column that is "" when unset, answered as null."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    def to_representation(self, value: str) -> str | None:
        return value or None


@extend_schema_field(serializers.FloatField(min_value=0, max_value=100, help_text="Percent."))
class PercentField(serializers.Field[float, float, float, Any]):
    def to_representation(self, value: float) -> float:
        return round(value, 1)


# Stands for the run's id in a resolved path; no real run has the nil UUID.
_ANY_RUN = uuid.UUID(int=0)


@extend_schema_field(OpenApiTypes.STR)
class RunUrlField(serializers.Field[Any, Any, str, Any]):
    """The path of one of the run's endpoints: `/api/runs/{runId}/…`.

    The URL conf is resolved once per endpoint (and script prefix), not once per run: three
    `reverse()` calls per run were a quarter of the time a page of runs took to serialize.
    """

    _paths: ClassVar[dict[tuple[str, str, object], str]] = {}

    def __init__(self, view_name: str, **kwargs: Any) -> None:
        self.view_name = view_name
        super().__init__(source="pk", **kwargs)

    def to_representation(self, value: Any) -> str:
        key = (self.view_name, get_script_prefix(), get_urlconf())
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = reverse(self.view_name, args=[_ANY_RUN])
        return path.replace(str(_ANY_RUN), str(value))


# --- The progress object --------------------------------------------------------------------


class AudioSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    filename = serializers.CharField(
        source="original_filename", help_text="The client's filename, sanitized; display only."
    )
    durationMs = serializers.IntegerField(source="duration_ms")
    sizeBytes = serializers.IntegerField(source="size_bytes")


class RunJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    jobType = serializers.CharField(source="job_type")
    status = serializers.ChoiceField(choices=JobStatus.choices)
    attempts = serializers.IntegerField()
    runAfter = UtcDateTimeField(source="run_after", help_text="Not started before this time.")
    lastError = BlankAsNullField(source="last_error")


class RunErrorSerializer(serializers.Serializer):
    """Why the run failed (or an attempt of it did); null while there is nothing to say."""

    code = serializers.CharField(source="error_code")
    message = serializers.CharField(source="error_message", allow_blank=True)

    def get_attribute(self, instance: TranscriptRun) -> TranscriptRun | None:
        return instance if instance.status == RunStatus.FAILED or instance.error_code else None


class RunLinksSerializer(serializers.Serializer):
    self = RunUrlField("run-detail")
    events = RunUrlField("run-events")
    transcript = RunUrlField("run-transcript")


# Context (docstrings are the schema's descriptions): `queue`, a QueueSnapshot that covers the
# run (`progress_context`).
class ProgressSerializer(serializers.Serializer):
    """The progress object: `GET /api/runs/{runId}/progress` and the `data` of run events."""

    runId = serializers.UUIDField(source="id")
    audioId = serializers.UUIDField(source="audio_id")
    status = serializers.ChoiceField(choices=RunStatus.choices)
    mode = serializers.ChoiceField(choices=RunMode.choices)
    progress = PercentField()
    queuePosition = serializers.SerializerMethodField(
        help_text="1 is next in line; 0 when the run is not waiting in the queue."
    )
    timeElapsed = serializers.IntegerField(
        source="elapsed_ms",
        allow_null=True,
        help_text="Milliseconds since processing started; null before.",
    )
    estimatedTimeRemaining = serializers.SerializerMethodField(
        help_text="Seconds (to a tenth while processing); null until it can be estimated."
    )
    language = BlankAsNullField(
        source="detected_language",
        help_text="The language detected (or asked for), once known; null before.",
    )
    languageProbability = serializers.FloatField(
        source="language_probability",
        allow_null=True,
        help_text="How sure the detection is (0-1); null before, 1 when it was asked for.",
    )
    attempts = serializers.IntegerField(source="attempts_used", min_value=0)
    maxAttempts = serializers.IntegerField(source="max_attempts", min_value=0)
    audio = AudioSummarySerializer()
    jobs = RunJobSerializer(source="jobs_oldest_first", many=True)
    error = RunErrorSerializer(source="*", allow_null=True)
    links = RunLinksSerializer(source="*")

    @extend_schema_field(serializers.IntegerField(min_value=0))
    def get_queuePosition(self, run: TranscriptRun) -> int:
        queue: QueueSnapshot = self.context["queue"]
        return queue.position(run)

    @extend_schema_field(serializers.FloatField(min_value=0, allow_null=True))
    def get_estimatedTimeRemaining(self, run: TranscriptRun) -> float | None:
        return run.estimated_seconds_remaining(self.context["queue"])


# --- The run --------------------------------------------------------------------------------


class RunOptionsSerializer(serializers.Serializer):
    model = serializers.CharField()
    language = BlankAsNullField(help_text="As asked for; null: detect.")
    task = serializers.ChoiceField(choices=Task.choices)
    wordTimestamps = serializers.BooleanField(source="word_timestamps")
    vadFilter = serializers.BooleanField(source="vad_filter")
    beamSize = serializers.IntegerField(source="beam_size")
    initialPrompt = BlankAsNullField(source="initial_prompt")
    hotwords = BlankAsNullField()
    channels = serializers.ChoiceField(choices=Channels.choices)
    speakerNames = serializers.ListField(child=serializers.CharField(), source="speaker_names")


class WordSerializer(serializers.Serializer):
    start = serializers.FloatField()
    end = serializers.FloatField()
    word = serializers.CharField(allow_blank=True)
    probability = serializers.FloatField()


class SegmentSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="Its position in the transcript, from 0.")
    start = serializers.FloatField(help_text="Seconds.")
    end = serializers.FloatField(help_text="Seconds.")
    text = serializers.CharField(allow_blank=True, help_text="With the owner's correction.")
    words = WordSerializer(
        many=True,
        required=False,
        help_text="With wordTimestamps only, and not on a corrected segment (see originalWords).",
    )
    speaker = serializers.CharField(
        required=False, help_text="channels=separate only: who speaks (the channel's speaker)."
    )
    channel = serializers.IntegerField(
        required=False, min_value=0, help_text="channels=separate only: the channel, from 0."
    )
    edited = serializers.BooleanField(
        required=False, help_text="Present and true on a corrected segment."
    )
    editedAt = UtcDateTimeField(required=False, help_text="Corrected segments only.")
    originalText = serializers.CharField(
        required=False, allow_blank=True, help_text="The model's text; corrected segments only."
    )
    originalWords = WordSerializer(
        many=True,
        required=False,
        help_text="The model's words of a corrected segment (with wordTimestamps).",
    )


class SegmentAnswerSerializer(SegmentSerializer):
    """One segment after a correction or its removal."""

    edited = serializers.BooleanField(help_text="Whether the segment is corrected.")


# Segments are stored as the engine made them (JSON); they are answered as stored, and these
# serializers only describe them.
@extend_schema_field(SegmentSerializer(many=True))
class SegmentsField(serializers.JSONField):
    pass


# What a run carries once it has succeeded, and only then.
RESULT_FIELDS = ("text", "segments")


# Context: `queue` (as ProgressSerializer) and `events_tokens`, the events token of each owner
# (`run_context`).
class RunSerializer(ProgressSerializer):
    """A run as the API returns it: the progress object, its options and, once it has
    succeeded, its transcript."""

    createdAt = UtcDateTimeField(source="created_at")
    startedAt = UtcDateTimeField(source="started_at", allow_null=True)
    finishedAt = UtcDateTimeField(source="finished_at", allow_null=True)
    options = RunOptionsSerializer(source="*")
    priority = serializers.IntegerField()
    callbackUrl = BlankAsNullField(source="callback_url")
    eventsToken = serializers.SerializerMethodField(
        help_text="A signed, read-only token for `?access_token=` on the event streams; it "
        "expires after EVENTS_TOKEN_TTL seconds."
    )
    text = serializers.CharField(
        source="corrected_text",
        required=False,
        allow_blank=True,
        help_text="Succeeded only; with the owner's corrections.",
    )
    segments = SegmentsField(
        source="corrected_segments",
        required=False,
        help_text="Succeeded only; with the owner's corrections, each beside the model's text.",
    )

    def get_eventsToken(self, run: TranscriptRun) -> str:
        tokens: dict[int, str] = self.context["events_tokens"]
        return tokens[run.owner_id]

    def to_representation(self, instance: TranscriptRun) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if instance.status != RunStatus.SUCCEEDED:
            for name in RESULT_FIELDS:
                del data[name]
        return data


class RunPageSerializer(serializers.Serializer):
    """One page of runs (`?limit=&offset=`), newest first."""

    count = serializers.IntegerField(min_value=0)
    next = serializers.CharField(allow_null=True, help_text="URL of the next page.")
    previous = serializers.CharField(allow_null=True, help_text="URL of the previous page.")
    results = RunSerializer(many=True)


# Of a models.Transcript: the run's transcript in one version (`?version=`).
class TranscriptJsonSerializer(serializers.Serializer):
    """`?format=json` of the transcript endpoint."""

    runId = serializers.UUIDField(source="run.id")
    language = serializers.CharField(source="run.detected_language", allow_blank=True)
    languageProbability = serializers.FloatField(source="run.language_probability", allow_null=True)
    durationMs = serializers.IntegerField(source="run.audio.duration_ms")
    edited = serializers.BooleanField(help_text="Whether some segment here is corrected.")
    text = serializers.CharField(allow_blank=True)
    segments = SegmentsField()


class ModelEntrySerializer(serializers.Serializer):
    """One model this server can load (transcription/catalogue.py ModelInfo)."""

    name = serializers.CharField(help_text="What `model` takes.")
    multilingual = serializers.BooleanField()
    translates = serializers.BooleanField(help_text="Whether `task=translate` works with it.")
    languages = serializers.ListField(
        child=serializers.CharField(), help_text="The `language` codes it knows."
    )
    sizeBytes = serializers.IntegerField(
        source="size_bytes", allow_null=True, help_text="Of its weights; null when not known."
    )
    description = serializers.CharField(allow_blank=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        # `default` and `source` are attributes of every DRF field: declared here, not above.
        fields = super().get_fields()
        fields["default"] = serializers.SerializerMethodField(method_name="is_default")
        fields["source"] = serializers.ChoiceField(
            choices=["bundled", "registered", "hub"],
            help_text="bundled: shipped in a package; registered: a folder an operator named; "
            "hub: downloaded by faster-whisper where the server may.",
        )
        return fields

    @extend_schema_field(OpenApiTypes.BOOL)
    def is_default(self, model: Any) -> bool:
        return bool(model.name == self.context["default"])


class ModelListSerializer(serializers.Serializer):
    default = serializers.CharField(help_text="The model a request without `model` gets.")
    models = ModelEntrySerializer(many=True)


class LanguageGuessSerializer(serializers.Serializer):
    language = serializers.CharField()
    probability = serializers.FloatField(min_value=0, max_value=1)


class DetectionSerializer(serializers.Serializer):
    """What POST /api/detect-language answers (transcription/detection.py Detection)."""

    model = serializers.CharField()
    language = serializers.CharField(help_text="The most likely language's code.")
    probability = serializers.FloatField(min_value=0, max_value=1)
    languages = LanguageGuessSerializer(
        many=True, help_text="The five most likely, most likely first."
    )
    analysedSeconds = serializers.FloatField(
        source="analysed_seconds", help_text="How much of the audio was listened to (≤ 30 s)."
    )

    @staticmethod
    def of(detection: Any) -> dict[str, Any]:
        return dict(
            DetectionSerializer(
                {
                    "model": detection.model,
                    "language": detection.language,
                    "probability": detection.probability,
                    "languages": [
                        {"language": code, "probability": p} for code, p in detection.languages
                    ],
                    "analysed_seconds": detection.analysed_seconds,
                }
            ).data
        )


class TokenAnswerSerializer(serializers.Serializer):
    token = serializers.CharField(
        source="key", help_text="Send it as `Authorization: Bearer <token>`."
    )


# --- Context, read once per answer ------------------------------------------------------------


def progress_context(
    runs: Iterable[TranscriptRun], *, queue: QueueSnapshot | None = None
) -> dict[str, Any]:
    """What the progress serializer needs of `runs`; `queue`: the queue as the caller read
    it already (an event pass over many runs)."""
    runs = list(runs)
    # A run read without its jobs (the one an event is about) gets them in one query here:
    # else each of the fields that read them (jobs, attempts, maxAttempts, the queue check)
    # read them again. Runs that came `with_relations` cost nothing more.
    prefetch_related_objects(runs, "jobs")
    # This process's recent read of the queue: an answer's cost does not grow with the queue.
    return {"queue": QueueSnapshot.shared(runs) if queue is None else queue}


def run_context(runs: Sequence[TranscriptRun]) -> dict[str, Any]:
    # One events token per owner, not per run: each costs a look-up of the API token.
    owners = {run.owner_id for run in runs}
    return {
        **progress_context(runs),
        "events_tokens": {owner: events_token_for(owner) for owner in owners},
    }


def progress_object(run: TranscriptRun, *, queue: QueueSnapshot | None = None) -> dict[str, Any]:
    """The progress object of one run. `queue`: when the caller has read the queue already
    (an event pass over many runs)."""
    context = progress_context([run], queue=queue)
    return dict(ProgressSerializer(run, context=context).data)


def progress_objects(runs: Sequence[TranscriptRun]) -> list[dict[str, Any]]:
    """The progress objects of many runs, in a fixed number of queries."""
    serializer = ProgressSerializer(runs, many=True, context=progress_context(runs))
    return [dict(item) for item in serializer.data]


def run_object(run: TranscriptRun) -> dict[str, Any]:
    return dict(RunSerializer(run, context=run_context([run])).data)
