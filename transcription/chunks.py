"""Long runs split across the cluster (issue 14).

An async run longer than CHUNK_LONGER_THAN_SECONDS gets a `transcribe_split` job instead of a
`transcribe_long` one. The split job decodes the audio once, a little at a time, cuts it at
silences into pieces of about CHUNK_SECONDS (`cut_pieces`), keeps each piece as a 16 kHz mono
WAV in the audio storage and, as soon as it is stored, creates its `RunChunk` row and its
`transcribe_chunk` job: another worker starts on the first piece while the split cuts the
rest (measured: the serial cut of a 20-minute file took 4-5 s of a two-cluster run's 36 s).
Any worker of any cluster takes chunk jobs as it takes any other job; each chunk job
transcribes its piece and keeps its segments (times in the whole audio) as soon as it
succeeds. Holding the run's row lock, it then copies every chunk that is now contiguous from
the front into the run's transcript (`merge_ready_chunks`), so segments reach the run, and
its watchers' `newSegments`, in order and each once; the merge that finds every chunk merged
once the split job has succeeded ends the run.

A run whose model is to detect its language has it detected once, by the split, from the
start of the first piece (as a run transcribed whole has it from its first window), and
every chunk is transcribed in it: a piece that starts with music or a quote in another
language is not a language of its own.

A split attempt that fails, or that a later attempt replaces (its worker was killed), leaves
no chunk behind: its own pieces are forgotten when it fails, and a split attempt starts by
forgetting what an earlier one left (`_forget_chunks`).

Everything a chunk job writes about its run (progress, segments, the end) is written under
the run's row lock (`_locked_run`), so writers in different processes take turns, the run's
progress is the duration-weighted mean of its chunks' and never goes back, and its events
are delivered in the order they were written (transcription/events.py, `deliver_outbox`).

A chunk's failure is its own: a failed attempt, a lease that ran out (kill -9) or a worker's
shutdown puts that chunk alone back in the queue, and the run stays `processing`. A chunk
that fails for good fails the run (queued siblings are cancelled; siblings in flight finish
and keep their result), and a retry of the run re-queues only the chunks that did not
succeed (`chunks_retry`).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
import uuid
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, F, QuerySet, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from lingoloop.refusals import Refused
from tasks_admin.handlers import Attempt, Cancelled, ClaimLost, PermanentError, RetryLater
from tasks_admin.models import Job, JobStatus
from tasks_admin.services import job_enqueue
from transcription import catalogue, engine, storage
from transcription.events import (
    announce_queue_positions,
    publish,
    publish_attempt_error,
    publish_finished,
)
from transcription.jobs import (
    ACTIVE,
    AppendedJson,
    ProgressWriter,
    Transcribed,
    TranscribeHandler,
    audio_file,
)
from transcription.models import (
    JOB_TYPE_CHUNK,
    JOB_TYPE_SPLIT,
    Channels,
    ChunkStatus,
    RunChunk,
    RunMode,
    RunStatus,
    TranscriptRun,
    joined_text,
)
from transcription.pcm import SAMPLE_RATE, AudioTooLong, first_seconds, pcm_chunks
from transcription.signals import run_started

logger = logging.getLogger(__name__)

__all__ = ["JOB_TYPE_CHUNK", "JOB_TYPE_SPLIT", "ChunkHandler", "SplitHandler", "should_split"]

# A run's progress stays under this until its last chunk is merged: 100 is for `done` alone.
PROGRESS_CEILING = 99.9


def should_split(run: TranscriptRun) -> bool:
    """Whether this async run is split into chunks: it is longer than
    CHUNK_LONGER_THAN_SECONDS (0: none is), and its channels are mixed (the pieces are
    mono: a run of separate channels is one job)."""
    limit = settings.CHUNK_LONGER_THAN_SECONDS
    return limit > 0 and run.audio.duration_ms > limit * 1000 and run.channels != Channels.SEPARATE


def expected_pieces(run: TranscriptRun) -> int:
    """How many pieces this run is cut into (1: it is not split, or is a sync run's), as
    many workers as can share it: its ETA while it waits."""
    if run.mode != RunMode.ASYNC or not should_split(run):
        return 1
    return piece_count(run.audio.duration_ms, settings.CHUNK_SECONDS * 1000)


# --- Where to cut ----------------------------------------------------------------------------

# A cut is looked for this far either side of its target (at most a quarter of a piece).
SEARCH_SECONDS = 15.0
# A pause at least this long is a place to cut: a cut inside one splits no word.
MIN_CUT_SILENCE_SECONDS = 0.3
# Silences whose widths differ by less than this count as equally wide: the nearer one wins.
WIDTH_STEP_SECONDS = 0.1
# Without a pause, the quietest stretch of this length is where the cut goes.
ENERGY_FRAME_SECONDS = 0.05


def speech_in(audio: np.ndarray) -> list[tuple[int, int]]:
    """Where faster-whisper's Silero VAD hears speech in `audio` (16 kHz float32), as sample
    ranges. Pauses from 160 ms on separate spans (the default waits for 2 s of silence) and
    spans are padded by 100 ms only (the default's 400 ms each side swallow a 1 s pause)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=160, speech_pad_ms=100)
    return [(span["start"], span["end"]) for span in get_speech_timestamps(audio, options)]


def silences(speech: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The stretches of `length` samples that no span of `speech` (sorted) covers."""
    gaps = []
    cursor = 0
    for start, end in [*speech, (length, length)]:
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    return gaps


def choose_cut(speech: list[tuple[int, int]], audio: np.ndarray, target: int) -> int:
    """Where to cut `audio` (a window around `target`, a sample index in it), given where
    its `speech` is: the middle of its widest pause, the nearest to `target` among pauses as
    wide; with no pause of MIN_CUT_SILENCE_SECONDS, its quietest point nearest to `target`."""
    length = audio.shape[0]
    step = WIDTH_STEP_SECONDS * SAMPLE_RATE
    pauses = [
        (start, end)
        for start, end in silences(speech, length)
        if end - start >= MIN_CUT_SILENCE_SECONDS * SAMPLE_RATE
    ]
    if pauses:
        start, end = max(
            pauses, key=lambda p: (round((p[1] - p[0]) / step), -abs((p[0] + p[1]) // 2 - target))
        )
        return (start + end) // 2
    return quietest_point(audio, target)


def quietest_point(audio: np.ndarray, target: int) -> int:
    """The middle of the quietest ENERGY_FRAME_SECONDS of `audio`, the nearest to `target`
    among the quietest."""
    frame = int(ENERGY_FRAME_SECONDS * SAMPLE_RATE)
    frames = audio.shape[0] // frame
    if frames == 0:
        return target
    energy = np.square(audio[: frames * frame].astype(np.float64)).reshape(frames, frame).sum(1)
    centres = np.arange(frames) * frame + frame // 2
    quietest = np.flatnonzero(energy <= energy.min() * (1 + 1e-9) + 1e-12)
    return int(min(centres[quietest], key=lambda c: abs(int(c) - target)))


def find_cut(audio: np.ndarray, target: int) -> int:
    """Where to cut `audio`, a window around its sample `target`: see `choose_cut`."""
    return choose_cut(speech_in(audio), audio, target)


# --- Cutting the audio into pieces -----------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A piece of the audio: samples [start, end) of the whole, as a WAV at `path`."""

    index: int
    start: int
    end: int
    path: Path


@dataclass(frozen=True)
class Language:
    """A language as the model detected it."""

    code: str
    probability: float

    def as_fields(self) -> dict[str, Any]:
        """As a run or a chunk keeps it."""
        return {"detected_language": self.code, "language_probability": self.probability}


class _WavPiece:
    """A 16 kHz mono 16-bit WAV written as the samples come."""

    def __init__(self, folder: Path) -> None:
        handle, name = tempfile.mkstemp(dir=folder, suffix=".wav")
        self.path = Path(name)
        self.out = wave.open(open(handle, "wb"), "wb")  # noqa: SIM115  # closed in close()
        self.out.setnchannels(1)
        self.out.setsampwidth(2)
        self.out.setframerate(SAMPLE_RATE)

    def write(self, samples: np.ndarray) -> None:
        # pcm_chunks made floats of 16-bit samples (x / 32768): this gives them back exactly.
        pcm = np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2")
        self.out.writeframesraw(pcm.tobytes())  # the header's sizes are written at close

    def close(self) -> Path:
        self.out.close()
        return self.path


# Pieces get shorter from the first to the last, from 1 + TAPER to 1 - TAPER times their mean
# length. The split hands them out as it cuts them, so a piece cut later starts later, and
# the split's own worker starts on one only once the whole file is decoded: shorter pieces
# at the end let it end with the others. Measured with two one-thread clusters on 20 minutes
# (bench/chunked.py): with pieces of one length the split's worker ended 2.6-3.7 s after
# the other (the split took 3-3.5 s, its first piece was queued after 0.8 s).
TAPER = 0.2


def piece_count(total: int, piece: int) -> int:
    """Into how many pieces of about `piece` a length of `total` is cut: as many as come
    nearest to `piece` each."""
    return max(1, round(total / piece))


def cut_targets(total: int, piece: int) -> list[int]:
    """Where the cuts of `total` samples into pieces of about `piece` samples should go
    (`piece_count` of them), their lengths tapering by TAPER either side of the mean, so that
    workers sharing them finish together."""
    count = piece_count(total, piece)
    if count == 1:
        return []
    weights = [1 + TAPER * (1 - 2 * k / (count - 1)) for k in range(count)]
    ends = itertools.accumulate(weights)
    return [round(total * end / count) for end in itertools.islice(ends, count - 1)]


# Decoded frames are joined into blocks of about this many samples before they are cut and
# written: an Opus frame is 20 ms, and the work per block (a heartbeat, a write) is the same
# whatever its length.
BLOCK_SAMPLES = SAMPLE_RATE


def blocks(chunks: Iterable[np.ndarray], size: int = BLOCK_SAMPLES) -> Iterator[np.ndarray]:
    """The consecutive arrays of `chunks` joined into arrays of at least `size` samples (the
    last may be shorter)."""
    held: list[np.ndarray] = []
    length = 0
    for chunk in chunks:
        held.append(chunk)
        length += chunk.shape[0]
        if length >= size:
            yield np.concatenate(held)
            held, length = [], 0
    if held:
        yield np.concatenate(held)


def cut_pieces(
    chunks: Iterable[np.ndarray],
    *,
    total_samples: int,
    piece_samples: int,
    folder: Path,
    safe_point: Callable[[], None] = lambda: None,
) -> Iterator[Piece]:
    """Cut decoded audio (consecutive 16 kHz float32 arrays, `total_samples` long as
    measured) into WAV pieces in `folder`, each cut at `find_cut` within SEARCH_SECONDS of
    its target (`cut_targets`).

    Only the window around the next target and the chunk being read are held: the samples
    before the window go to the current piece's file as they come, so memory does not grow
    with the audio or the pieces. `safe_point()` is called for every block read (`blocks`;
    a heartbeat: it may raise to stop). Audio that turns out shorter than measured makes
    fewer pieces.
    """
    targets = cut_targets(total_samples, piece_samples)
    half = int(min(SEARCH_SECONDS * SAMPLE_RATE, piece_samples / 4))
    held: list[np.ndarray] = []  # samples from `held_from` on, not written yet
    held_from = 0
    held_length = 0
    piece_start = 0
    index = 0
    current = _WavPiece(folder)
    for chunk in blocks(chunks):
        safe_point()
        held.append(chunk)
        held_length += chunk.shape[0]
        if targets and held_from + held_length >= targets[0] + half:
            buffer = np.concatenate(held)
            while targets and held_from + buffer.shape[0] >= targets[0] + half:
                low = targets.pop(0) - half
                window = buffer[low - held_from : low - held_from + 2 * half]
                cut = max(low + find_cut(window, half), piece_start + 1)
                current.write(buffer[: cut - held_from])
                yield Piece(index, piece_start, cut, current.close())
                buffer = buffer[cut - held_from :]
                held_from = piece_start = cut
                index += 1
                current = _WavPiece(folder)
            held, held_length = [buffer], buffer.shape[0]
        # What no window can need any more goes to the piece now.
        keep_from = targets[0] - half if targets else held_from + held_length
        if keep_from > held_from and held:
            buffer = np.concatenate(held)
            written = min(keep_from - held_from, buffer.shape[0])
            current.write(buffer[:written])
            rest = buffer[written:].copy()  # a view would keep the whole buffer alive
            held, held_length = [rest], rest.shape[0]
            held_from += written
    if held:
        current.write(np.concatenate(held))
    yield Piece(index, piece_start, held_from + held_length, current.close())


# --- Progress of a run made of chunks --------------------------------------------------------


def _locked_run(run_id: Any) -> TranscriptRun:
    """The run's row, locked until the transaction ends: the turn of one writer of a run
    split into chunks (SQLite's IMMEDIATE transactions take turns already)."""
    return TranscriptRun.objects.select_for_update().select_related("audio").get(pk=run_id)


def aggregate_progress(
    chunks: Iterable[RunChunk], now: datetime, *, expected_ms: int = 0
) -> tuple[float, datetime | None]:
    """(progress, estimated finish) of a run from its chunks: the mean of their progress
    weighted by their length, over `expected_ms` at least (the audio's length while the
    split still cuts: the pieces to come count as not started), and the finish at the pace
    the run has made since its first chunk of this attempt started (however many workers
    share it: two workers make the pace twice as fast). Chunks that succeeded in an earlier
    attempt of the run (no `started_at`) are the progress it started from. None until it has
    a pace."""
    rows = [
        (c.duration_ms, 100.0 if c.status == ChunkStatus.SUCCEEDED else c.progress, c.started_at)
        for c in chunks
    ]
    total = max(sum(length for length, _, _ in rows), expected_ms) or 1
    progress = sum(length * done for length, done, _ in rows) / total
    started = [at for _, _, at in rows if at is not None]
    if not started:
        return progress, None
    carried = sum(length * 100.0 for length, done, at in rows if at is None and done >= 100) / total
    gained = progress - carried
    elapsed = (now - min(started)).total_seconds()
    if gained <= 0 or elapsed <= 0:
        return progress, None
    return progress, now + timedelta(seconds=elapsed * (100 - progress) / gained)


def split_finished(run: TranscriptRun) -> bool:
    """Whether the run's latest split job has succeeded: every chunk of the run exists."""
    latest = (
        Job.objects.filter(run=run, job_type=JOB_TYPE_SPLIT)
        .order_by("-created_at")
        .values_list("status", flat=True)
        .first()
    )
    return latest == JobStatus.SUCCEEDED


def _publish_progress(run: TranscriptRun, new_segments: list[dict[str, Any]]) -> None:
    """Write the run's aggregate progress (never lower than it was, never 100) and ETA, and
    the merged `new_segments`; announce them. Call it holding the run's lock."""
    expected = 0 if split_finished(run) else run.audio.duration_ms
    progress, finish_at = aggregate_progress(run.chunks.all(), timezone.now(), expected_ms=expected)
    changes: dict[str, Any] = {
        "progress": max(run.progress, min(progress, PROGRESS_CEILING)),
        "estimated_finish_at": finish_at,
    }
    if new_segments:
        changes["segments"] = AppendedJson("segments", new_segments)
    TranscriptRun.objects.filter(pk=run.pk).update(**changes)
    run.refresh_from_db()
    publish(run, "update", newSegments=new_segments)


class ChunkProgressWriter(ProgressWriter):
    """A chunk's own progress, throttled as a whole run's is, and with it the run's.

    A chunk's segments are not sent as they come: those of a chunk after the front would
    reach watchers out of order. They go out when the chunk is merged."""

    def __init__(
        self,
        run: TranscriptRun,
        attempt: Attempt,
        chunk: RunChunk,
        *,
        assumed_rate: float | None = None,
    ) -> None:
        super().__init__(run, attempt, assumed_rate=assumed_rate)
        self.chunk = chunk

    def flush(self) -> None:
        now = time.monotonic()
        progress = self.clock.progress(now)
        with transaction.atomic():
            run = _locked_run(self.run.pk)
            if run.cancel_requested_at is not None or run.status == RunStatus.CANCELLED:
                raise Cancelled()
            held = RunChunk.objects.filter(
                pk=self.chunk.pk,
                job=self.attempt.job.pk,
                job__status=JobStatus.PROCESSING,
                job__locked_by=self.attempt.worker_id,
            )
            if not held.update(progress=progress):
                raise ClaimLost(f"chunk {self.chunk.pk} is no longer this attempt's")
            if run.status == RunStatus.PROCESSING:  # a failed run's chunks in flight finish quietly
                _publish_progress(run, [])
                self.run.progress = run.progress
        self.unsent = []
        self.last_flush = now


# --- Merging ---------------------------------------------------------------------------------


def _shifted(segment: dict[str, Any], offset: float) -> dict[str, Any]:
    """A piece's segment with its times (and its words') in the whole audio."""
    moved = {
        **segment,
        "start": round(segment["start"] + offset, 3),
        "end": round(segment["end"] + offset, 3),
    }
    if "words" in segment:
        moved["words"] = [
            {**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)}
            for w in segment["words"]
        ]
    return moved


def merge_ready_chunks(run: TranscriptRun) -> bool:
    """Append to the run's transcript every succeeded chunk that follows it without a gap
    (segment ids renumbered to go on from the run's), and announce them as `newSegments`;
    once every chunk is merged and the split has made them all (`split_finished`), the run
    has succeeded. Call it holding the run's lock, on a processing run. Returns whether the
    run is finished."""
    chunks = list(run.chunks.order_by("index"))
    new: list[dict[str, Any]] = []
    merging: list[RunChunk] = []
    for chunk in chunks:
        if chunk.merged:
            continue
        if chunk.status != ChunkStatus.SUCCEEDED:
            break
        merging.append(chunk)
        base = len(run.segments) + len(new)
        new += [{**segment, "id": base + i} for i, segment in enumerate(chunk.segments)]
    if merging:
        RunChunk.objects.filter(pk__in=[chunk.pk for chunk in merging]).update(merged=True)
    if not chunks or len(merging) < sum(not chunk.merged for chunk in chunks):
        if merging:
            _publish_progress(run, new)
        return False
    # Every chunk made so far is merged; the run ends if the split made the last one. (The
    # split's own end comes here too: the chunks may all have been merged before it.)
    if not split_finished(run):
        if merging:
            _publish_progress(run, new)
        return False
    segments = [*run.segments, *new]
    first = chunks[0]
    TranscriptRun.objects.filter(pk=run.pk, status=RunStatus.PROCESSING).update(
        status=RunStatus.SUCCEEDED,
        progress=100.0,
        estimated_finish_at=None,
        segments=segments,
        text=joined_text(segments),
        detected_language=first.detected_language,
        language_probability=first.language_probability,
        finished_at=timezone.now(),
    )
    run.refresh_from_db()
    publish(run, "update", newSegments=new)
    publish_finished(run, text=run.text)
    storage.delete_later(chunk.stored_name for chunk in chunks)
    return True


def stop_queued_chunks(run: TranscriptRun) -> int:
    """Cancel the run's chunk jobs that have not started, and their chunks; those in flight
    stop at their next safe point (they find the run no longer processing). Call it inside
    the transaction that ends the run."""
    now = timezone.now()
    queued = Job.objects.filter(run=run, job_type=JOB_TYPE_CHUNK, status=JobStatus.QUEUED)
    ids = list(queued.values_list("pk", flat=True))
    RunChunk.objects.filter(job__in=ids).exclude(status=ChunkStatus.SUCCEEDED).update(
        status=ChunkStatus.CANCELLED
    )
    return Job.objects.filter(pk__in=ids, status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELLED, finished_at=now, picked_by="", picked_until=None
    )


def chunks_retry(run: TranscriptRun) -> bool:
    """Queue again the chunks of a failed or cancelled run that did not succeed, each with
    a new job; those that succeeded keep their result and are merged again from the front.
    Call it inside the retry's transaction, the run queued again. False when the run was
    never split into chunks, or its split did not finish (its split job is what to retry:
    it starts by forgetting the chunks an unfinished split made)."""
    chunks = list(run.chunks.order_by("index"))
    if not chunks or not split_finished(run):
        return False
    RunChunk.objects.filter(run=run).update(merged=False, started_at=None)
    # The chunks redone are transcribed in the language the others were: the run keeps it.
    TranscriptRun.objects.filter(pk=run.pk).update(
        detected_language=chunks[0].detected_language,
        language_probability=chunks[0].language_probability,
    )
    for chunk in chunks:
        if chunk.status != ChunkStatus.SUCCEEDED:
            job = job_enqueue(job_type=JOB_TYPE_CHUNK, run_id=run.pk, priority=run.priority)
            RunChunk.objects.filter(pk=chunk.pk).update(
                status=ChunkStatus.QUEUED, progress=0.0, job=job, finished_at=None
            )
    if all(chunk.status == ChunkStatus.SUCCEEDED for chunk in chunks):
        # Every chunk succeeded already (the run was cancelled as the last one finished):
        # nothing to transcribe, only to merge.
        TranscriptRun.objects.filter(pk=run.pk).update(
            status=RunStatus.PROCESSING, started_at=timezone.now()
        )
        run.refresh_from_db()
        merge_ready_chunks(run)
    return True


# --- The job handlers -------------------------------------------------------------------------


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE


def _forget_chunks(run_id: Any, chunk_ids: Iterable[int] | None = None) -> None:
    """Remove the run's chunks (`chunk_ids` only, when given) with their queued jobs and
    their pieces in the storage: those of a split attempt that failed or was replaced, which
    the next attempt cuts again. A chunk job in flight finds its chunk gone at its next safe
    point and stops (`ChunkHandler._chunk`)."""
    with transaction.atomic():
        _locked_run(run_id)
        chunks = RunChunk.objects.filter(run=run_id)
        if chunk_ids is not None:
            chunks = chunks.filter(pk__in=list(chunk_ids))
        rows = list(chunks.values_list("pk", "job", "stored_name"))
        if not rows:
            return
        Job.objects.filter(pk__in=[job for _, job, _ in rows], status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED, finished_at=timezone.now(), picked_by="", picked_until=None
        )
        RunChunk.objects.filter(pk__in=[pk for pk, _, _ in rows]).delete()
        storage.delete_later(name for _, _, name in rows)


class SplitHandler(TranscribeHandler):
    """`transcribe_split`: cuts a long run's audio into pieces and queues a job for each as
    soon as it is stored.

    Its hooks other than `run` and `succeeded` are a whole run's: its start starts the run
    afresh, its failure fails the run, a retry or a lost lease puts the run back in line."""

    def __init__(self) -> None:
        super().__init__(JOB_TYPE_SPLIT)

    def run(self, attempt: Attempt) -> int:  # type: ignore[override]
        run = self._run(attempt.job)
        if run.audio.purged_at is not None:
            raise PermanentError("audio_missing", "The audio file is no longer stored.")
        _forget_chunks(run.pk)  # what an earlier attempt, killed half-way, made
        made: list[int] = []
        try:
            with (
                audio_file(run.audio.stored_name) as path,
                tempfile.TemporaryDirectory(dir=settings.UPLOAD_TEMP_DIR) as folder,
            ):
                language: Language | None = None
                for piece in self._cut(attempt, run, path, Path(folder)):
                    if piece.index == 0:
                        language = self._detect_language(run, piece.path)
                    name = f"{run.audio.stored_name}.chunk{piece.index:04d}.{uuid.uuid4().hex}.wav"
                    try:
                        storage.store_file(name, piece.path)
                    except storage.StorageUnavailable as exc:
                        raise RetryLater(
                            "storage_unavailable",
                            f"the audio store cannot be reached: {exc.detail}",
                        ) from exc
                    piece.path.unlink(missing_ok=True)  # an object store leaves it here
                    made.append(self._queue_chunk(attempt, run, piece, name, language))
        except BaseException:
            # This attempt's chunks serve nothing now; the next attempt cuts its own.
            _forget_chunks(run.pk, made)
            raise
        logger.info("run %s: cut into %d pieces", run.pk, len(made))
        return len(made)

    @staticmethod
    def _detect_language(run: TranscriptRun, path: Path) -> Language | None:
        """The language every chunk is transcribed in, when the run's model is to detect it
        (a multilingual model, no language asked for): detected once, from the first
        DETECT_SECONDS of the first piece (`path`), as a run transcribed whole has it from
        its first window. None when the run names its language or its model knows one."""
        model = catalogue.get(run.model)
        if run.language or model is None or not model.multilingual:
            return None
        audio = first_seconds(path, engine.DETECT_SECONDS, max_ms=settings.MAX_AUDIO_DURATION_MS)
        try:
            code, probability, _ = engine.detect_language(run.model, audio)
        except engine.EngineError as exc:
            if exc.permanent:
                raise PermanentError(exc.code, exc.message) from exc
            raise
        return Language(code, probability)

    @staticmethod
    def _queue_chunk(
        attempt: Attempt, run: TranscriptRun, piece: Piece, name: str, language: Language | None
    ) -> int:
        """The piece's chunk and its job, at once: a worker may start on it while the rest
        is cut. Only while this attempt still holds the split job, on a run still going.
        The first one announces the `language` the chunks are transcribed in, if detected."""
        stop: Exception | None = None
        with transaction.atomic():
            locked = _locked_run(run.pk)
            if not Job.objects.filter(
                pk=attempt.job.pk, status=JobStatus.PROCESSING, locked_by=attempt.worker_id
            ).exists():
                stop = ClaimLost(f"split job {attempt.job.pk} is no longer this attempt's")
            elif locked.status != RunStatus.PROCESSING or locked.cancel_requested_at is not None:
                stop = Cancelled()
            else:
                detected = {} if language is None else language.as_fields()
                chunk = RunChunk.objects.create(
                    run=locked,
                    index=piece.index,
                    start_ms=_ms(piece.start),
                    end_ms=_ms(piece.end),
                    stored_name=name,
                    job=job_enqueue(job_type=JOB_TYPE_CHUNK, run_id=run.pk, priority=run.priority),
                    **detected,
                )
                if piece.index == 0 and detected:
                    TranscriptRun.objects.filter(pk=run.pk).update(**detected)
                    locked.refresh_from_db()
                    publish(locked, "update")
                announce_queue_positions()
        if stop is not None:
            storage.delete_later([name])  # after the transaction: its row must stay
            raise stop
        return chunk.pk

    def _cut(
        self, attempt: Attempt, run: TranscriptRun, path: Path, folder: Path
    ) -> Iterator[Piece]:
        try:
            yield from cut_pieces(
                pcm_chunks(path, max_ms=settings.MAX_AUDIO_DURATION_MS),
                total_samples=run.audio.duration_ms * SAMPLE_RATE // 1000,
                piece_samples=settings.CHUNK_SECONDS * SAMPLE_RATE,
                folder=folder,
                safe_point=attempt.heartbeat,
            )
        except AudioTooLong:
            raise PermanentError(
                "audio_too_long",
                f"The audio is longer than the {settings.MAX_AUDIO_DURATION_MS / 60000:.1f} "
                "minutes allowed here (more than its file said).",
            ) from None
        except (Refused, av.error.FFmpegError) as exc:
            logger.warning("decoding %s failed: %s", path.name, exc)
            raise PermanentError("undecodable", "The audio could not be decoded.") from None

    def succeeded(self, attempt: Attempt, pieces: int) -> None:  # type: ignore[override]
        """Every chunk exists now: the run ends here if they were all merged already."""
        run = _locked_run(attempt.job.run_id)
        if run.status != RunStatus.PROCESSING or run.cancel_requested_at is not None:
            if run.status == RunStatus.PROCESSING:  # cancelled while it was cutting
                self.cancelled(attempt.job)
            return
        if not merge_ready_chunks(run):
            publish(run, "update", newSegments=[])

    def media_ms(self, jobs: QuerySet[Job]) -> int:
        """None: the audio is counted by the chunk jobs that transcribe it."""
        return 0

    def runs_finished(self, jobs: QuerySet[Job]) -> int:
        """None: a split run is finished by its chunk jobs, and counted there."""
        return 0


class ChunkHandler(TranscribeHandler):
    """`transcribe_chunk`: transcribes one piece of a split run; see the module's docstring."""

    def __init__(self) -> None:
        super().__init__(JOB_TYPE_CHUNK)

    @staticmethod
    def _chunk(job: Job) -> RunChunk | None:
        """The chunk this job transcribes; None once a retry of the run gave the chunk a
        new job (this one was still in flight): what it does then serves nothing."""
        return RunChunk.objects.select_related("run", "run__audio").filter(job=job.pk).first()

    def started(self, attempt: Attempt) -> None:
        with transaction.atomic():
            run = _locked_run(attempt.job.run_id)
            if run.cancel_requested_at is not None or run.status not in ACTIVE:
                raise Cancelled()
            now = timezone.now()
            if not RunChunk.objects.filter(
                job=attempt.job.pk, status__in=[ChunkStatus.QUEUED, ChunkStatus.PROCESSING]
            ).update(
                status=ChunkStatus.PROCESSING,
                progress=0.0,
                started_at=Coalesce("started_at", Value(now, output_field=DateTimeField())),
            ):
                raise Cancelled()
            if run.status == RunStatus.QUEUED:  # a retried run: its first chunk starts it
                TranscriptRun.objects.filter(pk=run.pk).update(
                    status=RunStatus.PROCESSING, started_at=now, estimated_finish_at=None
                )
                run.refresh_from_db()
                publish(run, "update", newSegments=[])
                run_started.send(sender=TranscriptRun, run=run)
            else:
                publish(run, "update")  # one of its jobs started
            announce_queue_positions()

    def run(self, attempt: Attempt) -> Transcribed:
        chunk = self._chunk(attempt.job)
        if chunk is None:
            raise Cancelled()
        run = chunk.run
        with audio_file(chunk.stored_name) as path:
            return self._transcribe(
                attempt,
                run,
                path,
                duration_ms=chunk.duration_ms,
                make_writer=lambda rate: ChunkProgressWriter(
                    run, attempt, chunk, assumed_rate=rate
                ),
                language=chunk.detected_language or None,  # the split's detection, if any
            )

    def succeeded(self, attempt: Attempt, transcribed: Transcribed) -> None:
        result = transcribed.result
        run = _locked_run(attempt.job.run_id)
        chunk = self._chunk(attempt.job)
        if chunk is None:
            return
        offset = chunk.start_ms / 1000
        # A chunk transcribed in the language the split detected keeps that detection.
        detected = (
            {}
            if chunk.detected_language
            else {
                "detected_language": result.language,
                "language_probability": result.language_probability,
            }
        )
        RunChunk.objects.filter(pk=chunk.pk).update(
            status=ChunkStatus.SUCCEEDED,
            progress=100.0,
            segments=[_shifted(segment, offset) for segment in result.segments],
            text=result.text,
            finished_at=timezone.now(),
            **detected,
        )
        # A chunk of a run that failed or was cancelled meanwhile keeps its result for a retry.
        if run.status == RunStatus.PROCESSING and run.cancel_requested_at is None:
            merge_ready_chunks(run)

    def _chunk_back_in_line(self, job: Job) -> TranscriptRun | None:
        """The chunk is queued again (its progress from 0); the run, if it is still
        processing, stays so: only this chunk is redone."""
        run = _locked_run(job.run_id)
        if not RunChunk.objects.filter(job=job.pk, status=ChunkStatus.PROCESSING).update(
            status=ChunkStatus.QUEUED, progress=0.0
        ):
            return None
        return run if run.status == RunStatus.PROCESSING else None

    def released(self, job: Job) -> None:
        run = self._chunk_back_in_line(job)
        if run is not None:
            _publish_progress(run, [])
            announce_queue_positions()

    def retrying(self, job: Job, error: str, retry_at: datetime) -> None:
        run = self._chunk_back_in_line(job)
        if run is None:
            return
        publish_attempt_error(
            run, attempt=job.attempts, code="attempt_failed", message=error, retry_at=retry_at
        )
        _publish_progress(run, [])

    def failed(self, job: Job, code: str, error: str) -> None:
        """The chunk failed for good, and so the run: queued siblings are cancelled, those
        in flight finish and keep their result for a retry."""
        _locked_run(job.run_id)
        if (
            not RunChunk.objects.filter(job=job.pk)
            .exclude(status=ChunkStatus.SUCCEEDED)
            .update(status=ChunkStatus.FAILED)
        ):
            return
        run = self._end(job, RunStatus.FAILED, code=code, message=error)
        if run is None:
            return
        stop_queued_chunks(run)
        run.refresh_from_db()
        publish_attempt_error(run, attempt=job.attempts, code=code, message=error, retry_at=None)
        publish_finished(run)
        announce_queue_positions()

    def cancelled(self, job: Job) -> None:
        _locked_run(job.run_id)
        if (
            not RunChunk.objects.filter(job=job.pk)
            .exclude(status=ChunkStatus.SUCCEEDED)
            .update(status=ChunkStatus.CANCELLED)
        ):
            return
        # Its run was cancelled, and ended, already (services.run_cancel); this is for a
        # cancel that came some other way.
        if TranscriptRun.objects.filter(
            jobs=job.pk, status__in=ACTIVE, cancel_requested_at__isnull=False
        ).exists():
            run = self._end(job, RunStatus.CANCELLED)
            if run is not None:
                stop_queued_chunks(run)
                publish_finished(run)

    def media_ms(self, jobs: QuerySet[Job]) -> int:
        """The length of these jobs' pieces: a chunk's latest job is the only one that can
        have succeeded (a retry re-queues only chunks that did not)."""
        total = RunChunk.objects.filter(
            job__in=jobs.filter(job_type=self.job_type).values("pk")
        ).aggregate(total=Sum(F("end_ms") - F("start_ms")))["total"]
        return int(total or 0)
