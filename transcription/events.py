"""Run events: the progress object and how it is published.

Every event goes to three django-eventstream channels: the run's own, its owner's and the
staff-wide one. An event is written to an outbox in the transaction that makes the change it
describes and moved into the streams' storage right after the commit (DESIGN.md, item 5: no
event describes a state the database does not have), exactly once, even if the process dies
in between (a worker cluster sweeps what a dead process left). Publishing to Redis comes last
and may fail without harm: web processes also read stored events from the database.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from lingoloop.timefmt import iso_utc
from tasks_admin.models import Job
from transcription.models import (
    TERMINAL_RUN_STATUSES,
    RunEventOutbox,
    RunStatus,
    TranscriptRun,
)
from transcription.sse import announce, store
from transcription.tokens import events_token_for

logger = logging.getLogger(__name__)

ALL_RUNS_CHANNEL = "runs"


def run_channel(run_id: object) -> str:
    return f"run-{run_id}"


def user_channel(user_id: object) -> str:
    return f"user-{user_id}"


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


def run_representation(run: TranscriptRun, *, events_token: str | None = None) -> dict[str, Any]:
    """A run as the API returns it: the progress object plus its options and results.

    `events_token`: the owner's, when the caller made it already (one per owner on a page).
    """
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
            "eventsToken": events_token or events_token_for(run.owner_id),
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
    run: TranscriptRun,
    event: str,
    *,
    queue_position: int | None = None,
    channels: tuple[str, ...] | None = None,
    **extra: Any,
) -> None:
    """Record `event` for `run` in the current transaction; deliver it once that commits.

    Call it inside the transaction that makes the change it describes: the event is written
    to the outbox with the change, so it exists exactly when the change does, even if this
    process dies right after the commit. The payload is built now, from the state this
    transaction sees.
    """
    data = progress_object(run, queue_position=queue_position)
    data.update(extra)
    data["event"] = event
    if channels is None:
        channels = (run_channel(run.id), user_channel(run.owner_id), ALL_RUNS_CHANNEL)
    row = RunEventOutbox.objects.create(
        run_id=run.id,
        event=event,
        channels=list(channels),
        data=json.dumps(data, cls=DjangoJSONEncoder),
    )
    transaction.on_commit(lambda: deliver_outbox([row.pk]))


def deliver_outbox(ids: list[int] | None = None, *, older_than: timedelta | None = None) -> int:
    """Move outbox rows into the event streams, each exactly once, oldest first; then announce
    them. `ids`: the rows a transaction just committed. `older_than`: the sweep for rows left
    by a process that died before delivering them. Never raises: a job must not fail because
    an event could not be delivered now (the sweep will)."""
    rows = RunEventOutbox.objects.order_by("pk")
    if ids is not None:
        rows = rows.filter(pk__in=ids)
    if older_than is not None:
        rows = rows.filter(created_at__lt=timezone.now() - older_than)
    delivered = 0
    for pk in list(rows.values_list("pk", flat=True)[:1000]):
        try:
            with transaction.atomic():
                row = (
                    RunEventOutbox.objects.select_for_update(skip_locked=True).filter(pk=pk).first()
                )
                if row is None:
                    continue  # another process is delivering it, or did
                stored = (
                    []
                    if _overtaken(row)
                    else [store(channel, row.event, row.data) for channel in row.channels]
                )
                row.delete()
        except Exception:
            logger.warning("could not deliver event %s yet", pk, exc_info=True)
            continue
        for event in stored:
            try:
                announce(event)
            except Exception:
                logger.warning("could not announce event %s", event.id, exc_info=True)
        delivered += 1
    return delivered


def _overtaken(row: RunEventOutbox) -> bool:
    """A late event (its writer was slow or died) describing an unfinished run that has
    finished since: storing it now would put a stale state after the run's `done`."""
    if row.event == "done" or json.loads(row.data).get("status") in TERMINAL_RUN_STATUSES:
        return False
    return TranscriptRun.objects.filter(pk=row.run_id, status__in=TERMINAL_RUN_STATUSES).exists()


def deliver_stranded_events() -> int:
    """Housekeeping: deliver outbox rows a process committed but died before delivering."""
    return deliver_outbox(older_than=timedelta(seconds=5))


# Each move of the queue re-announces the places of this many runs at its head, on their own
# and their owner's streams (not the staff-wide one); runs further back learn theirs as they
# come within reach, or from GET /progress. (A soak run showed announcing 100 runs on all
# three channels made queue positions 95% of all events.)
QUEUE_ANNOUNCE_LIMIT = 50


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
            publish(
                run,
                "update",
                queue_position=position,
                channels=(run_channel(run.id), user_channel(run.owner_id)),
            )
