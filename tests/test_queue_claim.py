"""The claim, the lease and the broker's pick, in one process against the real database."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connections
from django.utils import timezone
from rest_framework.test import APIClient

import tests.job_handlers  # noqa: F401  (registers the test job types)
from tasks_admin.broker import JobBroker
from tasks_admin.handlers import Attempt, ClaimLost
from tasks_admin.models import Job, JobStatus
from tasks_admin.runner import LeaseKeeper, reap_expired_leases
from tasks_admin.services import job_enqueue
from tests.conftest import post_audio, queued_run
from transcription.models import TranscriptRun

pytestmark = pytest.mark.django_db


def test_second_worker_cannot_claim_a_claimed_job():
    job = job_enqueue(job_type="test.record")

    assert Job.objects.get(pk=job.pk).claim("a:host:1") is True
    assert Job.objects.get(pk=job.pk).claim("b:host:2") is False

    job.refresh_from_db()
    assert (job.status, job.locked_by, job.attempts) == (JobStatus.PROCESSING, "a:host:1", 1)
    assert job.locked_until > timezone.now()


def test_claim_counts_the_attempt_and_refuses_a_spent_job(settings):
    settings.WORKER_MAX_RETRIES = 0
    job = job_enqueue(job_type="test.record")
    assert job.claim("a:host:1")
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED, locked_by="")

    assert Job.objects.get(pk=job.pk).claim("b:host:2") is False
    assert Job.objects.get(pk=job.pk).attempts == 1


def test_a_job_waiting_for_its_retry_delay_is_not_claimed():
    job = job_enqueue(job_type="test.record")
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now() + timedelta(minutes=1))

    assert Job.objects.get(pk=job.pk).claim("a:host:1") is False


def test_broker_picks_highest_priority_then_oldest():
    low = job_enqueue(job_type="test.record")
    urgent = job_enqueue(job_type="test.record", priority=5)
    later = job_enqueue(job_type="test.record")

    picked = [JobBroker().pick(limit=1)[0] for _ in range(3)]

    assert picked == [urgent.pk, low.pk, later.pk]


def test_a_picked_job_is_held_from_other_clusters_until_the_hold_runs_out(settings):
    settings.JOB_PICK_HOLD_SECONDS = 15
    job = job_enqueue(job_type="test.record")

    assert JobBroker().pick(limit=5) == [job.pk]
    assert JobBroker().pick(limit=5) == []
    # Still queued for users while it waits in a cluster's memory; no lease yet.
    held = Job.objects.get(pk=job.pk)
    assert (held.status, held.locked_by) == (JobStatus.QUEUED, "")
    assert held.picked_by and held.picked_until is not None
    with time_machine.travel(timezone.now() + timedelta(seconds=16)):
        assert JobBroker().pick(limit=5) == [job.pk]


def test_slow_holder_whose_lease_was_taken_over_writes_nothing(settings):
    settings.WORKER_RETRY_DELAYS = [0]
    job = job_enqueue(job_type="test.record")
    assert job.claim("slow:host:1")
    slow = Attempt(job=job, worker_id="slow:host:1", lease_until=job.locked_until)

    with time_machine.travel(timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)):
        assert reap_expired_leases() == 1
        fresh = Job.objects.get(pk=job.pk)
        assert fresh.status == JobStatus.QUEUED and "stopped unexpectedly" in fresh.last_error
        assert fresh.claim("fast:host:2")
        assert fresh.finish("fast:host:2", JobStatus.SUCCEEDED)

        assert LeaseKeeper(slow).tick() is False  # its compare-and-set matches no row
        assert slow.lost.is_set()
        with pytest.raises(ClaimLost):
            slow.heartbeat()
        assert slow.job.finish("slow:host:1", JobStatus.FAILED, error="late") is False

    job.refresh_from_db()
    assert (job.status, job.locked_by, job.attempts, job.last_error) == (
        JobStatus.SUCCEEDED,
        "fast:host:2",
        2,
        "The worker running it stopped unexpectedly.",
    )


def test_expired_lease_with_no_attempts_left_fails_the_job(settings):
    settings.WORKER_MAX_RETRIES = 0
    job = job_enqueue(job_type="test.record")
    assert job.claim("dead:host:1")

    with time_machine.travel(timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)):
        reap_expired_leases()

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.finished_at is not None


def test_queue_positions_shown_by_the_api_match_claim_order(alice):
    first = queued_run(alice.client)
    second = queued_run(alice.client)
    urgent = queued_run(alice.client, priority=5)

    positions = {
        run["runId"]: alice.client.get(f"/api/runs/{run['runId']}/progress").json()["queuePosition"]
        for run in (first, second, urgent)
    }
    picked = [JobBroker().pick(limit=1)[0] for _ in range(3)]
    claim_order = [str(Job.objects.get(pk=pk).run_id) for pk in picked]

    assert sorted(positions, key=positions.__getitem__) == claim_order
    assert sorted(positions.values()) == [1, 2, 3]
    assert claim_order[0] == urgent["runId"]


def test_priority_is_bounded_for_users_and_wider_for_staff(alice, jfk):
    from tests.conftest import make_account

    refused = post_audio(alice.client, jfk, "a.flac", priority=50)
    staff = make_account("operator", staff=True)

    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "priority"
    assert queued_run(staff.client, priority=50)["jobs"][0]["status"] == "queued"


def test_cancelling_a_queued_run_cancels_its_job_at_once(alice):
    run = queued_run(alice.client)

    response = alice.client.post(f"/api/runs/{run['runId']}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert Job.objects.get(run_id=run["runId"]).status == JobStatus.CANCELLED
    assert JobBroker().pick(limit=5) == []


def test_cancelling_a_finished_run_is_a_conflict(alice):
    run = queued_run(alice.client)
    alice.client.post(f"/api/runs/{run['runId']}/cancel")

    again = alice.client.post(f"/api/runs/{run['runId']}/cancel")

    assert again.status_code == 409
    assert again.json()["error"]["code"] == "run_finished"


def test_retry_queues_a_cancelled_run_with_a_fresh_job(alice):
    run = queued_run(alice.client)
    alice.client.post(f"/api/runs/{run['runId']}/cancel")

    response = alice.client.post(f"/api/runs/{run['runId']}/retry")

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["queuePosition"] == 1
    assert [j["status"] for j in body["jobs"]] == ["cancelled", "queued"]
    assert alice.client.post(f"/api/runs/{run['runId']}/retry").status_code == 409


@pytest.mark.django_db(transaction=True)
def test_concurrent_posts_with_one_idempotency_key_create_one_run(alice, jfk):
    answers: list[int] = []

    def post() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.token}")
        response = post_audio(client, jfk, mode="async", headers={"Idempotency-Key": "same-key"})
        answers.append(response.status_code)
        connections.close_all()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers) == [200, 200, 200, 202]
    assert TranscriptRun.objects.count() == 1
    assert Job.objects.count() == 1
    from tests.conftest import stored_files

    assert len(stored_files()) == 1
