from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from django.conf import settings
from django.db import models
from django.db.models import F, Q, QuerySet, Sum, Window
from django.db.models.expressions import RowRange
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone

from tasks_admin.models import CLAIM_ORDER, Job, JobStatus, Worker

if TYPE_CHECKING:  # django-stubs-ext is a development dependency
    from django_stubs_ext import WithAnnotations


class Audio(models.Model):
    """An uploaded file, kept under a UUID name in the audio storage (transcription/storage.py),
    never served directly."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    stored_name = models.CharField(max_length=64, unique=True)
    original_filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size_bytes = models.BigIntegerField()
    duration_ms = models.BigIntegerField()
    # As its stream's header says (channels=separate needs two or more).
    channels = models.PositiveSmallIntegerField(default=1)
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "audio"

    def __str__(self) -> str:
        return self.original_filename


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunMode(models.TextChoices):
    SYNC = "sync"
    ASYNC = "async"


class Task(models.TextChoices):
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


class Channels(models.TextChoices):
    MIX = "mix"
    SEPARATE = "separate"


class TranscriptRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    audio = models.ForeignKey(Audio, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    mode = models.CharField(max_length=8, choices=RunMode.choices)
    progress = models.FloatField(default=0.0)

    # Options, as asked for.
    model = models.CharField(max_length=200)
    language = models.CharField(max_length=16, blank=True, default="")
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.TRANSCRIBE)
    word_timestamps = models.BooleanField(default=False)
    vad_filter = models.BooleanField(default=False)
    beam_size = models.PositiveSmallIntegerField(default=5)
    initial_prompt = models.TextField(blank=True, default="")
    # Words to favour (names, jargon), as faster-whisper's `hotwords`.
    hotwords = models.TextField(blank=True, default="")
    # mix: every channel heard together; separate: each channel on its own, as one speaker.
    channels = models.CharField(max_length=8, choices=Channels.choices, default=Channels.MIX)
    # Who speaks on each channel, in order; channels without a name are "Speaker N".
    speaker_names = models.JSONField(default=list, blank=True)

    # Results.
    detected_language = models.CharField(max_length=16, blank=True, default="")
    language_probability = models.FloatField(null=True, blank=True)
    text = models.TextField(blank=True, default="")
    segments = models.JSONField(default=list, blank=True)
    # Corrections made by the owner on top of `segments`, which stay as the model made them:
    # {"<segment id>": {"text": "…", "editedAt": "…Z"}}. See `corrected_segments`.
    segment_edits = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    priority = models.IntegerField(default=0)
    callback_url = models.URLField(max_length=2000, blank=True, default="")
    # NULL, not "": the unique constraint must ignore runs submitted without a key.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # While processing: when the attempt expects to finish, from the rate it measured since
    # decoding began (the model load excluded); null until it has a rate to go by.
    estimated_finish_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "transcript_run"
        indexes = [
            # SELECT * FROM transcript_run WHERE status = 'processing' (and the other states).
            models.Index(fields=["status"], name="idx_run_status"),
            # GET /api/runs: a user's runs, newest first.
            models.Index(fields=["owner", "-created_at"], name="idx_run_owner_created"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="uniq_run_owner_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES

    def corrected_segments(self) -> list[dict[str, Any]]:
        """The segments with the owner's corrections: a corrected one carries its new `text`,
        `edited: true`, `editedAt`, the model's `originalText` and, instead of `words` (they
        time the model's words, not the corrected ones), `originalWords`. The others are as
        the model made them (the stored dicts themselves when nothing was corrected)."""
        if not self.segment_edits:
            return list(self.segments)
        return [self.with_edit(segment) for segment in self.segments]

    def with_edit(self, segment: dict[str, Any]) -> dict[str, Any]:
        """One of the model's segments with its correction, if it has one."""
        edit = self.segment_edits.get(str(segment.get("id")))
        if edit is None:
            return segment
        corrected = {key: value for key, value in segment.items() if key != "words"}
        corrected.update(
            text=edit["text"],
            edited=True,
            editedAt=edit["editedAt"],
            originalText=segment.get("text", ""),
        )
        if "words" in segment:
            corrected["originalWords"] = segment["words"]
        return corrected

    def corrected_text(self) -> str:
        """The whole text with the corrections, joined as the engine joins it."""
        if not self.segment_edits:
            return self.text
        return joined_text(self.corrected_segments())

    def transcript(self, *, original: bool = False) -> Transcript:
        """The transcript as exported: with the corrections, or as the model made it."""
        if original:
            return Transcript(self, self.text, list(self.segments), edited=False)
        return Transcript(
            self, self.corrected_text(), self.corrected_segments(), bool(self.segment_edits)
        )

    def segment(self, segment_id: int) -> dict[str, Any] | None:
        """The model's segment with this id (its position in the transcript)."""
        return next((s for s in self.segments if s.get("id") == segment_id), None)

    def jobs_oldest_first(self) -> list[Job]:
        """Its jobs (a retry adds one), from the prefetched set when the caller has one."""
        return sorted(self.jobs.all(), key=lambda job: job.created_at)

    def attempts_used(self) -> int:
        """The attempts at the whole run. A chunk job's attempt is not one: a chunk that is
        redone leaves the transcript so far as it is (the pages start it afresh on a new
        attempt)."""
        return sum(job.attempts for job in self.jobs.all() if job.job_type != JOB_TYPE_CHUNK)

    def max_attempts(self) -> int:
        """What its newest job may use; 0 before it has one."""
        jobs = self.jobs_oldest_first()
        return jobs[-1].max_attempts if jobs else 0

    def elapsed_ms(self) -> int | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return int((end - self.started_at).total_seconds() * 1000)

    def estimated_seconds_remaining(self, queue: QueueSnapshot) -> float | None:
        """Processing: until the finish its attempt estimated (transcription/jobs.py,
        ProgressClock), to a tenth of a second: near the end of a short run whole seconds
        alone were 20-30 % off. Queued: what `queue` says. None until there is a rate to go
        by."""
        if self.status == RunStatus.PROCESSING:
            if self.estimated_finish_at is None:
                return None
            remaining = (self.estimated_finish_at - timezone.now()).total_seconds()
            return max(0.0, round(remaining, 1))
        if self.status == RunStatus.QUEUED:
            return queue.seconds_until_done(self)
        return None

    _speed_cache: tuple[float, float | None] = (0.0, None)

    @classmethod
    def recent_speed(cls) -> float | None:
        """Audio seconds transcribed per wall second by one process, over recent runs: their
        audio over the time their succeeded jobs took. Not over the runs' own wall time: a
        run split into chunks went as fast as the workers that shared it, together.

        Cached for a minute: it moves slowly, and every answer or event about a queued run
        asks for it. Two queries.
        """
        checked_at, speed = cls._speed_cache
        if time.monotonic() - checked_at < 60:
            return speed
        recent = dict(
            cls.objects.filter(status=RunStatus.SUCCEEDED, started_at__isnull=False)
            .order_by("-finished_at")
            .values_list("pk", "audio__duration_ms")[:20]
        )
        spans = Job.objects.filter(run__in=list(recent), status=JobStatus.SUCCEEDED).values_list(
            "started_at", "finished_at"
        )
        audio_ms = sum(recent.values())
        busy_ms = sum((end - start).total_seconds() * 1000 for start, end in spans if start and end)
        speed = audio_ms / busy_ms if audio_ms and busy_ms > 0 else None
        cls._speed_cache = (time.monotonic(), speed)
        return speed


