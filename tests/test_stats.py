"""/api/stats answers what an operator asks first, in a fixed number of queries: throughput and
real-time factor over the last hour and day, p50/p95 queue wait, failures by error code, the
webhook backlog; and the queue's last 24 hours, hour by hour, for the dashboard chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

import tests.job_handlers  # noqa: F401  (registers the test job types)
from tasks_admin.models import Job, JobStatus
from tasks_admin.stats import hourly_queue
from tests.test_admin import make_run
from transcription.models import (
    JOB_TYPE_CHUNK,
    JOB_TYPE_SPLIT,
    ChunkStatus,
    RunChunk,
    RunStatus,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


def job(
    job_type: str,
    status: str,
    *,
    created: timedelta,
    wait: float | None = None,
    busy: float | None = None,
    **fields: Any,
) -> Job:
    """A job created `created` ago, due at once, that waited `wait` s to start and ran
    `busy` s."""
    created_at = NOW - created
    started_at = None if wait is None else created_at + timedelta(seconds=wait)
    finished_at = fields.pop("finished_at", None)
    if busy is not None:
        assert started_at is not None
        finished_at = started_at + timedelta(seconds=busy)
    return Job.objects.create(
        job_type=job_type,
        status=status,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        **{"run_after": created_at, **fields},
    )


def transcription(
    owner: Any, status: str, *, created: timedelta, wait: float, busy: float, **fields: Any
) -> Job:
    """A run of 60 s of audio whose job waited `wait` s and ran `busy` s."""
    created_at = NOW - created
    started_at = created_at + timedelta(seconds=wait)
    finished_at = started_at + timedelta(seconds=busy)
    _, run_job = make_run(
        owner,
        status=status,
        duration_ms=60_000,
        created_at=created_at,
        finished_at=finished_at,
        started_at=started_at,
        **fields,
    )
    return run_job


@pytest.fixture
def history(alice) -> None:
    # Last hour: one run done (60 s of audio in 4 s), one failed on a timeout.
    transcription(alice.user, RunStatus.SUCCEEDED, created=30 * MINUTE, wait=10, busy=4)
    transcription(
        alice.user, RunStatus.FAILED, created=20 * MINUTE, wait=2, busy=1, error_code="timeout"
    )
    # Earlier today: two more runs done (120 s of audio in 8 s), one lost with its worker.
    transcription(alice.user, RunStatus.SUCCEEDED, created=5 * HOUR, wait=60, busy=4)
    transcription(alice.user, RunStatus.SUCCEEDED, created=6 * HOUR, wait=120, busy=4)
    transcription(
        alice.user, RunStatus.FAILED, created=7 * HOUR, wait=1, busy=1, error_code="worker_lost"
    )
    # Days ago: out of every window.
    transcription(alice.user, RunStatus.SUCCEEDED, created=50 * HOUR, wait=500, busy=4)
    # Twenty other jobs in the last hour, waiting 1 s, 2 s, … 20 s: no audio.
    for n in range(1, 21):
        job("test.record", JobStatus.SUCCEEDED, created=40 * MINUTE, wait=n, busy=1)
    # Webhook deliveries: two waiting (one retrying later), one under way, one delivered.
    job("webhook", JobStatus.QUEUED, created=MINUTE)
    job("webhook", JobStatus.QUEUED, created=MINUTE, run_after=NOW + HOUR)
    job("webhook", JobStatus.PROCESSING, created=2 * MINUTE, wait=30)
    job("webhook", JobStatus.SUCCEEDED, created=3 * MINUTE, wait=3, busy=1)


def stats(client: Any) -> dict[str, Any]:
    with time_machine.travel(NOW, tick=False):
        response = client.get("/api/stats")
    assert response.status_code == 200, response.content
    return dict(response.json())


def test_throughput_and_real_time_factor_over_the_last_hour_and_day(alice, history):
    windows = stats(alice.client)["windows"]

    assert windows["lastHour"]["seconds"] == 3600
    assert windows["lastHour"]["throughput"] == {
        "runs": 1,
        "audioSeconds": 60.0,
        "processingSeconds": 4.0,
        "realTimeFactor": 15.0,
    }
    assert windows["lastDay"]["throughput"] == {
        "runs": 3,
        "audioSeconds": 180.0,
        "processingSeconds": 12.0,
        "realTimeFactor": 15.0,
    }


def test_a_run_split_into_chunks_is_one_run_of_its_whole_audio(alice, history):
    # 10 minutes of audio: the split took 3 s, then four pieces of 150 s took 10 s each.
    run, split = make_run(
        alice.user,
        status=RunStatus.SUCCEEDED,
        duration_ms=600_000,
        created_at=NOW - 30 * MINUTE,
        finished_at=NOW - 10 * MINUTE,
    )
    Job.objects.filter(pk=split.pk).update(
        job_type=JOB_TYPE_SPLIT,
        started_at=NOW - 30 * MINUTE,
        finished_at=NOW - 30 * MINUTE + 3 * SECOND,
    )
    for index in range(4):
        chunk = job(
            JOB_TYPE_CHUNK, JobStatus.SUCCEEDED, created=29 * MINUTE, wait=1, busy=10, run=run
        )
        RunChunk.objects.create(
            run=run,
            index=index,
            start_ms=index * 150_000,
            end_ms=(index + 1) * 150_000,
            stored_name=f"piece-{index}",
            status=ChunkStatus.SUCCEEDED,
            job=chunk,
        )

    throughput = stats(alice.client)["windows"]["lastHour"]["throughput"]

    assert throughput == {
        "runs": 2,  # the history's one, and this one
        "audioSeconds": 660.0,
        "processingSeconds": 47.0,
        "realTimeFactor": 14.04,
    }


def test_queue_wait_percentiles_by_job_type(alice, history):
    windows = stats(alice.client)["windows"]

    assert windows["lastHour"]["queueWait"] == [
        {"jobType": "test.record", "jobs": 20, "p50Seconds": 10.0, "p95Seconds": 19.0},
        {"jobType": "transcribe_long", "jobs": 2, "p50Seconds": 2.0, "p95Seconds": 10.0},
        {"jobType": "webhook", "jobs": 2, "p50Seconds": 3.0, "p95Seconds": 30.0},
    ]
    day = {row["jobType"]: row for row in windows["lastDay"]["queueWait"]}
    assert day["transcribe_long"] == {
        "jobType": "transcribe_long",
        "jobs": 5,
        "p50Seconds": 10.0,
        "p95Seconds": 120.0,
    }


def test_failures_by_job_type_and_code_with_their_share_of_ended_jobs(alice, history):
    windows = stats(alice.client)["windows"]

    assert windows["lastHour"]["failures"] == [
        {"jobType": "transcribe_long", "code": "timeout", "count": 1, "rate": 0.5}
    ]
    assert windows["lastDay"]["failures"] == [
        {"jobType": "transcribe_long", "code": "timeout", "count": 1, "rate": 0.2},
        {"jobType": "transcribe_long", "code": "worker_lost", "count": 1, "rate": 0.2},
    ]


def test_webhook_backlog_counts_queued_and_processing_webhook_jobs(alice, history):
    assert stats(alice.client)["webhookBacklog"] == {"queued": 2, "processing": 1}


def test_an_empty_queue_reads_zero_and_null(alice):
    answer = stats(alice.client)

    assert answer["webhookBacklog"] == {"queued": 0, "processing": 0}
    for window in answer["windows"].values():
        assert window["throughput"] == {
            "runs": 0,
            "audioSeconds": 0.0,
            "processingSeconds": 0.0,
            "realTimeFactor": None,
        }
        assert window["queueWait"] == [] and window["failures"] == []


def test_stats_take_the_same_number_of_queries_whatever_the_data(alice, history):
    with CaptureQueriesContext(connection) as few:
        stats(alice.client)
    for _ in range(3):
        transcription(alice.user, RunStatus.SUCCEEDED, created=10 * MINUTE, wait=1, busy=1)
        transcription(
            alice.user, RunStatus.FAILED, created=3 * HOUR, wait=1, busy=1, error_code="not_audio"
        )
        for n in range(30):
            job("test.record", JobStatus.SUCCEEDED, created=2 * HOUR, wait=n, busy=1)
        job("webhook", JobStatus.FAILED, created=HOUR, wait=1, busy=1, error_code="http_500")

    with CaptureQueriesContext(connection) as many:
        answer = stats(alice.client)

    assert len(many) == len(few)
    assert answer["windows"]["lastHour"]["throughput"]["runs"] == 4
    failures = {(f["jobType"], f["code"]) for f in answer["windows"]["lastDay"]["failures"]}
    assert ("webhook", "http_500") in failures and ("transcribe_long", "not_audio") in failures


@pytest.mark.django_db(transaction=True)
def test_a_job_that_failed_for_good_keeps_its_error_code():
    failing = Job.objects.create(job_type="test.permanent", max_attempts=3)

    from tasks_admin.runner import Outcome, run_job

    assert run_job(str(failing.pk)) is Outcome.FAILED
    failing.refresh_from_db()
    assert (failing.status, failing.error_code) == (JobStatus.FAILED, "bad_input")


# --- The dashboard chart's numbers ----------------------------------------------------------


def test_hourly_queue_depth_and_throughput_over_the_last_day(db):
    # Waited from 3 h 30 min ago until 1 h 30 min ago, then ran until 1 h 20 min ago.
    job("test.record", JobStatus.SUCCEEDED, created=210 * MINUTE, wait=7200, busy=600)
    # Still waiting: created 30 min ago.
    job("test.record", JobStatus.QUEUED, created=30 * MINUTE)
    # Cancelled while queued, 2 h 30 min ago, after waiting since 4 h 30 min ago.
    job("test.record", JobStatus.CANCELLED, created=270 * MINUTE, finished_at=NOW - 150 * MINUTE)
    # Done 30 min ago, after no wait.
    job("test.record", JobStatus.SUCCEEDED, created=40 * MINUTE, wait=0, busy=600)
    # Waited all day and more: started a minute ago.
    job("test.record", JobStatus.PROCESSING, created=30 * HOUR, wait=30 * 3600 - 60)

    with CaptureQueriesContext(connection) as queries:
        chart = hourly_queue(NOW)

    assert len(queries) == 2
    assert chart["ends"][-1] == NOW and chart["ends"][0] == NOW - 23 * HOUR
    # Index i is the hour ending (23 - i) hours ago; depth is counted at its end.
    ago = {23 - i: depth for i, depth in enumerate(chart["depth"])}
    assert ago[0] == 1  # the one created 30 min ago (the all-day one started a minute ago)
    assert ago[1] == 1  # the all-day one
    assert ago[2] == 2  # and the one that waited until 1 h 30 min ago
    assert ago[3] == 3  # and the one cancelled 2 h 30 min ago
    assert ago[4] == 2  # the all-day one and the cancelled one
    assert all(ago[k] == 1 for k in range(5, 24))  # the all-day one only
    done = {23 - i: n for i, n in enumerate(chart["succeeded"])}
    assert done[0] == 1  # finished 30 min ago
    assert done[1] == 1  # finished 1 h 20 min ago
    assert sum(chart["succeeded"]) == 2
