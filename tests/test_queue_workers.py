"""The queue under real worker processes: crashes, concurrency, retries, cancel, shutdown."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tasks_admin.models import Job, JobStatus, Worker
from tasks_admin.services import job_enqueue
from tests.conftest import long_speech, make_account, never_happens, stays_true, wait_until
from tests.job_handlers import read_log
from transcription.models import TranscriptRun

pytestmark = pytest.mark.slow

TEST_HANDLERS = {"JOB_HANDLER_MODULES": "tests.job_handlers"}


def job_status(job: Job) -> str:
    job.refresh_from_db()
    return job.status


def test_kill_9_mid_transcription_then_a_new_worker_finishes_the_run_once(service, tmp_path):
    audio = long_speech(tmp_path / "long.wav", repeats=8)
    service.start_web()
    run = service.submit(audio)
    stream = service.events(run)
    # Short enough to recover quickly, long enough that a loaded machine never misses a beat.
    fast_recovery = {"JOB_LEASE_SECONDS": "6", "WORKER_RETRY_DELAYS": "100"}
    try:
        doomed = service.worker(**fast_recovery)
        wait_until(lambda: TranscriptRun.objects.get(pk=run["runId"]).progress > 5, 120, "progress")
        os.killpg(doomed.pid, signal.SIGKILL)  # the whole cluster dies, as with a lost machine
        doomed.wait()
        service.worker(**fast_recovery)
        stream.wait_for("done", timeout=180)
        never_happens(lambda: stream.names().count("done") > 1, 1, "a second `done` event")
    finally:
        stream.close()

    stored = TranscriptRun.objects.get(pk=run["runId"])
    job = Job.objects.get(run_id=run["runId"])
    assert stored.status == "succeeded"
    assert (job.status, job.attempts) == (JobStatus.SUCCEEDED, 2)
    assert job.last_error == "The worker running it stopped unexpectedly."
    # Complete: every one of the eight sayings, segments in order up to the end of the audio
    # (one speech is 11 s, plus a second of silence).
    assert stored.text.lower().count("fellow americans") == 8
    starts = [segment["start"] for segment in stored.segments]
    assert starts == sorted(starts) and starts[0] < 1
    assert stored.segments[-1]["end"] > 8 * 12 - 3
    assert stream.names().count("done") == 1
    assert any(e.name == "error" and e.data["willRetry"] for e in stream.events)


def test_two_clusters_run_a_hundred_jobs_each_exactly_once(processes):
    env = {**TEST_HANDLERS, "MAX_CONCURRENT_JOBS": "2", "POLL_INTERVAL": "50", "TEST_JOB_MS": "50"}
    processes.worker(**env)
    processes.worker(**env)
    jobs = [job_enqueue(job_type="test.record") for _ in range(100)]

    wait_until(
        lambda: (
            Job.objects.filter(job_type="test.record", status=JobStatus.SUCCEEDED).count() == 100
        ),
        120,
        "all jobs",
    )

    log = read_log(Path(settings.DATA_DIR))
    starts = Counter(line[2] for line in log if line[1] == "start")
    finishes = Counter(line[2] for line in log if line[1] == "finish")
    expected = {str(job.pk): 1 for job in jobs}
    assert starts == expected
    assert finishes == expected
    clusters = {line[3].split(":")[0] for line in log if line[1] == "start"}
    assert len(clusters) == 2  # both clusters took part
    assert set(Job.objects.filter(job_type="test.record").values_list("attempts", flat=True)) == {1}


def test_failing_job_is_retried_with_the_configured_delays_then_fails(processes, settings):
    settings.WORKER_MAX_RETRIES = 2  # a job's attempts are fixed when it is queued
    failing = job_enqueue(job_type="test.fail")
    permanent = job_enqueue(job_type="test.permanent")
    processes.worker(**TEST_HANDLERS, WORKER_RETRY_DELAYS="700,1400")

    wait_until(lambda: job_status(failing) == JobStatus.FAILED, 60, "the failing job to fail")
    wait_until(lambda: job_status(permanent) == JobStatus.FAILED, 60, "the permanent failure")

    failing.refresh_from_db()
    permanent.refresh_from_db()
    # The user sees a sentence; the detail is in the worker's log, for the operator.
    assert (failing.attempts, failing.last_error) == (
        3,
        "The attempt failed on the server (RuntimeError).",
    )
    assert "RuntimeError: boom on attempt 3" in processes.started[0][1].read_text()
    assert (permanent.attempts, permanent.last_error) == (1, "this job can never work")
    starts = [
        float(line[0])
        for line in read_log(Path(settings.DATA_DIR))
        if line[1] == "start" and line[2] == str(failing.pk)
    ]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 2
    assert gaps[0] >= 0.7 and gaps[1] >= 1.4


def test_attempt_over_the_timeout_is_stopped_and_retried(processes, settings):
    settings.WORKER_MAX_RETRIES = 1
    job = job_enqueue(job_type="test.slow")
    processes.worker(**TEST_HANDLERS, JOB_TIMEOUT="1", WORKER_RETRY_DELAYS="100")

    wait_until(lambda: job_status(job) == JobStatus.FAILED, 60, "the job to time out twice")

    job.refresh_from_db()
    assert job.attempts == 2
    assert job.last_error == "The attempt ran out of time and was stopped."


def test_high_priority_job_submitted_last_is_claimed_first(processes):
    normal = [job_enqueue(job_type="test.record") for _ in range(3)]
    urgent = job_enqueue(job_type="test.record", priority=5)
    processes.worker(**TEST_HANDLERS)

    wait_until(
        lambda: Job.objects.filter(job_type="test.record", status=JobStatus.SUCCEEDED).count() == 4,
        60,
        "four jobs",
    )

    order = [line[2] for line in read_log(Path(settings.DATA_DIR)) if line[1] == "start"]
    assert order == [str(j.pk) for j in [urgent, *normal]]


def test_cancel_while_queued_means_the_job_never_starts(service):
    service.start_web()
    run = service.submit()
    job = Job.objects.get(run_id=run["runId"])

    def left_alone() -> bool:
        job.refresh_from_db()
        return (job.status, job.attempts) == (JobStatus.CANCELLED, 0)

    cancelled = service.api("POST", f"/api/runs/{run['runId']}/cancel")
    service.worker()
    # Long enough for a worker that wrongly picked it to have started it.
    stays_true(left_alone, 1.5, "the cancelled job left alone by the worker")

    assert cancelled.json()["status"] == "cancelled"
    after = service.api("POST", f"/api/runs/{run['runId']}/cancel")
    assert after.status_code == 409


def test_cancel_while_processing_stops_soon_and_frees_the_worker(service, tmp_path):
    service.start_web()
    service.worker()
    long_run = service.submit(long_speech(tmp_path / "long.wav", repeats=12))
    wait_until(lambda: TranscriptRun.objects.get(pk=long_run["runId"]).progress > 0, 60, "progress")
    next_run = service.submit()

    asked = time.monotonic()
    response = service.api("POST", f"/api/runs/{long_run['runId']}/cancel")
    assert response.status_code == 200
    service.wait_for_status(long_run["runId"], "cancelled", timeout=30)
    stopped_after = time.monotonic() - asked

    assert stopped_after < 10
    assert Job.objects.get(run_id=long_run["runId"]).status == JobStatus.CANCELLED
    service.wait_for_status(next_run["runId"], "succeeded", timeout=60)


def test_sigterm_lets_a_short_job_finish(processes):
    job = job_enqueue(job_type="test.slow")
    worker = processes.worker(**TEST_HANDLERS, TEST_SLOW_SECONDS="2")
    wait_until(lambda: job_status(job) == JobStatus.PROCESSING, 30, "the job to start")

    assert processes.stop(worker, timeout=60) == 0

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert not Worker.objects.exists()


def test_sigterm_past_the_grace_period_hands_the_job_back(processes):
    job = job_enqueue(job_type="test.slow")
    worker = processes.worker(
        **TEST_HANDLERS,
        TEST_SLOW_SECONDS="60",
        WORKER_SHUTDOWN_GRACE_SECONDS="1",
        JOB_LEASE_SECONDS="4",
    )
    wait_until(lambda: job_status(job) == JobStatus.PROCESSING, 30, "the job to start")

    assert processes.stop(worker, timeout=60) == 0

    job.refresh_from_db()
    assert (job.status, job.attempts, job.locked_by) == (JobStatus.QUEUED, 0, "")
    assert job.last_error == "handed back: its worker shut down"
    assert not Job.objects.filter(status=JobStatus.PROCESSING).exists()


def test_paused_cluster_claims_nothing_until_resumed(processes):
    staff = make_account("operator", staff=True)
    base = processes.web()
    processes.worker(**TEST_HANDLERS)
    headers = {"Authorization": f"Bearer {staff.token}"}

    paused = httpx.delete(f"{base}/api/admin/worker", headers=headers).json()
    job = job_enqueue(job_type="test.record")
    # Several poll intervals: a running cluster would have taken it.
    stays_true(lambda: job_status(job) == JobStatus.QUEUED, 1.5, "the job queued while paused")
    resumed = httpx.post(f"{base}/api/admin/worker", headers=headers).json()
    wait_until(lambda: job_status(job) == JobStatus.SUCCEEDED, 30, "the job after resume")

    assert [w["state"] for w in paused["workers"]] == ["paused"]
    assert [w["state"] for w in resumed["workers"]] == ["running"]
    listing = httpx.get(f"{base}/api/admin/worker", headers=headers).json()["workers"]
    assert listing[0]["alive"] is True
    assert listing[0]["jobsDone"] == Job.objects.filter(status=JobStatus.SUCCEEDED).count()
    assert httpx.get(f"{base}/api/health").json()["workersAlive"] == 1
