from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

from tasks_admin.models import Job


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

    def queue_position(self) -> int:
        """1 + the waiting jobs ahead of this run's job in claim order; 0 when not queued."""
        if self.status != RunStatus.QUEUED:
            return 0
        job = Job.objects.waiting().filter(run=self).first()
        if job is None:
            return 0  # waiting for a retry delay: not in line yet
        ahead = Job.objects.waiting().filter(
            models.Q(priority__gt=job.priority)
            | models.Q(priority=job.priority, created_at__lt=job.created_at)
            | models.Q(priority=job.priority, created_at=job.created_at, id__lt=job.id)
        )
        return ahead.count() + 1

    def elapsed_ms(self) -> int | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return int((end - self.started_at).total_seconds() * 1000)

    def estimated_seconds_remaining(self) -> int | None:
        """From the rate of progress so far; None until there is a rate to go by."""
        if self.status != RunStatus.PROCESSING or self.started_at is None:
            return None
        if self.progress <= 0 or self.progress >= 100:
            return 0 if self.progress >= 100 else None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        return max(0, round(elapsed * (100 - self.progress) / self.progress))