def joined_text(segments: Iterable[Mapping[str, Any]]) -> str:
    """The text of some segments, as the engine joins them (transcription/engine.py)."""
    return " ".join(s["text"].strip() for s in segments if str(s.get("text", "")).strip())


@dataclass(frozen=True)
class Transcript:
    """A finished run's transcript in one version: corrected (`edited`: it holds some
    corrections) or the model's own."""

    run: TranscriptRun
    text: str
    segments: list[dict[str, Any]]
    edited: bool


@dataclass(frozen=True)
class QueuePlace:
    position: int  # 1 is next in line
    audio_ms_ahead: int  # the audio of the waiting jobs before it


@dataclass(frozen=True)
class QueueSnapshot:
    """Where some runs stand in the queue, read once for a whole answer or event pass: one
    window query over the waiting jobs, however many runs it covers, and the live worker
    processes and recent speed that their ETAs need.

    A queue position is 1 + the waiting jobs ahead in claim order (DESIGN.md, "Job queue"); a
    run that is not waiting (processing, finished, or queued for a retry later) has none.
    """

    places: Mapping[uuid.UUID, QueuePlace]
    processes: int = 1
    speed: float | None = None

    # This process's last read of the whole queue (`shared`), and when (time.monotonic()).
    _last_read: ClassVar[tuple[float, QueueSnapshot | None]] = (0.0, None)

    @classmethod
    def shared(cls, runs: Iterable[TranscriptRun]) -> QueueSnapshot:
        """The places of these runs from this process's last read of the whole queue, made
        at most QUEUE_SNAPSHOT_TTL_MS ago: what web answers use, so that an answer costs the
        same whatever the length of the queue and however often it is asked.

        The queue is read again (one window query over all waiting jobs, O(queue) but at most
        once per TTL per process, not once per answer) when that read is too old, or when it
        cannot know one of the runs (it became waiting after the read, e.g. was just
        submitted). A run ahead that started or left meanwhile is still counted, for at most
        the TTL; the events announce the exact positions as they change. The runs come with
        their jobs (`representations.with_relations`). 0 ms: `of()`, a read per answer.
        """
        runs = list(runs)
        ttl = settings.QUEUE_SNAPSHOT_TTL_MS / 1000
        if ttl <= 0 or not any(run.status == RunStatus.QUEUED for run in runs):
            return cls.of(runs)
        read_at, snapshot = cls._last_read
        now = timezone.now()
        if (
            snapshot is None
            or time.monotonic() - read_at >= ttl
            or any(snapshot._misses(run, now) for run in runs)
        ):
            snapshot = cls._read(_waiting_with_places())
            cls._last_read = (time.monotonic(), snapshot)
        return snapshot

    def _misses(self, run: TranscriptRun, now: datetime) -> bool:
        """Whether the run waits in the queue now but is not in this snapshot."""
        if run.status != RunStatus.QUEUED or run.pk in self.places:
            return False
        jobs = run.jobs_oldest_first()
        return bool(jobs) and _in_line(jobs[-1], run, now)

    @classmethod
    def of(cls, runs: Iterable[TranscriptRun]) -> QueueSnapshot:
        """The places of these runs; no query at all when none of them is queued."""
        queued = [run.pk for run in runs if run.status == RunStatus.QUEUED]
        if not queued:
            return cls({})
        # A filter that names a window function is applied after the window is computed (in
        # an outer query), any other filter before it, where it would shrink the queue being
        # counted. OR-ed with a window condition, the run filter is applied after.
        return cls._read(_waiting_with_places().filter(Q(run_id__in=queued) | Q(position__lt=1)))

    @classmethod
    def head(cls, length: int) -> QueueSnapshot:
        """The places of the runs among the first `length` waiting jobs."""
        return cls._read(_waiting_with_places().filter(position__lte=length))

    @classmethod
    def _read(cls, waiting: QuerySet[WithAnnotations[Job, _Place]]) -> QueueSnapshot:
        places: dict[uuid.UUID, QueuePlace] = {}
        for run_id, position, audio_ms_ahead in waiting.values_list(
            "run_id", "position", "audio_ms_ahead"
        ):
            # A run queued again with several chunk jobs is as far as its first one.
            if run_id is not None and (run_id not in places or position < places[run_id].position):
                places[run_id] = QueuePlace(position, audio_ms_ahead or 0)
        if not places:
            return cls({})
        processes = Worker.objects.alive().aggregate(n=Sum("processes"))["n"]
        # No live worker: nothing will pick the run up, so there is no time to promise.
        speed = TranscriptRun.recent_speed() if processes else None
        return cls(places, max(1, processes or 1), speed)

    def position(self, run: TranscriptRun) -> int:
        """1 is next in line; 0 when the run is not waiting in the queue (a processing run
        split into chunks has chunk jobs waiting, but the run itself is under way)."""
        if run.status != RunStatus.QUEUED:
            return 0
        place = self.places.get(run.pk)
        return 0 if place is None else place.position

    def in_order(self) -> list[uuid.UUID]:
        """The runs, first in line first."""
        return sorted(self.places, key=lambda run_id: self.places[run_id].position)

    def seconds_until_done(self, run: TranscriptRun) -> int | None:
        """The audio ahead of the run, spread over the live worker processes, and its own,
        spread over as many of them as it has pieces (a long run is split into chunks), at
        the speed recent runs went; None while the run is not in line, no run has finished
        lately or no worker is alive."""
        place = self.places.get(run.pk)
        if place is None or self.speed is None:
            return None
        from transcription.chunks import expected_pieces  # chunks.py imports this module

        sharing = min(self.processes, expected_pieces(run))
        wait_ms = place.audio_ms_ahead / self.processes + run.audio.duration_ms / sharing
        return round(wait_ms / 1000 / self.speed)


