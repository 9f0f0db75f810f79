"""Run events: the progress object and how it is published.

Every event goes to three django-eventstream channels: the run's own, its owner's and the
staff-wide one. Events are sent after the transaction commits (DESIGN.md, item 5), so a stored
event never describes a state the database does not have yet, and a failure to publish (Redis
down) is logged, never raised into the job: the event row is stored before publishing, and
web processes also pick stored events up from the database (see transcription.sse.send).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.urls import reverse

from tasks_admin.models import Job
from transcription.models import RunStatus, TranscriptRun
from transcription.sse import send
from transcription.tokens import events_token_for

logger = logging.getLogger(__name__)

ALL_RUNS_CHANNEL = "runs"


def run_channel(run_id: object) -> str:
    return f"run-{run_id}"


def user_channel(user_id: object) -> str:
    return f"user-{user_id}"


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as every time in the API is written."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def progress_object(run: TranscriptRun, *, queue_position: int | None = None) -> dict[str, Any]:
    """The progress object of DESIGN.md: the `data` of every run event and `/progress`."""
    audio = run.audio
    jobs = sorted(run.jobs.all(), key=lambda job: job.created_at)
    attempts = sum(job.attempts for job in jobs)
    max_attempts = jobs[-1].max_attempts if jobs else 0
    error = (
        {"code": run.error_code, "message": run.error_message}
        if run.status == RunStatus.FAILED or run.error_code
        else None
    )
    return {
        "runId": str(run.id),
        "audioId": str(audio.id),
        "status": run.status,
        "mode": run.mode,
        "progress": round(run.progress, 1),
        "queuePosition": run.queue_position() if queue_position is None else queue_position,
        "timeElapsed": run.elapsed_ms(),
        "estimatedTimeRemaining": run.estimated_seconds_remaining(),
        "attempts": attempts,
        "maxAttempts": max_attempts,
        "audio": {
            "id": str(audio.id),
            "filename": audio.original_filename,
            "durationMs": audio.duration_ms,
            "sizeBytes": audio.size_bytes,
        },
        "jobs": [
            {
                "id": str(job.id),
                "jobType": job.job_type,
                "status": job.status,
                "attempts": job.attempts,
                "runAfter": iso_utc(job.run_after),
                "lastError": job.last_error or None,
            }
            for job in jobs
        ],
        "error": error,
        "links": {
            "self": reverse("run-detail", args=[run.id]),
            "events": reverse("run-events", args=[run.id]),
            "transcript": reverse("run-transcript", args=[run.id]),
        },
    }


def run_representation(run: TranscriptRun) -> dict[str, Any]:
    """A run as the API returns it: the progress object plus its options and results."""
    data = progress_object(run)
    data.update(
        {
            "createdAt": iso_utc(run.created_at),
            "startedAt": iso_utc(run.started_at),
            "finishedAt": iso_utc(run.finished_at),
            "options": {
                "model": run.model,
                "language": run.language or None,
                "task": run.task,
                "wordTimestamps": run.word_timestamps,
                "vadFilter": run.vad_filter,
                "beamSize": run.beam_size,
                "initialPrompt": run.initial_prompt or None,
            },
            "priority": run.priority,
            "callbackUrl": run.callback_url or None,
            "eventsToken": events_token_for(run.owner_id),
        }
    )
    if run.status == RunStatus.SUCCEEDED:
        data.update(
            {
                "text": run.text,
                "segments": run.segments,
                "language": run.detected_language,
                "languageProbability": run.language_probability,
            }
        )
    return data


def publish(
    run: TranscriptRun, event: str, *, queue_position: int | None = None, **extra: Any
) -> None:
    """Send `event` for `run` once the current transaction commits.

    The payload is built now, from the state this transaction sees, so it describes exactly
    the change being committed.
    """
    data = progress_object(run, queue_position=queue_position)
    data.update(extra)
    data["event"] = event
    channels = (run_channel(run.id), user_channel(run.owner_id), ALL_RUNS_CHANNEL)

    def send_all() -> None:
        for channel in channels:
            try:
                send(channel, event, data)
            except Exception:
                # A job must never fail because an event could not be stored or published.
                logger.warning("could not send %s for run %s", event, run.id, exc_info=True)

    transaction.on_commit(send_all)


# Each move of the queue re-announces the places of this many runs at its head; runs further
# back learn theirs as they come within reach (or from GET /progress).
QUEUE_ANNOUNCE_LIMIT = 100


def announce_queue_positions() -> None:
    """The queue moved (a job started, was cancelled, jumped ahead): send each queued run at
    the head of the queue an `update` with its new `queuePosition`."""
    order = list(
        Job.objects.waiting()
        .in_claim_order()
        .values_list("run_id", flat=True)[:QUEUE_ANNOUNCE_LIMIT]
    )
    runs = TranscriptRun.objects.select_related("audio").prefetch_related("jobs")
    queued = runs.filter(pk__in=[r for r in order if r], status=RunStatus.QUEUED)
    by_id = {run.pk: run for run in queued}
    for position, run_id in enumerate(order, start=1):
        run = by_id.get(run_id)
        if run is not None:
            publish(run, "update", queue_position=position)
