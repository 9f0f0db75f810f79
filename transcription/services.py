"""Writes that span several models: submitting a transcription, cancelling, retrying and
deleting runs; correcting a finished transcript.

`run_submit` reads as its steps: store the upload, probe it, decide the mode, create the rows,
then transcribe it here or leave it to the queue. Refusals are domain exceptions
(lingoloop.refusals); the API and the admin decide how to show them.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import math
import os
import re
import tempfile
import threading
import unicodedata
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from lingoloop import disk, metrics
from lingoloop.characters import has_control_characters
from lingoloop.malloc import release_free_memory
from lingoloop.refusals import Conflict, InsufficientStorage, Invalid, LimitReached
from tasks_admin.models import Job, JobStatus
from tasks_admin.runner import run_job
from tasks_admin.services import job_enqueue
from transcription import chunks, storage
from transcription.events import announce_queue_positions, publish, publish_finished
from transcription.jobs import JOB_TYPE_ASYNC, JOB_TYPE_SYNC
from transcription.models import Audio, Channels, RunMode, RunStatus, TranscriptRun
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
    hotwords: str = ""
    channels: str = "mix"  # mix | separate
    speaker_names: tuple[str, ...] = ()
    priority: int = 0
    callback_url: str = ""
    mode: str = "auto"  # auto | sync | async


# --- Submit -------------------------------------------------------------------------------


def run_submit(
    *,
    owner: User,
    upload: UploadedFile,
    options: RunOptions,
    idempotency_key: str | None = None,
) -> tuple[TranscriptRun, bool]:
    """Store the upload, probe it, decide its mode, create its rows, then transcribe it here
    (sync) or leave it to the queue (async).

    Returns (run, created). A sync run comes back finished. The same `idempotency_key` from the
    same owner returns the run it first created. A refused upload leaves no row and no file.
    """
    if idempotency_key and (earlier := _run_for_key(owner, idempotency_key)) is not None:
        return earlier, False
    # A cheap refusal before the upload is probed; the check that counts is made again with
    # the owner's row locked, in the transaction that creates the run.
    check_user_limits(owner=owner)

    spooled = spool_upload(upload)
    run: TranscriptRun | None = None
    stored: StoredUpload | None = None
    try:
        probe = probe_audio(spooled)  # before anything is kept: a refusal stores nothing
        check_channels(options, probe)
        with decided_mode(options.mode, spooled.stat().st_size, probe.duration_ms) as mode:
            stored = store_upload(spooled)
            try:
                run = _create_rows(owner, upload, stored, probe, options, mode, idempotency_key)
            except IntegrityError:
                earlier = _run_for_key(owner, idempotency_key) if idempotency_key else None
                if earlier is None:
                    raise
                return earlier, False  # two requests with one key raced; the other one won
            if mode == RunMode.SYNC:
                # The job reads the spooled upload, not a copy fetched back from the store.
                with storage.known_local_copy(stored.name, stored.local_path):
                    transcribe_here(run)
        return run, True
    except Exception as exc:
        # No room to keep it (the move into storage, SQLite's writes): everything it wrote
        # goes below, and the transaction that would have made its rows was rolled back.
        if disk.is_disk_full(exc):
            raise InsufficientStorage() from exc
        raise
    finally:
        if run is None and stored is not None:  # refused, or it lost the race
            storage.discard(stored.name)
        spooled.unlink(missing_ok=True)  # on a local folder it was moved already


# channels=separate transcribes each channel on its own: a bound on the work one upload asks.
MAX_SEPARATE_CHANNELS = 8


def check_channels(options: RunOptions, probe: Probe) -> None:
    """channels=separate needs a recording of 2 to MAX_SEPARATE_CHANNELS channels, and at
    most one speaker name per channel."""
    if options.channels != Channels.SEPARATE:
        return
    if probe.channels < 2:
        raise Invalid(
            "not_multichannel",
            "channels=separate transcribes each channel of a multichannel recording on its "
            "own; this one has a single channel.",
            field="channels",
        )
    if probe.channels > MAX_SEPARATE_CHANNELS:
        raise Invalid(
            "too_many_channels",
            f"channels=separate takes recordings of up to {MAX_SEPARATE_CHANNELS} channels; "
            f"this one has {probe.channels}.",
            field="channels",
        )
    if len(options.speaker_names) > probe.channels:
        raise Invalid(
            "too_many_speaker_names",
            f"{len(options.speaker_names)} speaker names for {probe.channels} channels.",
            field="speakerNames",
        )


def _run_for_key(owner: User, idempotency_key: str) -> TranscriptRun | None:
    return TranscriptRun.objects.filter(owner=owner, idempotency_key=idempotency_key).first()


def _create_rows(
    owner: User,
    upload: UploadedFile,
    stored: StoredUpload,
    probe: Probe,
    options: RunOptions,
    mode: str,
    idempotency_key: str | None,
) -> TranscriptRun:
    """The Audio, TranscriptRun and Job rows and the run's first event, in one transaction."""
    with transaction.atomic():
        # Parallel uploads from one user queue here, so each one counts those before it.
        # (SQLite's IMMEDIATE transactions are serialised already; FOR UPDATE is a no-op there.)
        list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk"))
        check_user_limits(owner=owner)
        audio = Audio.objects.create(
            owner=owner,
            stored_name=stored.name,
            original_filename=sanitize_filename(upload.name or ""),
            content_type=probe.content_type,
            size_bytes=stored.size_bytes,
            duration_ms=probe.duration_ms,
            channels=probe.channels,
            sha256=stored.sha256,
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
            hotwords=options.hotwords,
            channels=options.channels,
            speaker_names=list(options.speaker_names),
            priority=options.priority,
            callback_url=options.callback_url,
            idempotency_key=idempotency_key or None,
        )
        sync = mode == RunMode.SYNC
        job = job_enqueue(
            job_type=JOB_TYPE_SYNC if sync else _async_job_type(run),
            run_id=run.pk,
            priority=options.priority,
            # This web process starts it: no worker cluster may pick it meanwhile.
            hold=sync,
        )
        publish(run, "update")
        if not sync and Job.objects.waiting().filter(priority__lt=job.priority).exists():
            announce_queue_positions()  # it jumped ahead of others
    return run


