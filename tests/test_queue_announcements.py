"""Queue positions: read in claim order with one window query, and announced to the runs at
the head of the queue after the commit that moved it, once per transaction, never for a sync
run (its job is in nobody's way)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from lingoloop import eventhub
from tasks_admin.handlers import Attempt
from tasks_admin.models import Job, JobStatus, Worker
from tests.conftest import post_audio, queued_run, wait_until
from tests.test_admin import make_run
from transcription.events import run_channel
from transcription.jobs import JOB_TYPE_ASYNC, JOB_TYPE_SYNC, TranscribeHandler
from transcription.models import (
    JOB_TYPE_CHUNK,
    JOB_TYPE_SPLIT,
    QueueSnapshot,
    RunEventOutbox,
    RunMode,
    RunStatus,
    TranscriptRun,
)
from transcription.services import run_cancel, run_retry


def queued(owner: Any, *, priority: int = 0, duration_ms: int = 11000, **job: Any) -> TranscriptRun:
    """A queued async run with its audio and its job (`job`: more fields of the job)."""
    run, _ = make_run(
        owner, status=RunStatus.QUEUED, duration_ms=duration_ms, priority=priority, **job
    )
    TranscriptRun.objects.filter(pk=run.pk).update(priority=priority)  # what a retry keeps
    run.refresh_from_db()
    return run


def updates(run: TranscriptRun) -> list[dict[str, Any]]:
    """The `update` events stored on the run's own stream."""
    events, _ = eventhub.events_after(run_channel(run.pk), 0)
    return [eventhub.payload(event) for event in events if event.type == "update"]


def announced_positions(run: TranscriptRun) -> list[int]:
    return [update["queuePosition"] for update in updates(run)]


def positions(client: Any) -> dict[str, int]:
    page = client.get("/api/runs", {"status": "queued"}).json()["results"]
    return {run["runId"]: run["queuePosition"] for run in page}


def recent_speed_is(monkeypatch: pytest.MonkeyPatch, speed: float) -> None:
    """What TranscriptRun.recent_speed() has cached: ETAs go by it, with no query for it."""
    monkeypatch.setattr(TranscriptRun, "_speed_cache", (time.monotonic(), speed))


@pytest.fixture(autouse=True)
def announced_in_the_committing_thread(settings: Any) -> None:
    """These tests look at what each commit announces: right after it, in its own thread
    (the announcer thread and its interval have a test of their own, at the end)."""
    settings.QUEUE_ANNOUNCE_INTERVAL_MS = 0


