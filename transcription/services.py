"""Writes that span several models: storing an upload, submitting and running a transcription."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
import threading
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connections, transaction
from django.utils import timezone
from rest_framework import status

from lingoloop.errors import ApiError
from tasks_admin.models import Job, JobStatus
from tasks_admin.runner import current_worker_id, run_job
from tasks_admin.services import job_enqueue
from transcription.events import announce_queue_positions, publish
from transcription.jobs import JOB_TYPE_ASYNC, JOB_TYPE_SYNC
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun
from transcription.probe import Probe, probe_audio

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    model: str
    language: str = ""
    task: str = "transcribe"
    word_timestamps: bool = False
    vad_filter: bool = False
    beam_size: int = 5
    initial_prompt: str = ""
    priority: int = 0
    callback_url: str = ""
    mode: str = "auto"  # auto | sync | async


# Characters that must never reach a display name: control, format (bidi overrides, zero
# width), surrogates, private use, unassigned.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}


def sanitize_filename(name: str) -> str:
    """A display name from the client's filename; it is never used as a path."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _UNSAFE_CATEGORIES)
    name = name.strip().strip(".").strip()
    if len(name.encode("utf-8")) > 200:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext) <= 10 else ""
        room = 200 - len(ext) - 1
        stem = (stem if dot else name).encode("utf-8")[:room].decode("utf-8", "ignore")
        name = stem + ("." + ext if ext else "")
    return name or "audio"


def _spool(upload: UploadedFile) -> Path:
    """The upload as a file on disk: Django's temporary file, or a copy made chunk by chunk."""
    temporary_path = getattr(upload, "temporary_file_path", None)
    if temporary_path is not None:
        return Path(temporary_path())
    handle, name = tempfile.mkstemp(dir=settings.UPLOAD_TEMP_DIR)
    with os.fdopen(handle, "wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return Path(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Sync transcription ------------------------------------------------------------------

_sync_pool = ThreadPoolExecutor(
    max_workers=max(1, settings.TRANSCRIBE_SYNC_CONCURRENCY), thread_name_prefix="sync-transcribe"
)
_sync_slots = threading.BoundedSemaphore(max(1, settings.TRANSCRIBE_SYNC_CONCURRENCY))


def _within_sync_limits(size_bytes: int, duration_ms: int) -> bool:
    return (
        size_bytes <= settings.TRANSCRIBE_SYNC_MAX_BYTES
        and duration_ms <= settings.TRANSCRIBE_SYNC_MAX_DURATION_MS
    )


def _choose_mode(requested: str, size_bytes: int, duration_ms: int) -> tuple[str, bool]:
    """(mode, holds_slot). A sync run holds one of the TRANSCRIBE_SYNC_CONCURRENCY slots."""
    if settings.TASKS_INLINE_PROCESSING:
        return RunMode.SYNC, False
    if requested == "async" or settings.TRANSCRIBE_SYNC_CONCURRENCY == 0:
        if requested == "sync":
            raise ApiError("sync_disabled", "Sync transcription is turned off here.", field="mode")
        return RunMode.ASYNC, False
    within = _within_sync_limits(size_bytes, duration_ms)
    if requested == "sync":
        if not within:
            raise ApiError(
                "sync_limits_exceeded",
                f"mode=sync takes files up to {settings.TRANSCRIBE_SYNC_MAX_BYTES} bytes and "
                f"{settings.TRANSCRIBE_SYNC_MAX_DURATION_MS} ms; use mode=async or auto.",
                field="mode",
            )
        _sync_slots.acquire()  # the client asked to wait for its transcript
        return RunMode.SYNC, True
    if within and _sync_slots.acquire(blocking=False):
        return RunMode.SYNC, True
    return RunMode.ASYNC, False


def _run_inline(job_id: uuid.UUID) -> None:
    try:
        run_job(str(job_id))
    finally:
        connections.close_all()


# --- Submit -------------------------------------------------------------------------------

RATE_WINDOW = timedelta(minutes=1)


def check_user_limits(*, owner: User) -> None:
    """USER_MAX_ACTIVE_RUNS and UPLOADS_PER_MINUTE, counted from the run table itself: exact
    across web processes, and independent of Redis. Raises a 429 with Retry-After."""
    runs = TranscriptRun.objects.filter(owner=owner)
    active = runs.filter(status__in=[RunStatus.QUEUED, RunStatus.PROCESSING]).count()
    if active >= settings.USER_MAX_ACTIVE_RUNS:
        raise ApiError(
            "too_many_active_runs",
            f"You have {active} runs queued or processing; the limit is "
            f"{settings.USER_MAX_ACTIVE_RUNS}. Wait for some to finish or cancel them.",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": "30"},
        )
    since = timezone.now() - RATE_WINDOW
    recent = runs.filter(created_at__gt=since).order_by("created_at")
    if recent.count() >= settings.UPLOADS_PER_MINUTE:
        oldest = recent.values_list("created_at", flat=True)[0]
        wait = math.ceil((oldest - since).total_seconds())
        raise ApiError(
            "throttled",
            f"You have uploaded {settings.UPLOADS_PER_MINUTE} files in the last minute, the "
            f"most this service takes; try again in {wait} s.",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(max(1, wait))},
        )