class _Place(TypedDict):
    position: int
    audio_ms_ahead: int | None


def _in_line(job: Job, run: TranscriptRun, now: datetime) -> bool:
    """What `_waiting_with_places` counts, for one job in memory."""
    held_for_sync = (
        run.mode == RunMode.SYNC and job.picked_until is not None and job.picked_until > now
    )
    return job.status == JobStatus.QUEUED and job.run_after <= now and not held_for_sync


def _waiting_with_places() -> QuerySet[WithAnnotations[Job, _Place]]:
    """The waiting jobs, each with its `position` in claim order and the `audio_ms_ahead` of
    it. A sync run's job, held by the web process that runs it at once, is in nobody's way."""
    now = timezone.now()
    return (
        Job.objects.waiting(now)
        .exclude(run__mode=RunMode.SYNC, picked_until__gt=now)
        .annotate(
            position=Window(RowNumber(), order_by=CLAIM_ORDER),
            audio_ms_ahead=Window(
                # A chunk job holds its piece of the audio, any other job its run's.
                Sum(
                    Coalesce(
                        F("run_chunk__end_ms") - F("run_chunk__start_ms"),
                        F("run__audio__duration_ms"),
                        output_field=models.BigIntegerField(),
                    )
                ),
                order_by=CLAIM_ORDER,
                frame=RowRange(start=None, end=-1),
            ),
        )
    )