def _async_job_type(run: TranscriptRun) -> str:
    """A long run is cut into chunks that the whole cluster shares (transcription/chunks.py);
    any other is one job."""
    return chunks.JOB_TYPE_SPLIT if chunks.should_split(run) else JOB_TYPE_ASYNC


# --- Storing an upload -------------------------------------------------------------------


@dataclass(frozen=True)
class StoredUpload:
    """An upload kept in the audio storage under its own UUID name, measured as received."""

    name: str
    size_bytes: int
    sha256: str
    # Where its bytes are on this machine until the request ends: the stored file itself on
    # a local folder, the spooled upload otherwise.
    local_path: Path


def store_upload(spooled: Path) -> StoredUpload:
    """Keep the spooled upload in the audio storage. Raises StorageUnavailable (503) when the
    store cannot take it, having kept nothing."""
    name = uuid.uuid4().hex
    size_bytes, sha256 = spooled.stat().st_size, _sha256(spooled)
    storage.store_file(name, spooled)
    local_path = spooled if spooled.exists() else Path(storage.audio_storage().path(name))
    metrics.upload_stored(size_bytes)
    return StoredUpload(name, size_bytes, sha256, local_path)


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


def spool_upload(upload: UploadedFile) -> Path:
    """The upload as a file on disk: Django's temporary file, or a copy made chunk by chunk."""
    temporary_path = getattr(upload, "temporary_file_path", None)
    if temporary_path is not None:
        return Path(temporary_path())
    handle, name = tempfile.mkstemp(dir=settings.UPLOAD_TEMP_DIR)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Sync transcription ------------------------------------------------------------------


@contextmanager
def decided_mode(requested: str, size_bytes: int, duration_ms: int) -> Iterator[str]:
    """The run's mode: sync or async. A sync run holds one of this process's
    TRANSCRIBE_SYNC_CONCURRENCY slots until the block ends.

    `auto` takes a free slot or goes to the queue; `sync` waits up to TRANSCRIBE_SYNC_WAIT_MS
    for one, then goes to the queue too (answered 202, as any queued run).
    """
    if settings.TASKS_INLINE_PROCESSING:
        yield RunMode.SYNC
        return
    if not _sync_allowed(requested, size_bytes, duration_ms):
        yield RunMode.ASYNC
        return
    slots, _ = _sync_capacity(settings.TRANSCRIBE_SYNC_CONCURRENCY)
    wait = settings.TRANSCRIBE_SYNC_WAIT_MS / 1000 if requested == "sync" else 0
    if not slots.acquire(timeout=wait):
        yield RunMode.ASYNC
        return
    try:
        yield RunMode.SYNC
    finally:
        slots.release()


def _sync_allowed(requested: str, size_bytes: int, duration_ms: int) -> bool:
    """Whether this file may be transcribed in the request; `sync` out of limits is refused."""
    if requested == "async":
        return False
    if settings.TRANSCRIBE_SYNC_CONCURRENCY == 0:
        if requested == "sync":
            raise Invalid("sync_disabled", "Sync transcription is turned off here.", field="mode")
        return False
    within = (
        size_bytes <= settings.TRANSCRIBE_SYNC_MAX_BYTES
        and duration_ms <= settings.TRANSCRIBE_SYNC_MAX_DURATION_MS
    )
    if requested == "sync" and not within:
        raise Invalid(
            "sync_limits_exceeded",
            f"mode=sync takes files up to {settings.TRANSCRIBE_SYNC_MAX_BYTES} bytes and "
            f"{settings.TRANSCRIBE_SYNC_MAX_DURATION_MS} ms; use mode=async or auto.",
            field="mode",
        )
    return within