def run_submit(
    *,
    owner: User,
    upload: UploadedFile,
    options: RunOptions,
    idempotency_key: str | None = None,
) -> tuple[TranscriptRun, bool]:
    """Store the upload, create its Audio, TranscriptRun and Job, and transcribe or queue it.

    Returns (run, created). A sync run comes back finished. The same `idempotency_key` from the
    same owner returns the run it first created. A refused upload leaves no row and no file.
    """
    if idempotency_key:
        existing = TranscriptRun.objects.filter(
            owner=owner, idempotency_key=idempotency_key
        ).first()
        if existing is not None:
            return existing, False

    # A cheap refusal before the upload is probed; the check that counts is made again with
    # the owner's row locked, in the transaction that creates the run (_create_rows).
    check_user_limits(owner=owner)

    spooled = _spool(upload)
    stored: Path | None = None
    holds_slot = False
    try:
        probe: Probe = probe_audio(spooled)
        size_bytes = spooled.stat().st_size
        mode, holds_slot = _choose_mode(options.mode, size_bytes, probe.duration_ms)
        stored_name = uuid.uuid4().hex
        stored = Path(settings.UPLOAD_DIR) / stored_name
        sha256 = _sha256(spooled)
        os.replace(spooled, stored)
        try:
            with transaction.atomic():
                run = _create_rows(
                    owner=owner,
                    upload_name=upload.name or "",
                    stored_name=stored_name,
                    probe=probe,
                    size_bytes=size_bytes,
                    sha256=sha256,
                    options=options,
                    mode=mode,
                    idempotency_key=idempotency_key,
                )
        except IntegrityError:
            if not idempotency_key:
                raise
            # Two requests with one key raced; the other one created the run.
            stored.unlink(missing_ok=True)
            return TranscriptRun.objects.get(owner=owner, idempotency_key=idempotency_key), False

        if mode == RunMode.SYNC:
            job = run.jobs.get()
            _sync_pool.submit(_run_inline, job.pk).result()
            run.refresh_from_db()
        return run, True
    except BaseException:
        spooled.unlink(missing_ok=True)
        if stored is not None and not Audio.objects.filter(stored_name=stored.name).exists():
            stored.unlink(missing_ok=True)
        raise
    finally:
        if holds_slot:
            _sync_slots.release()


