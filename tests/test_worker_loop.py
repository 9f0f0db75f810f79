"""The worker cluster's own loop, the broker that only picks, the lease keeper and the handler
protocol, in one process against the real database."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import OperationalError, connection
from django.db.backends.utils import CursorWrapper
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.conf import Conf

import tests.job_handlers  # noqa: F401  (registers the test job types)
from tasks_admin.broker import JobBroker
from tasks_admin.handlers import Attempt, ClaimLost
from tasks_admin.management.commands.worker import Unit, prune_finished_jobs, run_due, units
from tasks_admin.models import Job, JobStatus, Worker
from tasks_admin.runner import LeaseKeeper, Outcome, enqueue_periodic_jobs, run_job
from tasks_admin.services import job_enqueue
from tests.test_admin import logged_in, make_run
from transcription.models import RunStatus


def claimed(job_type: str = "test.record", worker_id: str = "c1:host:1") -> Attempt:
    job = job_enqueue(job_type=job_type)
    assert job.claim(worker_id)
    assert job.locked_until is not None
    return Attempt(job=job, worker_id=worker_id, lease_until=job.locked_until)


# --- The loop -------------------------------------------------------------------------------


def test_a_failing_unit_is_logged_with_its_traceback_and_the_others_still_run(caplog):
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("the database went away")

    loop = [Unit("first", lambda: done.append("first")), Unit("broken", broken)]
    loop.append(Unit("last", lambda: done.append("last")))
    with caplog.at_level(logging.ERROR, logger="tasks_admin"):
        run_due(loop)

    assert done == ["first", "last"]
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "broken failed" in record.getMessage()
    assert record.exc_info and "the database went away" in caplog.text


def test_a_unit_runs_again_only_when_its_interval_has_passed():
    runs: list[int] = []
    loop = [Unit("rare", lambda: runs.append(1), every=3600.0)]

    run_due(loop)
    run_due(loop)

    assert runs == [1]


def test_the_loop_runs_the_queue_units_and_the_outbox_sweep_transcription_registered():
    names = [unit.name for unit in units(Worker(id="c1"))]

    for unit in ("beat", "reap expired leases", "enqueue periodic jobs", "forget stale workers"):
        assert unit in names
    assert "prune finished jobs" in names
    assert "deliver_stranded_events" in names  # registered by transcription, not imported


@pytest.mark.django_db
def test_pruning_removes_exactly_the_finished_jobs_older_than_the_retention(settings):
    settings.JOB_RETENTION_DAYS = 30
    now = timezone.now()
    old, recent = now - timedelta(days=31), now - timedelta(days=29)

    def job(status: str, finished_at: Any, created_at: Any = None) -> Job:
        return Job.objects.create(
            job_type="test.record",
            status=status,
            finished_at=finished_at,
            created_at=created_at or old,
        )

    gone = [job(s, old) for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)]
    kept = [
        job(JobStatus.SUCCEEDED, recent),
        job(JobStatus.QUEUED, None),  # old, but waiting (a long retry delay): never pruned
        job(JobStatus.PROCESSING, None),
    ]

    assert prune_finished_jobs() == 3

    assert not Job.objects.filter(pk__in=[j.pk for j in gone]).exists()
    assert set(Job.objects.values_list("pk", flat=True)) == {j.pk for j in kept}


@pytest.mark.django_db
def test_retention_zero_keeps_every_finished_job(settings):
    settings.JOB_RETENTION_DAYS = 0
    Job.objects.create(
        job_type="test.record",
        status=JobStatus.SUCCEEDED,
        finished_at=timezone.now() - timedelta(days=3650),
    )

    assert prune_finished_jobs() == 0
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_the_purge_job_is_queued_only_while_audio_retention_is_on(settings):
    settings.AUDIO_RETENTION_HOURS = 0
    assert "purge_audio" not in enqueue_periodic_jobs()
    assert not Job.objects.filter(job_type="purge_audio").exists()

    settings.AUDIO_RETENTION_HOURS = 24
    assert "purge_audio" in enqueue_periodic_jobs()


@pytest.mark.django_db
def test_workers_stale_for_long_are_forgotten_and_recently_stale_ones_stay(settings):
    settings.WORKER_STALE_SECONDS = 30
    now = timezone.now()
    Worker.objects.create(id="alive", host="a", pid=1, last_seen=now)
    Worker.objects.create(id="stale", host="a", pid=2, last_seen=now - timedelta(minutes=2))
    Worker.objects.create(id="dead", host="a", pid=3, last_seen=now - timedelta(minutes=6))

    assert Worker.objects.forget_stale() == 1

    assert set(Worker.objects.values_list("id", flat=True)) == {"alive", "stale"}
    assert not Worker.objects.get(pk="stale").is_alive  # still shown as STALE meanwhile


# --- The broker only picks ------------------------------------------------------------------


# dequeue and run_job start with close_old_connections(), which would end a test transaction.
@pytest.mark.django_db(transaction=True)
def test_dequeue_survives_a_database_error_and_picks_on_the_next_call(monkeypatch, caplog):
    monkeypatch.setattr(Conf, "POLL", 0)
    job = job_enqueue(job_type="test.record")
    broker = JobBroker()
    real_execute = CursorWrapper.execute
    calls = {"n": 0}

    def flaky_execute(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real_execute(self, sql, params)

    with monkeypatch.context() as patched:
        patched.setattr(CursorWrapper, "execute", flaky_execute)
        with caplog.at_level(logging.ERROR, logger="tasks_admin"):
            assert broker.dequeue() is None

    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    picked = broker.dequeue()
    assert picked is not None and picked[0][0] == str(job.pk)


@pytest.mark.django_db(transaction=True)
def test_dequeue_does_not_reap_expired_leases(monkeypatch, settings):
    monkeypatch.setattr(Conf, "POLL", 0)
    attempt = claimed(worker_id="dead:host:1")

    with time_machine.travel(timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)):
        assert JobBroker().dequeue() is None

    assert Job.objects.get(pk=attempt.job.pk).status == JobStatus.PROCESSING


@pytest.mark.django_db
def test_a_job_held_for_this_process_is_not_picked_and_the_claim_clears_the_hold():
    held = job_enqueue(job_type="test.record", hold=True)

    assert JobBroker().pick(limit=5) == []
    assert held.claim("web:host:1:abc")

    held.refresh_from_db()
    assert (held.picked_by, held.picked_until, held.locked_by) == ("", None, "web:host:1:abc")


# --- The lease keeper -----------------------------------------------------------------------


@pytest.mark.django_db
def test_heartbeat_reads_memory_only(django_assert_num_queries):
    attempt = claimed()

    with django_assert_num_queries(0):
        for _ in range(100):
            attempt.heartbeat()


@pytest.mark.django_db
def test_keeper_survives_a_transient_database_error_and_renews_at_the_next_tick(
    monkeypatch, caplog
):
    attempt = claimed()
    keeper = LeaseKeeper(attempt)
    real_extend = Job.extend_lease

    def failing(self: Job, worker_id: str) -> bool:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(Job, "extend_lease", failing)
    with caplog.at_level(logging.WARNING, logger="tasks_admin"):
        assert keeper.tick() is True
    assert not attempt.lost.is_set()
    assert "lease renewal failed" in caplog.text
    monkeypatch.setattr(Job, "extend_lease", real_extend)

    later = timezone.now() + timedelta(seconds=10)
    with time_machine.travel(later):
        assert keeper.tick() is True
    stored = Job.objects.get(pk=attempt.job.pk)
    assert stored.locked_until is not None and stored.locked_until > later
    assert (attempt.lease_until, stored.heartbeat_at) == (stored.locked_until, later)
    attempt.heartbeat()  # still held


@pytest.mark.django_db
def test_keeper_that_cannot_renew_until_the_lease_ends_gives_the_claim_up(monkeypatch, settings):
    attempt = claimed()
    keeper = LeaseKeeper(attempt)

    def failing(self: Job, worker_id: str) -> bool:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(Job, "extend_lease", failing)
    with time_machine.travel(timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)):
        assert keeper.tick() is False
        assert attempt.lost.is_set()
        with pytest.raises(ClaimLost):
            attempt.heartbeat()


@pytest.mark.django_db
def test_heartbeat_raises_once_the_lease_ran_out_even_if_the_keeper_is_stuck(settings):
    attempt = claimed()

    ran_out = timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)
    with time_machine.travel(ran_out), pytest.raises(ClaimLost):
        attempt.heartbeat()


@pytest.mark.django_db
def test_keeper_gives_up_when_its_claim_is_gone():
    attempt = claimed()
    Job.objects.filter(pk=attempt.job.pk).update(locked_by="other:host:2")

    assert LeaseKeeper(attempt).tick() is False
    assert attempt.lost.is_set()


# --- Attempt outcomes -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_failed_attempt_logs_one_error_line_with_its_traceback(caplog):
    job = job_enqueue(job_type="test.fail")

    with caplog.at_level(logging.DEBUG, logger="tasks_admin"):
        outcome = run_job(str(job.pk))

    assert outcome is Outcome.RETRYING
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(failures) == 1
    [record] = failures
    assert record.levelno == logging.ERROR
    assert record.getMessage() == f"job {job.pk} (test.fail) attempt 1 failed"
    assert record.exc_info and "boom on attempt 1" in caplog.text
    job.refresh_from_db()
    # The user sees a sentence, not the exception's text.
    assert job.last_error == "The attempt failed on the server (RuntimeError)."


@pytest.mark.django_db(transaction=True)
def test_outcomes_are_an_enum_that_reads_as_before():
    record = job_enqueue(job_type="test.record")
    assert run_job(str(record.pk)) is Outcome.SUCCEEDED
    assert run_job(str(record.pk)) is Outcome.NOT_CLAIMED  # a duplicate delivery
    assert Outcome.SUCCEEDED == "succeeded"


# --- Subjects in the queue admin and the worker API -----------------------------------------


def count_queries(fetch: Any) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as queries:
        answer = fetch()
    return len(queries), answer


@pytest.mark.django_db
def test_job_list_shows_each_run_with_a_fixed_number_of_queries(root, alice):
    client = logged_in(root)
    url = reverse("admin:tasks_admin_job_changelist")
    make_run(alice.user, status=RunStatus.QUEUED, filename="first.flac", duration_ms=61_000)
    Job.objects.create(job_type="purge_audio")
    few, _ = count_queries(lambda: client.get(url))
    runs = [
        make_run(alice.user, status=RunStatus.QUEUED, filename=f"talk-{i}.flac")[0]
        for i in range(8)
    ]
    Job.objects.create(job_type="transcribe_sync")

    many, response = count_queries(lambda: client.get(url))

    assert many == few
    page = response.content.decode()
    assert "first.flac" in page and "0:01:01" in page and "alice" in page
    for run in runs:
        link = reverse("admin:transcription_transcriptrun_change", args=[run.pk])
        assert f'<a href="{link}">{str(run.pk)[:8]}</a>' in page


@pytest.mark.django_db
def test_dashboard_shows_running_files_and_throughput_with_a_fixed_number_of_queries(root, alice):
    client = logged_in(root)
    url = reverse("admin:tasks_admin_queue_dashboard")
    Worker.objects.create(id="c1", host="box", pid=1)

    def running(filename: str) -> None:
        make_run(
            alice.user,
            status=RunStatus.PROCESSING,
            filename=filename,
            locked_by=f"c1:box:{uuid.uuid4().int % 1000}",
            locked_until=timezone.now() + timedelta(seconds=60),
        )

    running("one.flac")
    make_run(
        alice.user,
        status=RunStatus.SUCCEEDED,
        duration_ms=60 * 60_000,
        finished_at=timezone.now() - timedelta(minutes=1),
    )
    few, _ = count_queries(lambda: client.get(url))
    for i in range(5):
        running(f"more-{i}.flac")
    Worker.objects.create(id="c2", host="box", pid=2)

    many, response = count_queries(lambda: client.get(url))

    assert many == few
    assert response.context["throughput"] == 1.0
    page = response.content.decode()
    assert "one.flac" in page and "more-4.flac" in page
    assert "<td>6</td>" in page  # c1 runs six jobs


@pytest.mark.django_db
def test_worker_api_reads_current_jobs_in_one_query_whatever_the_workers(root):
    now = timezone.now()

    def cluster(name: str, jobs: int) -> None:
        Worker.objects.create(id=name, host="box", pid=1)
        for pid in range(jobs):
            attempt = claimed(worker_id=f"{name}:box:{pid}")
            assert attempt.job.heartbeat_at is not None

    cluster("c1", 1)
    few, _ = count_queries(lambda: root.client.get("/api/admin/worker"))
    cluster("c2", 2)
    cluster("c3", 3)

    many, response = count_queries(lambda: root.client.get("/api/admin/worker"))

    assert many == few
    workers = {w["id"]: w for w in response.json()["workers"]}
    assert [len(workers[c]["currentJobs"]) for c in ("c1", "c2", "c3")] == [1, 2, 3]
    job = workers["c3"]["currentJobs"][0]
    assert job["lockedBy"].startswith("c3:box:")
    assert job["heartbeatAt"].endswith("Z") and job["leaseUntil"].endswith("Z")
    assert job["heartbeatAt"] >= now.isoformat()[:19]