def sync_capacity() -> tuple[threading.BoundedSemaphore, ThreadPoolExecutor]:
    """This process's sync slots and the threads that hold them."""
    return _sync_capacity(settings.TRANSCRIBE_SYNC_CONCURRENCY)


@functools.cache
def _sync_capacity(concurrency: int) -> tuple[threading.BoundedSemaphore, ThreadPoolExecutor]:
    """This process's sync slots and the threads that run sync jobs, made on first use (not at
    import: a worker or a management command never needs them)."""
    size = max(1, concurrency)
    return threading.BoundedSemaphore(size), ThreadPoolExecutor(
        max_workers=size, thread_name_prefix="sync-transcribe"
    )


def transcribe_here(run: TranscriptRun) -> None:
    """Run a sync run's job in this process and wait for it; `run` is refreshed after.

    In a thread of its own, with its own database connection, as a worker would run it.
    """
    job_id = run.jobs.values_list("pk", flat=True).get()
    _, pool = _sync_capacity(settings.TRANSCRIBE_SYNC_CONCURRENCY)
    # In the request's context: the attempt's log lines carry its request id.
    pool.submit(contextvars.copy_context().run, _run_job_and_close, job_id).result()
    run.refresh_from_db()


def _run_job_and_close(job_id: uuid.UUID) -> None:
    try:
        run_job(str(job_id))
    finally:
        connections.close_all()
        # The web process keeps what the model freed as free heap otherwise (lingoloop.malloc).
        release_free_memory()


# --- Limits -------------------------------------------------------------------------------

RATE_WINDOW = timedelta(minutes=1)


def check_user_limits(*, owner: User) -> None:
    """USER_MAX_ACTIVE_RUNS and UPLOADS_PER_MINUTE, counted from the run table itself: exact
    across web processes, and independent of Redis."""
    runs = TranscriptRun.objects.filter(owner=owner)
    active = runs.filter(status__in=[RunStatus.QUEUED, RunStatus.PROCESSING]).count()
    if active >= settings.USER_MAX_ACTIVE_RUNS:
        raise LimitReached(
            "too_many_active_runs",
            f"You have {active} runs queued or processing; the limit is "
            f"{settings.USER_MAX_ACTIVE_RUNS}. Wait for some to finish or cancel them.",
            retry_after=30,
        )
    since = timezone.now() - RATE_WINDOW
    recent = runs.filter(created_at__gt=since).order_by("created_at")
    if recent.count() >= settings.UPLOADS_PER_MINUTE:
        oldest = recent.values_list("created_at", flat=True)[0]
        wait = math.ceil((oldest - since).total_seconds())
        raise LimitReached(
            "throttled",
            f"You have uploaded {settings.UPLOADS_PER_MINUTE} files in the last minute, the "
            f"most this service takes; try again in {wait} s.",
            retry_after=wait,
        )


# --- Cancel, retry, delete -----------------------------------------------------------------


def run_cancel(*, run: TranscriptRun) -> TranscriptRun:
    """Queued: cancelled at once. Processing: stops at the next segment. Finished: 409."""
    with transaction.atomic():
        now = timezone.now()
        if TranscriptRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
            status=RunStatus.CANCELLED, cancel_requested_at=now, finished_at=now
        ):
            chunks.stop_queued_chunks(run)  # a retried run's chunks, waiting for a worker
            run.jobs.filter(status=JobStatus.QUEUED).update(
                status=JobStatus.CANCELLED, finished_at=now, picked_by="", picked_until=None
            )
            run.refresh_from_db()
            publish_finished(run)
            announce_queue_positions()
            return run
        if TranscriptRun.objects.filter(
            pk=run.pk, status=RunStatus.PROCESSING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now):
            if run.chunks.exists():
                # Split into chunks: its queued chunks never start, those in flight stop at
                # their next segment, and the run ends now, whether any chunk runs or not.
                chunks.stop_queued_chunks(run)
                TranscriptRun.objects.filter(pk=run.pk).update(
                    status=RunStatus.CANCELLED, finished_at=now, estimated_finish_at=None
                )
                run.refresh_from_db()
                publish_finished(run)
                announce_queue_positions()
                return run
            run.refresh_from_db()
            return run
    run.refresh_from_db()
    if run.is_finished:
        raise Conflict(
            "run_finished", f"The run has already {run.status}; there is nothing to cancel."
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
            detected_language="",
            language_probability=None,
            segment_edits={},  # corrections of segments that a new transcription replaces
            error_code="",
            error_message="",
            started_at=None,
            finished_at=None,
            cancel_requested_at=None,
        ):
            run.refresh_from_db()
            raise Conflict(
                "run_not_retryable",
                f"Only failed or cancelled runs can be retried; this one is {run.status}.",
            )
        if run.audio.purged_at is not None:
            raise Conflict(
                "audio_purged", "The audio of this run was deleted by retention; upload it again."
            )
        # A run split into chunks redoes only those that did not succeed; any other run (or
        # one whose split never finished) starts again from its audio.
        if not chunks.chunks_retry(run):
            job_enqueue(job_type=_async_job_type(run), run_id=run.pk, priority=run.priority)
        run.refresh_from_db()
        if run.status == RunStatus.QUEUED:
            publish(run, "update")
        announce_queue_positions()
    return run


