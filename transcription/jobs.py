"""The transcription job handler: what a worker (or a web process, for sync runs) does."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from uuid import UUID

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import F, Func, JSONField, QuerySet, Sum, Value
from django.urls import reverse
from django.utils import timezone

from lingoloop import metrics
from tasks_admin.handlers import (
    Attempt,
    BaseJobHandler,
    Cancelled,
    ClaimLost,
    PermanentError,
    RetryLater,
    Subject,
)
from tasks_admin.models import Job, JobStatus
from transcription import engine, storage
from transcription.events import (
    announce_queue_positions,
    publish,
    publish_attempt_error,
    publish_finished,
)
from transcription.models import (
    Audio,
    Channels,
    RunChunk,
    RunMode,
    RunStatus,
    TranscriptRun,
    speaker_label,
)
from transcription.signals import run_started

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler, _AsSqlType

JOB_TYPE_ASYNC = "transcribe_long"
JOB_TYPE_SYNC = "transcribe_sync"

logger = logging.getLogger(__name__)

# At most this often a run's progress is written and an `update` sent as segments arrive; the
# last one before `done` always goes out.
T = TypeVar("T")

UPDATE_INTERVAL_SECONDS = 0.5
# A processing run gets an `update` at least this often (DESIGN.md asks for one every 2 s),
# segments or not: loading the model, or inside a long window or batch of the engine, its
# progress moves on at the measured rate.
QUIET_UPDATE_SECONDS = 1.0
# Interpolated progress stops here: only a point the engine reports gets closer to 100.
INTERPOLATION_CEILING = 99.0

ACTIVE = (RunStatus.QUEUED, RunStatus.PROCESSING)


class ProgressClock:
    """Where an attempt's decoding stands, from what the engine reports and the time since.

    The engine reports real points: a window's decoding begins (all before it is done; the
    first one also says the model is loaded) and a segment ends. Between them progress moves
    on from the furthest real point at the attempt's pace (percent of the audio per wall
    second: the model load is not in it), but never past the end of the window being decoded
    (no segment of it can end later), never backwards, and never to 100. The ETA is the time
    the rest takes at that pace. The pace is measured from the first window's last point on,
    once there is a point past it: a batched run's first window is short and decoded at
    another pace than the full batches after it. Plain arithmetic on `time.monotonic()` values.
    """

    def __init__(self, *, assumed_rate: float | None = None) -> None:
        # Percent per second to go by until this attempt's first real point: the pace of
        # this process's previous attempt of the same kind.
        self.assumed_rate = assumed_rate
        self.decoding_since: float | None = None
        self.reached = 0.0  # the furthest real point, percent
        self.reached_at = 0.0
        self.anchor = (0.0, 0.0)  # where the pace is measured from: (percent, time)
        self.window_end = 0.0
        self.shown = 0.0

    def window(self, start: float, end: float, now: float) -> None:
        if self.decoding_since is None:
            self.decoding_since = self.reached_at = now
            self.anchor = (0.0, now)
        elif self.anchor[0] == 0.0 and start > 0:
            # The first window is done: the pace from here on, as of its last point. Not as of
            # this call: a batched window's points all come at its end and the next window's
            # audio is read before its call, so measured from the call the first stretch left
            # out one reading (0.45 s of 4 per 120 s window) and the ETA came out 10-25 %
            # short (bench/progress.py). A first window without a point: as of this call.
            self.anchor = (start, self.reached_at if self.reached > 0 else now)
        self.point(start, now)
        self.window_end = end

    def point(self, percent: float, now: float) -> None:
        if percent > self.reached:
            self.reached, self.reached_at = percent, now

    def measured_rate(self) -> float | None:
        """This attempt's own pace, percent per second: since the anchor when there is a
        real point past it, else since decoding began; None before any real point."""
        if self.decoding_since is None or self.reached <= 0:
            return None
        anchor_percent, anchor_at = self.anchor
        if self.reached > anchor_percent and self.reached_at > anchor_at:
            return (self.reached - anchor_percent) / (self.reached_at - anchor_at)
        spent = self.reached_at - self.decoding_since
        return self.reached / spent if spent > 0 else None

    def _rate(self) -> float | None:
        return self.measured_rate() or self.assumed_rate

    def progress(self, now: float) -> float:
        rate = self._rate()
        if rate is not None and self.decoding_since is not None:
            moved = self.reached + rate * (now - self.reached_at)
            self.shown = max(self.shown, min(moved, self.window_end, INTERPOLATION_CEILING))
        self.shown = max(self.shown, self.reached)
        return self.shown

    def seconds_left(self, now: float) -> float | None:
        """At the attempt's pace; None until there is a pace to go by."""
        progress = self.progress(now)
        rate = self._rate()
        if self.decoding_since is None or rate is None or progress <= 0:
            return None
        return (100 - progress) / rate


