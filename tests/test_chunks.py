"""Long runs split across the cluster (transcription/chunks.py): where the audio is cut, and
real runs through real worker clusters, with small CHUNK_* settings so that a minute or two
of speech is split."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tasks_admin.models import Job, JobStatus, Worker
from tasks_admin.services import job_enqueue
from tests.conftest import (
    long_speech,
    never_happens,
    reference_wer,
    speech_16k,
    wait_until,
)
from transcription import engine
from transcription.chunks import (
    JOB_TYPE_CHUNK,
    JOB_TYPE_SPLIT,
    TAPER,
    _forget_chunks,
    blocks,
    choose_cut,
    chunks_retry,
    cut_pieces,
    cut_targets,
    find_cut,
    merge_ready_chunks,
)
from transcription.models import (
    Audio,
    ChunkStatus,
    PendingDeletion,
    RunChunk,
    RunMode,
    RunStatus,
    TranscriptRun,
)
from transcription.pcm import SAMPLE_RATE, pcm_chunks

RATE = SAMPLE_RATE
# Runs over 40 s are split into pieces of about 20 s: jfk.flac said 8 times (96 s) is 5.
CHUNKED = {
    "CHUNK_LONGER_THAN_SECONDS": "40",
    "CHUNK_SECONDS": "20",
    # One thread a cluster: two clusters share this machine's two cores.
    "MAX_CONCURRENT_JOBS": "1",
    "WHISPER_CPU_THREADS": "1",
    # A cluster that picked a chunk it cannot start yet lets another have it soon.
    "JOB_PICK_HOLD_SECONDS": "2",
    # Pieces are decoded in batches, as the 150 s ones of the default setting are: the
    # sequential path's temperature fallback samples at random, and tiny.en then drops or
    # changes words from one run to the next.
    "WHISPER_BATCHED_MIN_DURATION_MS": "10000",
}
FAST_RECOVERY = {"JOB_LEASE_SECONDS": "6", "WORKER_RETRY_DELAYS": "100"}
# Batched, a 20 s piece is decoded in about a second: too soon over to be caught in flight.
# jfk.flac said 16 times (192 s) in pieces of 48 s is 4 pieces of a few seconds each.
LONG_PIECES = {**CHUNKED, "CHUNK_SECONDS": "48"}
LONG_REPEATS = 16


def seconds(at: float) -> int:
    return int(at * RATE)


def samples(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32) / 32768.0


# --- Where the cut goes (no processes, no model) ----------------------------------------------


def test_cut_goes_in_the_middle_of_the_widest_pause_not_the_nearest():
    audio = np.full(seconds(30), 0.1, dtype=np.float32)
    # Pauses: 0.5 s at 14.0-14.5, 0.2 s (too short) at 15.0-15.2, 2 s at 20-22.
    speech = [(0, seconds(14)), (seconds(14.5), seconds(15)), (seconds(15.2), seconds(20))]
    speech.append((seconds(22), seconds(30)))

    assert choose_cut(speech, audio, target=seconds(15)) == seconds(21)


def test_of_equally_wide_pauses_the_one_nearest_the_target_wins():
    audio = np.full(seconds(30), 0.1, dtype=np.float32)
    speech = [(0, seconds(5)), (seconds(6), seconds(16)), (seconds(17), seconds(30))]

    assert choose_cut(speech, audio, target=seconds(14)) == seconds(16.5)
    assert choose_cut(speech, audio, target=seconds(8)) == seconds(5.5)


def test_without_a_pause_the_cut_goes_at_the_quietest_point():
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(seconds(30)) * 0.2).astype(np.float32)
    audio[seconds(9) : seconds(9.1)] *= 0.01  # the quietest 100 ms, 6 s before the target
    audio[seconds(24) : seconds(24.1)] *= 0.05  # quiet, but less so

    cut = choose_cut([(0, seconds(30))], audio, target=seconds(15))

    assert seconds(9) <= cut <= seconds(9.1)


def test_on_real_speech_the_vad_cut_falls_in_silence():
    speech = samples(speech_16k(3))  # 12 s a repeat: 11 s of speech, then 1 s of silence
    window = speech[seconds(6) : seconds(30)]

    cut = seconds(6) + find_cut(window, target=seconds(12) - seconds(6))

    around = speech[cut - seconds(0.1) : cut + seconds(0.1)]
    assert float(np.abs(around).max()) < 0.01, "the cut is in speech"


def test_cut_pieces_give_back_every_sample_once_cut_at_silences(tmp_path):
    import wave

    whole = speech_16k(8)  # 96 s
    feed = [samples(whole[i : i + 1000]) for i in range(0, whole.shape[0], 1000)]
    beats = []

    pieces = list(
        cut_pieces(
            iter(feed),
            total_samples=whole.shape[0],
            piece_samples=seconds(20),
            folder=tmp_path,
            safe_point=lambda: beats.append(1),
        )
    )

    assert len(pieces) == 5 == len(cut_targets(whole.shape[0], seconds(20))) + 1
    assert len(beats) == len(list(blocks(iter(feed))))  # one per second of audio
    joined = []
    for index, piece in enumerate(pieces):
        with wave.open(str(piece.path)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
            data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        assert (piece.index, data.shape[0]) == (index, piece.end - piece.start)
        joined.append(data)
    assert pieces[0].start == 0 and pieces[-1].end == whole.shape[0]
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
    assert np.array_equal(np.concatenate(joined), whole)  # nothing lost, nothing doubled
    loudest = int(np.abs(whole).max())
    targets = cut_targets(whole.shape[0], seconds(20))
    for piece in pieces[1:]:  # in a pause: no louder there than jfk.flac's background noise
        assert np.abs(whole[piece.start - 800 : piece.start + 800]).max() < loudest / 10
        # within the search window around its target: a quarter of a piece
        assert abs(piece.start - targets[piece.index - 1]) <= seconds(20) // 4


def test_pieces_taper_so_that_those_cut_last_end_with_the_others():
    minute = seconds(60)

    cuts = [0, *cut_targets(20 * minute, 5 * minute), 20 * minute]
    lengths = [b - a for a, b in itertools.pairwise(cuts)]

    assert len(lengths) == 4
    assert lengths == sorted(lengths, reverse=True)
    assert lengths[0] == round(5 * minute * (1 + TAPER))
    assert lengths[-1] == round(5 * minute * (1 - TAPER))
    assert cut_targets(4 * minute, 5 * minute) == []  # one piece: nothing to cut
    assert len(cut_targets(3 * 3600 * SAMPLE_RATE, 5 * minute)) == 35


# --- The split and the merges, in the database -----------------------------------------------


def segment(start: float, text: str) -> dict[str, Any]:
    return {"id": 0, "start": start, "end": start + 9, "text": text}


def split_run(owner: Any, *, pieces: int, split_status: str) -> TranscriptRun:
    """A processing run of `pieces` 10 s chunks that have succeeded, each with one segment,
    and its split job in `split_status`."""
    audio = Audio.objects.create(
        owner=owner,
        stored_name=uuid.uuid4().hex,
        original_filename="long.wav",
        content_type="audio/wav",
        size_bytes=1000,
        duration_ms=10_000 * (pieces + 1),  # the split has one piece more to make
        sha256=uuid.uuid4().hex * 2,
    )
    run = TranscriptRun.objects.create(
        owner=owner,
        audio=audio,
        status=RunStatus.PROCESSING,
        mode=RunMode.ASYNC,
        model="tiny.en",
        started_at=timezone.now(),
    )
    job_enqueue(job_type=JOB_TYPE_SPLIT, run_id=run.pk)
    Job.objects.filter(run=run).update(status=split_status)
    for index in range(pieces):
        RunChunk.objects.create(
            run=run,
            index=index,
            start_ms=10_000 * index,
            end_ms=10_000 * (index + 1),
            stored_name=f"{audio.stored_name}.chunk{index}",
            status=ChunkStatus.SUCCEEDED,
            progress=100.0,
            segments=[segment(10.0 * index, f"p{index}")],
            job=job_enqueue(job_type=JOB_TYPE_CHUNK, run_id=run.pk),
        )
    return run


def test_chunks_merged_while_the_split_still_cuts_do_not_end_the_run(alice):
    run = split_run(alice.user, pieces=2, split_status=JobStatus.PROCESSING)

    with transaction.atomic():
        assert not merge_ready_chunks(TranscriptRun.objects.get(pk=run.pk))

    run.refresh_from_db()
    assert run.status == RunStatus.PROCESSING
    assert [s["text"] for s in run.segments] == ["p0", "p1"]
    assert run.progress < 70, "progress counts the piece still to come"  # 2 of 3 pieces

    # The split's last piece is merged by its chunk; the split's own end then ends the run,
    # though nothing is left to merge.
    RunChunk.objects.create(
        run=run,
        index=2,
        start_ms=20_000,
        end_ms=30_000,
        stored_name="last",
        status=ChunkStatus.SUCCEEDED,
        segments=[segment(20.0, "p2")],
    )
    with transaction.atomic():
        assert not merge_ready_chunks(TranscriptRun.objects.get(pk=run.pk))
    Job.objects.filter(run=run, job_type=JOB_TYPE_SPLIT).update(status=JobStatus.SUCCEEDED)
    with transaction.atomic():
        assert merge_ready_chunks(TranscriptRun.objects.get(pk=run.pk))

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert [(s["id"], s["text"]) for s in run.segments] == [(0, "p0"), (1, "p1"), (2, "p2")]


def test_a_split_that_did_not_finish_is_retried_whole_and_its_chunks_forgotten(alice):
    """A split attempt killed half-way left chunks: a retry of the run must not take them
    for the whole audio; the split attempt that follows removes them first."""
    run = split_run(alice.user, pieces=2, split_status=JobStatus.FAILED)
    RunChunk.objects.filter(run=run, index=1).update(status=ChunkStatus.QUEUED)
    waiting = RunChunk.objects.get(run=run, index=1).job_id
    TranscriptRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)

    with transaction.atomic():
        assert not chunks_retry(TranscriptRun.objects.get(pk=run.pk))

    names = set(RunChunk.objects.filter(run=run).values_list("stored_name", flat=True))
    _forget_chunks(run.pk)
    assert not RunChunk.objects.filter(run=run).exists()
    assert Job.objects.get(pk=waiting).status == JobStatus.CANCELLED
    assert set(PendingDeletion.objects.values_list("name", flat=True)) >= names


# --- Real runs ---------------------------------------------------------------------------------


def chunk_jobs(run_id: str) -> list[Job]:
    return list(Job.objects.filter(run_id=run_id, job_type=JOB_TYPE_CHUNK).order_by("created_at"))


def chunks_of(run_id: str) -> list[RunChunk]:
    return list(RunChunk.objects.filter(run_id=run_id).order_by("index"))


@pytest.mark.slow
def test_two_clusters_share_a_split_run_and_watchers_see_one_ordered_transcript(service, tmp_path):
    audio = long_speech(tmp_path / "long.wav", repeats=8)
    service.start_web(**CHUNKED)
    service.worker(**CHUNKED)
    service.worker(**CHUNKED)
    run = service.submit(audio)
    stream = service.events(run)
    try:
        stream.wait_for("done", timeout=150)
        never_happens(lambda: stream.names().count("done") > 1, 0.5, "a second `done` event")
    finally:
        stream.close()

    stored = TranscriptRun.objects.get(pk=run["runId"])
    assert stored.status == "succeeded"
    assert Job.objects.get(run_id=run["runId"], job_type=JOB_TYPE_SPLIT).status == "succeeded"
    jobs = chunk_jobs(run["runId"])
    assert len(jobs) == 5 and {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert len({job.locked_by.split(":")[0] for job in jobs}) == 2, "one cluster did it all"
    split = Job.objects.get(run_id=run["runId"], job_type=JOB_TYPE_SPLIT)
    assert split.finished_at is not None
    assert jobs[0].created_at < split.finished_at, "the first piece waited for the whole split"

    # What a watcher saw: every segment once, in order, ids 0..n-1, the run's own segments.
    seen = [s for e in stream.events if e.name == "update" for s in e.data.get("newSegments", [])]
    assert [s["id"] for s in seen] == list(range(len(stored.segments)))
    assert seen == stored.segments
    starts = [s["start"] for s in seen]
    assert starts == sorted(starts) and stored.segments[-1]["end"] > 8 * 12 - 3
    # Progress only grows, and is 100 at `done` alone.
    progress = [e.data["progress"] for e in stream.events if e.name in ("init", "update", "done")]
    assert progress == sorted(progress)
    assert progress[-1] == 100 and 100 not in progress[:-2]  # `done` follows its last update
    assert {e.data["status"] for e in stream.events if e.name == "update"} <= {
        "queued",
        "processing",
        "succeeded",
    }
    assert any(e.data["estimatedTimeRemaining"] for e in stream.events if e.name == "update")

    # As good as the same file transcribed whole.
    whole = engine.transcribe(
        audio,
        engine.Options(model=settings.WHISPER_MODEL),
        duration_ms=96_000,
        max_duration_ms=settings.MAX_AUDIO_DURATION_MS,
        allow_batched=True,
    )
    split_wer, whole_wer = reference_wer(stored.text, 8), reference_wer(whole.text, 8)
    assert split_wer - whole_wer <= 0.01, (split_wer, whole_wer)
    assert stored.text.lower().count("fellow americans") == 8


@pytest.mark.slow
def test_cancel_mid_way_stops_every_chunk_and_ends_the_run_at_once(service, tmp_path):
    service.start_web(**LONG_PIECES)
    service.worker(**LONG_PIECES)
    run = service.submit(long_speech(tmp_path / "long.wav", repeats=LONG_REPEATS))
    run_id = run["runId"]
    wait_until(
        lambda: RunChunk.objects.filter(
            run_id=run_id, progress__gt=0, job__status=JobStatus.PROCESSING
        ).exists(),
        60,
        "a chunk in flight",
    )

    asked = time.monotonic()
    waiting = {job.pk for job in chunk_jobs(run_id) if job.status == JobStatus.QUEUED}
    assert service.api("POST", f"/api/runs/{run_id}/cancel").status_code == 200
    service.wait_for_status(run_id, "cancelled", timeout=5)
    assert time.monotonic() - asked < 3

    wait_until(
        lambda: all(job.status != JobStatus.PROCESSING for job in chunk_jobs(run_id)),
        15,
        "the chunk in flight to stop",
    )
    jobs = chunk_jobs(run_id)
    assert {job.status for job in jobs} <= {JobStatus.CANCELLED, JobStatus.SUCCEEDED}
    assert waiting, "no chunk was left to cancel"
    # The chunks still waiting at the cancel never started.
    assert {(j.status, j.attempts) for j in jobs if j.pk in waiting} == {(JobStatus.CANCELLED, 0)}
    # The one in flight stopped at its next segment, or, if it had none left, finished and
    # kept its result (for a retry): the subset above.
    never_happens(
        lambda: Job.objects.filter(run_id=run_id, status=JobStatus.PROCESSING).exists(),
        1,
        "a chunk starting after the cancel",
    )
    assert TranscriptRun.objects.get(pk=run_id).status == "cancelled"


@pytest.mark.slow
def test_a_failed_chunk_fails_the_run_and_a_retry_redoes_only_that_chunk(service, tmp_path):
    service.start_web(**CHUNKED)
    service.worker(**CHUNKED)
    run = service.submit(long_speech(tmp_path / "long.wav", repeats=5))  # 60 s: 3 chunks
    run_id = run["runId"]
    wait_until(lambda: len(chunks_of(run_id)) == 3, 60, "the run to be split")
    last = chunks_of(run_id)[-1]
    piece = Path(settings.DATA_DIR) / "uploads" / last.stored_name
    aside = tmp_path / "aside.wav"
    shutil.move(piece, aside)  # the store lost it before its chunk started

    failed = service.wait_for_status(run_id, "failed", timeout=90)
    assert failed.error_code == "audio_missing"
    before = {job.pk: (job.status, job.attempts, job.finished_at) for job in chunk_jobs(run_id)}
    assert sorted(status for status, _, _ in before.values()) == [
        "failed",
        "succeeded",
        "succeeded",
    ]

    shutil.move(aside, piece)
    assert service.api("POST", f"/api/runs/{run_id}/retry").status_code == 202
    retried = service.wait_for_status(run_id, "succeeded", timeout=60)

    jobs = chunk_jobs(run_id)
    assert len(jobs) == 4
    again = [job for job in jobs if job.pk not in before]
    assert [chunk.job_id for chunk in chunks_of(run_id)][-1] == again[0].pk
    assert (again[0].status, again[0].attempts) == (JobStatus.SUCCEEDED, 1)
    # The chunks that had succeeded were not run again: their jobs are as they were.
    assert {
        job.pk: (job.status, job.attempts, job.finished_at) for job in jobs if job.pk in before
    } == before
    assert retried.text.lower().count("fellow americans") == 5
    assert [s["id"] for s in retried.segments] == list(range(len(retried.segments)))
    # A succeeded run's pieces are deleted once its end has committed.
    wait_until(lambda: not piece.exists(), 10, "the pieces to be deleted")


@pytest.mark.slow
def test_kill_9_of_a_cluster_redoes_only_the_chunk_it_was_running(service, tmp_path):
    env = {**LONG_PIECES, **FAST_RECOVERY}
    service.start_web(**env)
    doomed = service.worker(**env)
    doomed_id = Worker.objects.get().pk
    service.worker(**env)
    run = service.submit(long_speech(tmp_path / "long.wav", repeats=LONG_REPEATS))
    run_id = run["runId"]
    stream = service.events(run)
    try:
        wait_until(
            lambda: RunChunk.objects.filter(
                run_id=run_id,
                progress__gt=5,
                job__status=JobStatus.PROCESSING,
                job__locked_by__startswith=f"{doomed_id}:",
            ).exists(),
            60,
            "a chunk well under way in the doomed cluster",
        )
        os.killpg(doomed.pid, signal.SIGKILL)  # the whole cluster, as with a lost machine
        doomed.wait()
        # What it was running when it died: its leases are still in the table.
        in_flight = set(
            Job.objects.filter(
                run_id=run_id, status=JobStatus.PROCESSING, locked_by__startswith=f"{doomed_id}:"
            ).values_list("pk", flat=True)
        )
        stream.wait_for("done", timeout=150)
        never_happens(lambda: stream.names().count("done") > 1, 1, "a second `done` event")
    finally:
        stream.close()

    stored = TranscriptRun.objects.get(pk=run_id)
    assert stored.status == "succeeded"
    assert stored.text.lower().count("fellow americans") == LONG_REPEATS
    jobs = chunk_jobs(run_id)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    redone = {job.pk for job in jobs if job.attempts > 1}
    assert len(in_flight) == 1 and redone == in_flight
    assert all(
        job.last_error == "The worker running it stopped unexpectedly."
        for job in jobs
        if job.pk in redone
    )
    assert Job.objects.get(run_id=run_id, job_type=JOB_TYPE_SPLIT).attempts == 1
    # The run stayed processing throughout: only the chunk was back in line.
    statuses = [e.data["status"] for e in stream.events if e.name == "update"]
    assert "queued" not in statuses[statuses.index("processing") :]
    assert any(e.name == "error" and e.data["willRetry"] for e in stream.events)
    assert [s["id"] for s in stored.segments] == list(range(len(stored.segments)))
    assert chunks_of(run_id)[0].status == ChunkStatus.SUCCEEDED


def test_pcm_chunks_feed_cut_pieces_from_a_file(tmp_path):
    """The split job's own path from a stored file to its pieces, without a worker."""
    audio = long_speech(tmp_path / "long.wav", repeats=5)
    pieces = list(
        cut_pieces(
            pcm_chunks(audio, max_ms=10**7),
            total_samples=seconds(60),
            piece_samples=seconds(20),
            folder=tmp_path,
        )
    )
    assert [p.index for p in pieces] == [0, 1, 2]
    assert pieces[-1].end == speech_16k(5).shape[0]