def run_delete(*, run: TranscriptRun) -> None:
    """Delete a finished run, and its audio with its file once no other run uses it."""
    if not run.is_finished:
        raise Conflict("run_active", "Cancel the run before deleting it.")
    audio = run.audio
    with transaction.atomic():
        pieces = list(run.chunks.values_list("stored_name", flat=True))
        run.delete()
        storage.delete_later(pieces)  # a failed or cancelled run's chunks kept theirs
        if not audio.runs.exists():
            audio.delete()  # and its file, after the commit (storage.stored_row_deleted)


# --- Corrections of a finished transcript ----------------------------------------------------

SEGMENT_TEXT_MAX_LENGTH = 1000
_WHITESPACE = re.compile(r"\s+")


class NoSuchSegment(LookupError):
    """The run's transcript has no segment with this id."""


def clean_segment_text(text: str) -> str:
    """A correction as it is kept: at most SEGMENT_TEXT_MAX_LENGTH characters as sent, no
    control characters, NFC, on one line (a line break would end an SRT or VTT cue early).
    Empty is allowed: the segment then says nothing, as the model's empty segments do."""
    if has_control_characters(text) or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise Invalid(
            "invalid_characters",
            "The text may not contain NUL, other control characters or lone surrogates.",
            field="text",
        )
    if len(text) > SEGMENT_TEXT_MAX_LENGTH:  # as sent: what the API's schema says
        raise Invalid(
            "max_length",
            f"A segment's text may be at most {SEGMENT_TEXT_MAX_LENGTH} characters long.",
            field="text",
        )
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


@contextmanager
def _editable_run(run: TranscriptRun, segment_id: int) -> Iterator[tuple[TranscriptRun, dict]]:
    """The run's row, locked until the block ends (two corrections at once: the second waits
    and then reads the first, so neither is lost and the last one wins), with the segment."""
    with transaction.atomic():
        locked = TranscriptRun.objects.select_for_update().get(pk=run.pk)
        if locked.status != RunStatus.SUCCEEDED:
            raise Conflict(
                "transcript_not_ready",
                f"The run is {locked.status}; only the transcript of a succeeded run can be "
                "corrected.",
            )
        segment = locked.segment(segment_id)
        if segment is None:
            raise NoSuchSegment(segment_id)
        yield locked, segment
        locked.save(update_fields=["segment_edits"])


def segment_correct(*, run: TranscriptRun, segment_id: int, text: str | None) -> dict:
    """Keep `text` as the correction of one segment of a succeeded run; the model's segment
    stays as it was. The model's own text again removes the correction. No event is sent:
    the run has finished, and its watchers' streams have ended.

    Returns the segment as the run now shows it (`TranscriptRun.corrected_segments`). No
    `text`: no change.
    """
    text = None if text is None else clean_segment_text(text)
    with _editable_run(run, segment_id) as (locked, segment):
        key = str(segment_id)
        if text is None:
            pass
        elif text == str(segment.get("text", "")).strip():
            locked.segment_edits.pop(key, None)
        else:
            edited_at = timezone.now().isoformat().replace("+00:00", "Z")
            locked.segment_edits[key] = {"text": text, "editedAt": edited_at}
    return _shown_segment(locked, segment)


def segment_revert(*, run: TranscriptRun, segment_id: int) -> dict:
    """The model's text again for one segment: its correction is dropped (none: no change)."""
    with _editable_run(run, segment_id) as (locked, segment):
        locked.segment_edits.pop(str(segment_id), None)
    return _shown_segment(locked, segment)


def _shown_segment(run: TranscriptRun, segment: dict) -> dict:
    shown = run.with_edit(segment)
    return {**shown, "edited": shown.get("edited", False)}