@dataclass(frozen=True)
class Pace:
    """How fast this process decodes one kind of attempt (a model, sequential or a batch
    size), in audio seconds per wall second, as its last attempt of that kind measured it:
    what a new attempt's progress goes by until its own first real point."""

    model: str
    batch_size: int

    _known: ClassVar[dict[tuple[str, int], float]] = {}

    def assumed_rate(self, audio_seconds: float) -> float | None:
        """Percent of `audio_seconds` per wall second; None when nothing was measured yet."""
        pace = self._known.get((self.model, self.batch_size))
        return None if pace is None or audio_seconds <= 0 else pace * 100 / audio_seconds

    def learn(self, rate: float | None, audio_seconds: float) -> None:
        """Keep the pace of an attempt that decoded `audio_seconds` at `rate` percent/s."""
        if rate is not None:
            self._known[(self.model, self.batch_size)] = rate * audio_seconds / 100


class AppendedJson(Func):
    """A JSON array column with `items` added at its end, in the database: a flush sends
    the new segments only, not the whole transcript so far again (which made the writes of
    a long run grow with the square of its length).

    PostgreSQL concatenates jsonb arrays with `||`; SQLite keeps JSON as text and appends
    with `json_insert(column, '$[#]', item, …)`.
    """

    arg_joiner = " || "
    template = "(%(expressions)s)"
    output_field = JSONField()

    def __init__(self, column: str, items: list[dict[str, Any]]) -> None:
        super().__init__(F(column), Value(items, output_field=JSONField()))
        self.items = items

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra_context: Any
    ) -> _AsSqlType:
        column_sql, params = compiler.compile(self.get_source_expressions()[0])
        appends = ", ".join(["'$[#]', json(%s)"] * len(self.items))
        return f"json_insert({column_sql}, {appends})", (
            *params,
            *(json.dumps(item) for item in self.items),
        )


