"""The transcription job handler: what a worker (or a web process, for sync runs) does."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.urls import reverse
from django.utils import timezone

from tasks_admin.handlers import (
    Attempt,
    BaseJobHandler,
    Cancelled,
    ClaimLost,
    PermanentError,
    Subject,
)
from tasks_admin.models import Job, JobStatus
from transcription import engine
from transcription.events import announce_queue_positions, publish, publish_attempt_error
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun

JOB_TYPE_ASYNC = "transcribe_long"
JOB_TYPE_SYNC = "transcribe_sync"

# At most this often a run's progress is written and an `update` sent; the last one before
# `done` always goes out.
UPDATE_INTERVAL_SECONDS = 0.5

ACTIVE = (RunStatus.QUEUED, RunStatus.PROCESSING)


class ProgressWriter:
    """Collects segments as the engine yields them; writes and announces them, throttled."""

    def __init__(self, run: TranscriptRun, attempt: Attempt) -> None:
        self.run = run
        self.attempt = attempt
        self.segments: list[dict[str, Any]] = []
        self.unsent: list[dict[str, Any]] = []
        self.progress = 0.0
        self.last_flush = time.monotonic()

    def segment(self, item: dict[str, Any], progress: float) -> None:
        # Every segment checks the claim (a heartbeat reads only memory) and honours a
        # cancel: the engine loop's safe point.
        self.attempt.heartbeat()
        if TranscriptRun.objects.filter(pk=self.run.pk, cancel_requested_at__isnull=False).exists():
            raise Cancelled()
        self.segments.append(item)
        self.unsent.append(item)
        self.progress = max(self.progress, progress)  # never backwards within an attempt
        if time.monotonic() - self.last_flush >= UPDATE_INTERVAL_SECONDS:
            self.flush()

    def flush(self) -> None:
        with transaction.atomic():
            updated = held_run(self.attempt).update(progress=self.progress, segments=self.segments)
            if not updated:
                raise ClaimLost(f"run {self.run.pk} is no longer processing")
            self.run.progress = self.progress
            self.run.segments = self.segments
            publish(self.run, "update", newSegments=self.unsent)
        self.unsent = []
        self.last_flush = time.monotonic()


def held_run(attempt: Attempt) -> QuerySet[TranscriptRun]:
    """The attempt's run, only while this attempt still holds its job: a slow holder whose
    lease was taken over matches nothing and so writes nothing."""
    return TranscriptRun.objects.filter(
        status=RunStatus.PROCESSING,
        jobs__pk=attempt.job.pk,
        jobs__status=JobStatus.PROCESSING,
        jobs__locked_by=attempt.worker_id,
    )


@dataclass(frozen=True)
class Transcribed:
    """What a transcription attempt hands to `succeeded`."""

    result: engine.Result
    # Segments finished since the last `update` event: the final one carries them.
    unsent: list[dict[str, Any]]


class TranscribeHandler(BaseJobHandler[Transcribed]):
    subject_search_fields = ("run__id", "run__audio__original_filename")
    subject_owner_field = "run__owner"

    def __init__(self, job_type: str) -> None:
        self.job_type = job_type

    def max_duration_ms(self) -> int:
        """The most audio this job may decode. A sync job runs inside a web request: only
        measured-short audio (with a second of room for the resampler's tail)."""
        if self.job_type == JOB_TYPE_SYNC and not settings.TASKS_INLINE_PROCESSING:
            return settings.TRANSCRIBE_SYNC_MAX_DURATION_MS + 1000
        return settings.MAX_AUDIO_DURATION_MS

    @staticmethod
    def _run(job: Job) -> TranscriptRun:
        return TranscriptRun.objects.select_related("audio").get(jobs=job)

    def started(self, attempt: Attempt) -> None:
        run = self._run(attempt.job)
        if run.cancel_requested_at is not None:
            raise Cancelled()
        with transaction.atomic():
            # A new attempt starts the transcript afresh.
            if not TranscriptRun.objects.filter(
                pk=run.pk,
                status__in=ACTIVE,
                jobs__pk=attempt.job.pk,
                jobs__locked_by=attempt.worker_id,
            ).update(
                status=RunStatus.PROCESSING,
                started_at=timezone.now(),
                progress=0.0,
                segments=[],
                text="",
                error_code="",
                error_message="",
            ):
                raise Cancelled()
            run.refresh_from_db()
            publish(run, "update", newSegments=[])
            if run.mode == RunMode.ASYNC:  # a sync run's job was never in anyone's way
                announce_queue_positions()

    def run(self, attempt: Attempt) -> Transcribed:
        run = self._run(attempt.job)
        if run.audio.purged_at is not None or not run.audio.path.exists():
            raise PermanentError("audio_missing", "The audio file is no longer stored.")
        writer = ProgressWriter(run, attempt)
        options = engine.Options(
            model=run.model,
            language=run.language or None,
            task=run.task,
            word_timestamps=run.word_timestamps,
            vad_filter=run.vad_filter,
            beam_size=run.beam_size,
            initial_prompt=run.initial_prompt or None,
        )
        try:
            result = engine.transcribe(
                run.audio.path,
                options,
                duration_ms=run.audio.duration_ms,
                max_duration_ms=self.max_duration_ms(),
                on_segment=writer.segment,
            )
        except engine.EngineError as exc:
            if exc.permanent:
                raise PermanentError(exc.code, exc.message) from exc
            raise
        return Transcribed(result, writer.unsent)

    def succeeded(self, attempt: Attempt, transcribed: Transcribed) -> None:
        result = transcribed.result
        run = self._run(attempt.job)
        # Inside the transaction whose compare-and-set on the job just won.
        TranscriptRun.objects.filter(pk=run.pk, status=RunStatus.PROCESSING).update(
            status=RunStatus.SUCCEEDED,
            progress=100.0,
            text=result.text,
            segments=result.segments,
            detected_language=result.language,
            language_probability=result.language_probability,
            finished_at=timezone.now(),
        )
        run.refresh_from_db()
        publish(run, "update", newSegments=transcribed.unsent)
        publish(run, "done", text=run.text)

    def describe_many(self, jobs: Sequence[Job]) -> dict[UUID, Subject]:
        """The runs of a page of jobs, with owner and audio: one query."""
        runs = TranscriptRun.objects.select_related("owner", "audio").in_bulk(
            {job.run_id for job in jobs if job.run_id is not None}
        )
        return {
            job.pk: Subject(
                label=str(run.pk)[:8],
                url=reverse("admin:transcription_transcriptrun_change", args=[run.pk]),
                owner=run.owner.get_username(),
                name=run.audio.original_filename,
                duration_ms=run.audio.duration_ms,
            )
            for job in jobs
            if job.run_id is not None and (run := runs.get(job.run_id)) is not None
        }

    def media_ms(self, jobs: QuerySet[Job]) -> int:
        """The audio length of these jobs' runs. A succeeded run has exactly one succeeded
        job (a run is retried only after it failed or was cancelled), so counting through
        succeeded jobs counts each run once."""
        total = jobs.filter(job_type=self.job_type, run__isnull=False).aggregate(
            total=Sum("run__audio__duration_ms")
        )["total"]
        return int(total or 0)

    def _end(
        self, job: Job, status: str, *, code: str = "", message: str = ""
    ) -> TranscriptRun | None:
        run = self._run(job)
        if not TranscriptRun.objects.filter(pk=run.pk, status__in=ACTIVE).update(
            status=status, error_code=code, error_message=message, finished_at=timezone.now()
        ):
            return None
        run.refresh_from_db()
        return run

    def _requeued(self, job: Job) -> TranscriptRun | None:
        run = self._run(job)
        if not TranscriptRun.objects.filter(pk=run.pk, status__in=ACTIVE).update(
            status=RunStatus.QUEUED, progress=0.0
        ):
            return None
        run.refresh_from_db()
        return run

    def released(self, job: Job) -> None:
        run = self._requeued(job)
        if run is not None:
            publish(run, "update")
            announce_queue_positions()

    def retrying(self, job: Job, error: str, retry_at: datetime) -> None:
        run = self._requeued(job)
        if run is None:
            return
        publish_attempt_error(
            run, attempt=job.attempts, code="attempt_failed", message=error, retry_at=retry_at
        )
        publish(run, "update")

    def failed(self, job: Job, code: str, error: str) -> None:
        run = self._end(job, RunStatus.FAILED, code=code, message=error)
        if run is None:
            return
        publish_attempt_error(run, attempt=job.attempts, code=code, message=error, retry_at=None)
        publish(run, "done")

    def cancelled(self, job: Job) -> None:
        run = self._end(job, RunStatus.CANCELLED)
        if run is not None:
            publish(run, "done")


JOB_TYPE_PURGE = "purge_audio"
PURGE_EVERY = timedelta(hours=1)


class PurgeAudioHandler(BaseJobHandler[int]):
    """Retention: delete the files of audio whose runs all finished more than
    AUDIO_RETENTION_HOURS ago. The rows stay, with `purged_at` set, transcripts and all."""

    job_type = JOB_TYPE_PURGE

    def run(self, attempt: Attempt) -> int:
        return purge_expired_audio(heartbeat=attempt.heartbeat)


def retention_is_on() -> bool:
    return settings.AUDIO_RETENTION_HOURS > 0


def purge_expired_audio(*, heartbeat: Callable[[], None] = lambda: None) -> int:
    hours = settings.AUDIO_RETENTION_HOURS
    if hours <= 0:
        return 0
    cutoff = timezone.now() - timedelta(hours=hours)
    expired = (
        Audio.objects.filter(purged_at__isnull=True, created_at__lt=cutoff)
        .exclude(runs__status__in=ACTIVE)
        .exclude(runs__finished_at__gte=cutoff)
        .distinct()
    )
    purged = 0
    for audio in expired.iterator():
        heartbeat()
        if Audio.objects.filter(pk=audio.pk, purged_at__isnull=True).update(
            purged_at=timezone.now()
        ):
            audio.delete_file()
            purged += 1
    return purged