def _create_rows(
    *,
    owner: User,
    upload_name: str,
    stored_name: str,
    probe: Probe,
    size_bytes: int,
    sha256: str,
    options: RunOptions,
    mode: str,
    idempotency_key: str | None,
) -> TranscriptRun:
    # Parallel uploads from one user queue here, so each one counts those before it.
    # (SQLite's IMMEDIATE transactions are serialised already; FOR UPDATE is a no-op there.)
    list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk"))
    check_user_limits(owner=owner)
    audio = Audio.objects.create(
        owner=owner,
        stored_name=stored_name,
        original_filename=sanitize_filename(upload_name),
        content_type=probe.content_type,
        size_bytes=size_bytes,
        duration_ms=probe.duration_ms,
        sha256=sha256,
    )
    run = TranscriptRun.objects.create(
        owner=owner,
        audio=audio,
        mode=mode,
        model=options.model,
        language=options.language,
        task=options.task,
        word_timestamps=options.word_timestamps,
        vad_filter=options.vad_filter,
        beam_size=options.beam_size,
        initial_prompt=options.initial_prompt,
        priority=options.priority,
        callback_url=options.callback_url,
        idempotency_key=idempotency_key or None,
    )
    job = job_enqueue(
        job_type=JOB_TYPE_SYNC if mode == RunMode.SYNC else JOB_TYPE_ASYNC,
        run_id=run.pk,
        priority=options.priority,
    )
    if mode == RunMode.SYNC:
        # Held for this web process so no worker cluster picks it before we start it.
        Job.objects.filter(pk=job.pk).update(
            locked_by=f"pick:{current_worker_id()}",
            locked_until=timezone.now() + timedelta(seconds=settings.JOB_PICK_HOLD_SECONDS),
        )
    publish(run, "update")
    if Job.objects.waiting().filter(priority__lt=job.priority).exists():
        announce_queue_positions()  # it jumped ahead of others
    return run


# --- Cancel, retry, delete -----------------------------------------------------------------


def run_cancel(*, run: TranscriptRun) -> TranscriptRun:
    """Queued: cancelled at once. Processing: stops at the next segment. Finished: 409."""
    with transaction.atomic():
        now = timezone.now()
        if TranscriptRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
            status=RunStatus.CANCELLED, cancel_requested_at=now, finished_at=now
        ):
            run.jobs.filter(status=JobStatus.QUEUED).update(
                status=JobStatus.CANCELLED, finished_at=now, locked_by="", locked_until=None
            )
            run.refresh_from_db()
            publish(run, "done")
            announce_queue_positions()
            return run
        if TranscriptRun.objects.filter(
            pk=run.pk, status=RunStatus.PROCESSING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now):
            run.refresh_from_db()
            return run
    run.refresh_from_db()
    if run.is_finished:
        raise ApiError(
            "run_finished",
            f"The run has already {run.status}; there is nothing to cancel.",
            status_code=status.HTTP_409_CONFLICT,
        )
    return run  # processing with a cancel already requested


def run_retry(*, run: TranscriptRun) -> TranscriptRun:
    """A failed or cancelled run queued again, with a fresh job and fresh attempts."""
    with transaction.atomic():
        if not TranscriptRun.objects.filter(
            pk=run.pk, status__in=[RunStatus.FAILED, RunStatus.CANCELLED]
        ).update(
            status=RunStatus.QUEUED,
            mode=RunMode.ASYNC,
            progress=0.0,
            text="",
            segments=[],
            error_code="",
            error_message="",
            started_at=None,
            finished_at=None,
            cancel_requested_at=None,
        ):
            run.refresh_from_db()
            raise ApiError(
                "run_not_retryable",
                f"Only failed or cancelled runs can be retried; this one is {run.status}.",
                status_code=status.HTTP_409_CONFLICT,
            )
        if run.audio.purged_at is not None:
            raise ApiError(
                "audio_purged",
                "The audio of this run was deleted by retention; upload it again.",
                status_code=status.HTTP_409_CONFLICT,
            )
        job_enqueue(job_type=JOB_TYPE_ASYNC, run_id=run.pk, priority=run.priority)
        run.refresh_from_db()
        publish(run, "update")
        announce_queue_positions()
    return run


def run_delete(*, run: TranscriptRun) -> None:
    """Delete a finished run, and its audio with its file once no other run uses it."""
    if not run.is_finished:
        raise ApiError(
            "run_active",
            "Cancel the run before deleting it.",
            status_code=status.HTTP_409_CONFLICT,
        )
    audio = run.audio
    with transaction.atomic():
        run.delete()
        if not audio.runs.exists():
            audio.delete()
            transaction.on_commit(audio.delete_file)