# The job types of a run split into chunks (transcription/chunks.py): named here because the
# run's own methods tell them apart from the jobs that transcribe it whole.
JOB_TYPE_SPLIT = "transcribe_split"
JOB_TYPE_CHUNK = "transcribe_chunk"


class ChunkStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunChunk(models.Model):
    """One piece of a long run's audio, cut at a silence, transcribed by a job of its own
    (transcription/chunks.py). Its segments are kept as soon as it succeeds, times in the
    whole audio, and copied into the run's transcript (`merged`) once every chunk before it
    is there too, so the transcript only ever grows at its end."""

    run = models.ForeignKey(TranscriptRun, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    start_ms = models.BigIntegerField()
    end_ms = models.BigIntegerField()
    # The piece as a 16 kHz mono WAV in the audio storage, deleted once the run succeeded.
    stored_name = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=ChunkStatus.choices, default=ChunkStatus.QUEUED
    )
    progress = models.FloatField(default=0.0)
    segments = models.JSONField(default=list, blank=True)
    text = models.TextField(blank=True, default="")
    detected_language = models.CharField(max_length=16, blank=True, default="")
    language_probability = models.FloatField(null=True, blank=True)
    merged = models.BooleanField(default=False)
    # The job that transcribes it now (a retry of the run gives it a new one).
    job = models.OneToOneField(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="run_chunk"
    )
    # When its first attempt of the run's current attempt began, and when it succeeded: the
    # run's pace over all its chunks, however many workers share them, is measured from them.
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "run_chunk"
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="uniq_run_chunk_index")
        ]

    def __str__(self) -> str:
        return f"chunk {self.index} of run {self.run_id} ({self.status})"

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


class RunEventOutbox(models.Model):
    """Run events written in the same transaction as the state change they describe.

    A process killed between its commit and storing the events would otherwise lose them (a
    finished run whose watchers never get `done`). Each row is moved into the event streams'
    storage exactly once: in one transaction that appends the event to its channels and
    deletes the row. The writer does that right after its commit; a sweeper in every worker
    cluster picks up rows a dead process left behind.
    """

    run_id = models.UUIDField()
    event = models.CharField(max_length=32)
    channels = models.JSONField()
    data = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        db_table = "run_event_outbox"

    def __str__(self) -> str:
        return f"{self.event} for run {self.run_id}"


class PendingDeletion(models.Model):
    """A stored file whose rows are gone and which the audio store has still to delete.

    Written in the transaction that deletes the rows, removed once the store confirms; a
    store that is down then leaves the row for the worker clusters' housekeeping
    (transcription/storage.py). So a deleted run never leaves an object behind.
    """

    name = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_tried_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "stored_file_deletion"

    def __str__(self) -> str:
        return self.name


def speaker_label(names: list[str], channel: int) -> str:
    """Who speaks on `channel` (from 0): the name given for it, else `Speaker N`."""
    return names[channel] if channel < len(names) and names[channel] else f"Speaker {channel + 1}"


class WhisperModelEntry(models.Model):
    """A folder of CTranslate2 Whisper weights an operator registered by name
    (`manage.py register_model`): offered beside the bundled models on every machine, each of
    which must have the folder at `path` (transcription/catalogue.py)."""

    name = models.SlugField(max_length=64, unique=True)
    path = models.CharField(max_length=1000)
    multilingual = models.BooleanField()
    # The codes it knows, from its config.json (catalogue.languages_of).
    languages = models.JSONField(default=list)
    size_bytes = models.BigIntegerField()
    description = models.CharField(max_length=200, blank=True, default="")
    registered_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "whisper_model"

    def __str__(self) -> str:
        return self.name