@pytest.fixture
def known_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recent runs went at real time (1 s of audio a second)."""
    recent_speed_is(monkeypatch, 1.0)


@pytest.mark.django_db
def test_positions_follow_claim_order_and_count_only_jobs_in_line(alice, known_speed):
    cleanup = Job.objects.create(job_type="purge_audio", max_attempts=1)  # a job, not a run
    first = queued(alice.user, duration_ms=12000)
    second = queued(alice.user, duration_ms=10000)
    urgent = queued(alice.user, priority=5, duration_ms=10000)
    retry_later = queued(alice.user, priority=9, run_after=timezone.now() + timedelta(minutes=5))
    # A sync run's job, held by the web process that runs it at once: in nobody's way.
    sync = queued(alice.user, priority=9)
    TranscriptRun.objects.filter(pk=sync.pk).update(mode=RunMode.SYNC)
    Job.objects.filter(run=sync).update(
        job_type=JOB_TYPE_SYNC, picked_by="web", picked_until=timezone.now() + timedelta(minutes=1)
    )
    Worker.objects.create(id="w1", host="box", pid=1, processes=2)

    listed = positions(alice.client)
    progress = alice.client.get(f"/api/runs/{first.pk}/progress").json()

    assert cleanup.created_at < first.created_at
    assert listed == {
        str(urgent.pk): 1,
        str(first.pk): 3,  # after the cleanup job, which is older
        str(second.pk): 4,
        str(retry_later.pk): 0,
        str(sync.pk): 0,
    }
    assert progress["queuePosition"] == 3
    # The audio ahead (10 s) spread over 2 processes, then its own 12 s, at real time.
    assert progress["estimatedTimeRemaining"] == 5 + 12
    second_progress = alice.client.get(f"/api/runs/{second.pk}/progress").json()
    assert second_progress["estimatedTimeRemaining"] == (10 + 12) / 2 + 10


@pytest.mark.django_db
def test_a_long_run_is_expected_to_be_shared_by_as_many_processes_as_it_has_pieces(
    alice, known_speed, settings
):
    settings.CHUNK_LONGER_THAN_SECONDS, settings.CHUNK_SECONDS = 900, 150
    ahead = queued(alice.user, duration_ms=10_000)
    long = queued(alice.user, duration_ms=1_200_000)  # 20 minutes: 8 pieces
    short = queued(alice.user, duration_ms=600_000)  # not split: one process alone
    worker = Worker.objects.create(id="w1", host="box", pid=1, processes=4)

    def eta(run: TranscriptRun) -> float:
        return alice.client.get(f"/api/runs/{run.pk}/progress").json()["estimatedTimeRemaining"]

    assert ahead.created_at < long.created_at < short.created_at
    assert eta(long) == round(10 / 4 + 1200 / 4)
    assert eta(short) == round((10 + 1200) / 4 + 600)
    Worker.objects.filter(pk=worker.pk).update(processes=16)  # more than it has pieces
    QueueSnapshot._last_read = (0.0, None)
    assert eta(long) == round(10 / 16 + 1200 / 8)


@pytest.mark.django_db
def test_recent_speed_is_per_process_even_when_workers_shared_a_run(alice):
    now = timezone.now()
    # 60 s of audio in 4 s, by one job.
    whole, _ = make_run(
        alice.user,
        status=RunStatus.SUCCEEDED,
        duration_ms=60_000,
        started_at=now - timedelta(seconds=4),
        finished_at=now,
        job_status=JobStatus.SUCCEEDED,
    )
    TranscriptRun.objects.filter(pk=whole.pk).update(started_at=now - timedelta(seconds=4))
    # 600 s of audio split in 3 s, then four pieces transcribed in 10 s each, two at a time:
    # the run took 23 s, its jobs 43 s.
    split_run, split = make_run(
        alice.user,
        status=RunStatus.SUCCEEDED,
        duration_ms=600_000,
        finished_at=now,
        job_status=JobStatus.SUCCEEDED,
    )
    begin = now - timedelta(seconds=23)
    TranscriptRun.objects.filter(pk=split_run.pk).update(started_at=begin)
    Job.objects.filter(pk=split.pk).update(
        job_type=JOB_TYPE_SPLIT, started_at=begin, finished_at=begin + timedelta(seconds=3)
    )
    for k in range(4):
        started = begin + timedelta(seconds=3 + 10 * (k // 2))
        Job.objects.create(
            job_type=JOB_TYPE_CHUNK,
            run=split_run,
            status=JobStatus.SUCCEEDED,
            started_at=started,
            finished_at=started + timedelta(seconds=10),
        )
    TranscriptRun._speed_cache = (0.0, None)

    assert TranscriptRun.recent_speed() == pytest.approx(660 / 47)


def start_job(run: TranscriptRun) -> None:
    """What a worker does when it starts the run's job: claim it, then the handler's start."""
    job = Job.objects.get(run=run)
    assert job.claim("w1:box:1")
    attempt = Attempt(
        job=job, worker_id="w1:box:1", lease_until=timezone.now() + timedelta(minutes=1)
    )
    TranscribeHandler(JOB_TYPE_ASYNC).started(attempt)


def cancelled(run: TranscriptRun) -> TranscriptRun:
    run_cancel(run=run)
    run.refresh_from_db()
    return run


QUEUE_MOVES = {
    "job start": start_job,
    "cancel": lambda run: run_cancel(run=run),
    # Retried at a higher priority than the others, it jumps ahead of them.
    "retry": lambda run: run_retry(run=cancelled(run)),
}


@pytest.mark.parametrize("move", QUEUE_MOVES)
@pytest.mark.django_db
def test_a_queue_move_is_announced_only_after_its_commit(
    alice, django_capture_on_commit_callbacks, move
):
    mover = queued(alice.user, priority=1)
    others = [queued(alice.user), queued(alice.user)]

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        QUEUE_MOVES[move](mover)
        # Inside the transaction that moved the queue: no announcement exists, not even
        # in the outbox.
        assert not RunEventOutbox.objects.filter(run_id__in=[r.pk for r in others]).exists()

    expected = [2, 3] if move == "retry" else [1, 2]
    assert [announced_positions(run) for run in others] == [[place] for place in expected]


@pytest.mark.django_db
def test_many_moves_in_one_transaction_make_one_announcement(
    alice, django_capture_on_commit_callbacks
):
    ahead = [queued(alice.user) for _ in range(3)]
    last = queued(alice.user)

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        for run in ahead:
            run_cancel(run=run)

    assert announced_positions(last) == [1]


@pytest.mark.django_db
def test_a_move_rolled_back_does_not_silence_the_next(alice, django_capture_on_commit_callbacks):
    first, second, last = queued(alice.user), queued(alice.user), queued(alice.user)

    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            run_cancel(run=first)
            raise RuntimeError("the request failed after the cancel")
        with transaction.atomic():
            run_cancel(run=second)

    assert announced_positions(last) == [2]  # `first` is still queued, ahead of it


@pytest.mark.django_db(transaction=True)
def test_a_sync_run_announces_nothing(alice, jfk):
    waiting = queued_run(alice.client)
    run = TranscriptRun.objects.get(pk=waiting["runId"])
    seen = eventhub.current_id(run_channel(run.pk))

    response = post_audio(alice.client, jfk, mode="sync")

    assert response.status_code == 201, response.json()
    assert eventhub.events_after(run_channel(run.pk), seen) == ([], None)
    assert positions(alice.client)[waiting["runId"]] == 1


@pytest.mark.django_db(transaction=True)
def test_the_announcer_thread_makes_one_pass_per_interval_and_announces_the_last_move(
    alice, settings
):
    # A worker starting job after job from a long queue: each start moved the queue; the
    # job must not wait for the pass, and passes must not outnumber the intervals.
    settings.QUEUE_ANNOUNCE_INTERVAL_MS = 2000
    ahead = [queued(alice.user) for _ in range(3)]
    last = queued(alice.user)

    for run in ahead:  # three moves, each in its own transaction, well within one interval
        run_cancel(run=run)

    wait_until(lambda: announced_positions(last)[-1:] == [1], 15, "the last move announced")
    assert len(announced_positions(last)) <= 2  # a pass at once, one after the interval