class ProgressWriter:
    """Collects segments as the engine yields them; writes and announces them, throttled,
    with the progress and ETA of `clock`.

    Two threads call it: the attempt's (the engine's callbacks) and the ticker's (`ticking`),
    which sends an `update` whenever the engine has been quiet for QUIET_UPDATE_SECONDS. A
    lock makes their writes one sequence: progress never goes back and segments go out in
    order, each once.
    """

    def __init__(
        self, run: TranscriptRun, attempt: Attempt, *, assumed_rate: float | None = None
    ) -> None:
        self.run = run
        self.attempt = attempt
        self.unsent: list[dict[str, Any]] = []
        self.clock = ProgressClock(assumed_rate=assumed_rate)
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()
        self.detected: dict[str, Any] = {}
        self.database_away = False  # logged once an outage, not at every segment

    def window(self, start: float, end: float) -> None:
        with self.lock:
            self.clock.window(start, end, time.monotonic())

    def language(self, code: str, probability: float) -> None:
        """Detected: written and announced with the next update."""
        with self.lock:
            self.detected = {"detected_language": code, "language_probability": probability}

    def segment(self, item: dict[str, Any], progress: float) -> None:
        # Every segment checks the claim (a heartbeat reads only memory) and honours a
        # cancel: the engine loop's safe point.
        self.attempt.heartbeat()
        if self._outlasting_the_database(self._cancel_requested, default=False):
            raise Cancelled()
        with self.lock:
            self.unsent.append(item)
            self.clock.point(progress, time.monotonic())
            if time.monotonic() - self.last_flush >= UPDATE_INTERVAL_SECONDS:
                self._outlasting_the_database(self.flush, default=None)

    def _cancel_requested(self) -> bool:
        return TranscriptRun.objects.filter(
            pk=self.run.pk, cancel_requested_at__isnull=False
        ).exists()

    def _outlasting_the_database(self, step: Callable[[], T], *, default: T) -> T:
        """`step`, or `default` when the database does not answer (stopped, restarting).

        The engine goes on meanwhile: a database shorter away than the lease costs the
        attempt nothing (the lease keeper holds on, LeaseKeeper). What a failed flush did not
        write stays unsent, to go out with the next flush, in the same order and once (its
        event is stored in the transaction that writes it). A cancel is seen at the first
        segment after the database is back."""
        try:
            value = step()
        except (OperationalError, InterfaceError):
            if not self.database_away:
                logger.warning(
                    "run %s: the database does not answer; transcribing on, its progress is "
                    "written once it is back",
                    self.run.pk,
                    exc_info=True,
                )
            self.database_away = True
            self.last_flush = time.monotonic()  # the next try waits an update interval
            close_old_connections()  # the next try opens a new connection
            return default
        if self.database_away:
            logger.info("run %s: the database answers again", self.run.pk)
            self.database_away = False
        return value

    def tick(self) -> float:
        """The ticker's turn: an `update` if none went out for QUIET_UPDATE_SECONDS. Returns
        the seconds until the next one is due."""
        with self.lock:
            quiet = time.monotonic() - self.last_flush
            if quiet >= QUIET_UPDATE_SECONDS:
                self._outlasting_the_database(self.flush, default=None)
                quiet = 0.0
        return QUIET_UPDATE_SECONDS - quiet

    def flush(self) -> None:
        """Write and announce progress, ETA and the unsent segments. Call it holding `lock`."""
        now = time.monotonic()
        progress = self.clock.progress(now)
        left = self.clock.seconds_left(now)
        finish_at = None if left is None else timezone.now() + timedelta(seconds=left)
        changes: dict[str, Any] = {"progress": progress, "estimated_finish_at": finish_at}
        if self.unsent:
            changes["segments"] = AppendedJson("segments", self.unsent)
        with transaction.atomic():
            if not held_run(self.attempt).update(**changes, **self.detected):
                raise ClaimLost(f"run {self.run.pk} is no longer processing")
            self.run.progress = progress
            self.run.estimated_finish_at = finish_at
            for field, value in self.detected.items():
                setattr(self.run, field, value)
            publish(self.run, "update", newSegments=self.unsent)
        self.unsent = []
        self.detected = {}
        self.last_flush = now

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        """Updates keep going out while the block runs, however long the engine is quiet."""
        stopped = threading.Event()
        ticker = threading.Thread(
            # In the attempt's context: its log lines carry the run's and job's ids.
            target=contextvars.copy_context().run,
            args=(self._tick_until, stopped),
            name=f"progress-{self.run.pk}",
            daemon=True,
        )
        ticker.start()
        try:
            yield
        finally:
            stopped.set()
            ticker.join(timeout=10)

    def _tick_until(self, stopped: threading.Event) -> None:
        """The ticker thread, on a database connection of its own. A lost claim ends it (the
        attempt finds out at its next safe point); any other error is logged and the next
        tick tries again."""
        try:
            wait = QUIET_UPDATE_SECONDS
            while not stopped.wait(max(wait, 0.01)):
                try:
                    wait = self.tick()
                except (ClaimLost, Cancelled):  # the attempt stops at its next safe point
                    return
                except Exception:
                    logger.warning("run %s: progress update failed", self.run.pk, exc_info=True)
                    wait = QUIET_UPDATE_SECONDS
        finally:
            connection.close()


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
                estimated_finish_at=None,
                segments=[],
                text="",
                detected_language="",
                language_probability=None,
                error_code="",
                error_message="",
            ):
                raise Cancelled()
            run.refresh_from_db()
            publish(run, "update", newSegments=[])
            run_started.send(sender=TranscriptRun, run=run)
            if run.mode == RunMode.ASYNC:  # a sync run's job was never in anyone's way
                announce_queue_positions()

    def run(self, attempt: Attempt) -> Transcribed:
        run = self._run(attempt.job)
        if run.audio.purged_at is not None:
            raise PermanentError("audio_missing", "The audio file is no longer stored.")
        with audio_file(run.audio.stored_name) as path:
            return self._transcribe(
                attempt,
                run,
                path,
                duration_ms=run.audio.duration_ms,
                make_writer=lambda rate: ProgressWriter(run, attempt, assumed_rate=rate),
            )

    def _transcribe(
        self,
        attempt: Attempt,
        run: TranscriptRun,
        path: Path,
        *,
        duration_ms: int,
        make_writer: Callable[[float | None], ProgressWriter],
        language: str | None = None,
    ) -> Transcribed:
        """Decode `path` (`duration_ms` long: the run's audio, or a piece of it) with the
        run's options; `make_writer(assumed_rate)` gives what reports its progress.
        `language`: what to decode in when the run asked for none (a split run's chunks
        are decoded in the language detected once for the whole run)."""
        options = engine.Options(
            model=run.model,
            language=run.language or language,
            task=run.task,
            word_timestamps=run.word_timestamps,
            vad_filter=run.vad_filter,
            beam_size=run.beam_size,
            initial_prompt=run.initial_prompt or None,
            hotwords=run.hotwords or None,
        )
        allow_batched = run.mode == RunMode.ASYNC
        pace = Pace(
            run.model,
            engine.batch_size_for(options, duration_ms=duration_ms, allow_batched=allow_batched),
        )
        seconds = duration_ms / 1000
        writer = make_writer(pace.assumed_rate(seconds))
        began = time.monotonic()
        try:
            with writer.ticking():
                common: dict[str, Any] = {
                    "duration_ms": duration_ms,
                    "max_duration_ms": self.max_duration_ms(),
                    "on_segment": writer.segment,
                    "on_window": writer.window,
                    "on_language": writer.language,
                    "allow_batched": allow_batched,
                }
                if run.channels == Channels.SEPARATE:
                    speakers = [
                        speaker_label(run.speaker_names, k) for k in range(run.audio.channels)
                    ]
                    result = engine.transcribe_channels(path, options, speakers=speakers, **common)
                else:
                    result = engine.transcribe(path, options, **common)
        except engine.EngineError as exc:
            if exc.permanent:
                raise PermanentError(exc.code, exc.message) from exc
            raise
        pace.learn(writer.clock.measured_rate(), seconds)
        wall = time.monotonic() - began
        metrics.transcribed(
            model=run.model, mode=run.mode, audio_seconds=seconds, wall_seconds=wall
        )
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
        publish_finished(run, text=run.text)

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

    def runs_finished(self, jobs: QuerySet[Job]) -> int:
        """The succeeded runs among these jobs', each once: a split run has a job for each
        of its chunks, and succeeds with the last of them."""
        return (
            jobs.filter(job_type=self.job_type, run__status=RunStatus.SUCCEEDED)
            .values("run")
            .distinct()
            .count()
        )

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
            status=RunStatus.QUEUED, progress=0.0, estimated_finish_at=None
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
        publish_finished(run)

    def cancelled(self, job: Job) -> None:
        run = self._end(job, RunStatus.CANCELLED)
        if run is not None:
            publish_finished(run)


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
        with transaction.atomic():
            if Audio.objects.filter(pk=audio.pk, purged_at__isnull=True).update(
                purged_at=timezone.now()
            ):
                # With the pieces its failed or cancelled runs split it into: no retry now.
                pieces = RunChunk.objects.filter(run__audio=audio).values_list(
                    "stored_name", flat=True
                )
                storage.delete_later([audio.stored_name, *pieces])
                purged += 1
    return purged


@contextlib.contextmanager
def audio_file(name: str) -> Iterator[Path]:
    """A local path of a stored file for the length of an attempt; a store that is down
    fails the attempt for a retry, a file that is gone fails it for good."""
    try:
        with storage.local_file(name) as path:
            yield path
    except storage.StoredFileMissing:
        raise PermanentError("audio_missing", "The audio file is no longer stored.") from None
    except storage.StorageUnavailable as exc:
        raise RetryLater(
            "storage_unavailable", f"the audio store cannot be reached: {exc.detail}"
        ) from exc
