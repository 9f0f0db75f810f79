from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Sum
from django.utils import timezone

from tasks_admin.models import Job, JobQuerySet, Worker


class Audio(models.Model):
    """An uploaded file, stored under a UUID name in UPLOAD_DIR, never served directly."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    stored_name = models.CharField(max_length=64, unique=True)
    original_filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size_bytes = models.BigIntegerField()
    duration_ms = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "audio"

    def __str__(self) -> str:
        return self.original_filename

    @property
    def path(self) -> Path:
        return Path(settings.UPLOAD_DIR) / self.stored_name

    def delete_file(self) -> None:
        self.path.unlink(missing_ok=True)


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

    # Results.
    detected_language = models.CharField(max_length=16, blank=True, default="")
    language_probability = models.FloatField(null=True, blank=True)
    text = models.TextField(blank=True, default="")
    segments = models.JSONField(default=list, blank=True)
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

    def jobs_ahead(self) -> JobQuerySet | None:
        """The waiting jobs ahead of this run's job in claim order; None when not in line."""
        if self.status != RunStatus.QUEUED:
            return None
        job = Job.objects.waiting().filter(run=self).first()
        if job is None:
            return None  # waiting for a retry delay: not in line yet
        return Job.objects.waiting().filter(
            models.Q(priority__gt=job.priority)
            | models.Q(priority=job.priority, created_at__lt=job.created_at)
            | models.Q(priority=job.priority, created_at=job.created_at, id__lt=job.id)
        )

    def queue_position(self) -> int:
        """1 + the waiting jobs ahead of this run's job in claim order; 0 when not queued."""
        ahead = self.jobs_ahead()
        return 0 if ahead is None else ahead.count() + 1

    def elapsed_ms(self) -> int | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return int((end - self.started_at).total_seconds() * 1000)

    def estimated_seconds_remaining(self) -> int | None:
        """Processing: from this run's rate of progress so far. Queued: the audio ahead of it
        and its own, at the speed recent runs went, spread over the live worker processes.
        None until there is a rate to go by."""
        if self.status == RunStatus.PROCESSING and self.started_at is not None:
            if self.progress >= 100:
                return 0
            if self.progress <= 0:
                return None
            elapsed = (timezone.now() - self.started_at).total_seconds()
            return max(0, round(elapsed * (100 - self.progress) / self.progress))
        if self.status == RunStatus.QUEUED:
            speed = TranscriptRun.recent_speed()
            ahead = self.jobs_ahead()
            if speed is None or ahead is None:
                return None
            ahead_ms = ahead.aggregate(ms=Sum("run__audio__duration_ms"))["ms"] or 0
            processes = Worker.objects.filter(
                last_seen__gte=timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
            ).aggregate(n=Sum("processes"))["n"]
            wait_ms = ahead_ms / max(1, processes or 1) + self.audio.duration_ms
            return round(wait_ms / 1000 / speed)
        return None

    _speed_cache: tuple[float, float | None] = (0.0, None)

    @classmethod
    def recent_speed(cls) -> float | None:
        """Audio seconds transcribed per wall second by one process, over recent runs.

        Cached for a minute: it moves slowly and every queued run's ETA asks for it.
        """
        checked_at, speed = cls._speed_cache
        if time.monotonic() - checked_at < 60:
            return speed
        recent = (
            cls.objects.filter(status=RunStatus.SUCCEEDED, started_at__isnull=False)
            .order_by("-finished_at")
            .values_list("audio__duration_ms", "started_at", "finished_at")[:20]
        )
        audio_ms = sum(duration for duration, _, _ in recent)
        wall_ms = sum((end - start).total_seconds() * 1000 for _, start, end in recent)
        speed = audio_ms / wall_ms if audio_ms and wall_ms > 0 else None
        cls._speed_cache = (time.monotonic(), speed)
        return speed


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
