"""Pickup without polling delay, workers below the web's priority, and queue positions that do
not make a web answer wait on the length of the queue (issue 11)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.conf import Conf

import tests.job_handlers  # noqa: F401  (registers the test job types)
from tasks_admin import runner
from tasks_admin.broker import NOTIFY_CHANNEL, DueJobSignal, JobBroker
from tasks_admin.models import Job, JobStatus, Worker, WorkerState
from tasks_admin.runner import CLUSTER_ENV, Outcome, run_job
from tasks_admin.services import job_enqueue
from tests.conftest import wait_until
from tests.test_queue_announcements import queued, recent_speed_is
from transcription.models import QueueSnapshot, RunStatus, TranscriptRun

on_postgresql = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="LISTEN/NOTIFY is PostgreSQL's"
)

# --- The wake-up on PostgreSQL ----------------------------------------------------------------


@pytest.fixture
def listener(transactional_db) -> Iterator[psycopg.Connection[Any]]:  # type: ignore[no-untyped-def]
    """A connection of its own that LISTENs as the pusher does (NOTIFY comes on commit)."""
    conn = connection.get_new_connection(connection.get_connection_params())
    conn.autocommit = True
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    yield conn
    conn.close()


def notified(conn: psycopg.Connection[Any], within: float) -> bool:
    return any(True for _ in conn.notifies(timeout=within, stop_after=1))


@on_postgresql
def test_a_job_queued_notifies_on_commit_and_a_pick_does_not(listener):
    with transaction.atomic():
        job = job_enqueue(job_type="purge_audio")
        assert not notified(listener, 0.2), "delivered before the commit"
    assert notified(listener, 10)

    assert JobBroker().pick(limit=1) == [job.pk]
    held = job_enqueue(job_type="purge_audio", hold=True)  # a web process's sync job
    assert not notified(listener, 0.5)

    Job.objects.filter(pk=held.pk).update(picked_by="", picked_until=None)  # hold dropped
    assert notified(listener, 10)


@on_postgresql
def test_a_job_handed_back_to_the_queue_notifies(listener):
    job = job_enqueue(job_type="purge_audio")
    assert job.claim("c1:box:1")
    assert notified(listener, 10)  # its enqueueing

    assert job.retry_later("c1:box:1", error="boom", delay=timedelta())
    assert notified(listener, 10)


@on_postgresql
def test_a_job_that_ends_notifies_its_cluster_has_an_idle_process(listener):
    job = job_enqueue(job_type="purge_audio")
    assert notified(listener, 10)  # its enqueueing
    assert job.claim("c1:box:1")
    assert not notified(listener, 0.2)

    assert job.finish("c1:box:1", JobStatus.SUCCEEDED)
    assert notified(listener, 10)


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_the_pusher_wakes_on_notify_long_before_its_poll():
    signal = DueJobSignal()
    signal.wait(0)  # opens the LISTEN connection
    woke = threading.Event()

    def wait() -> None:
        signal.wait(120)
        woke.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        job_enqueue(job_type="purge_audio")
        wait_until(woke.is_set, 20, "the pusher to wake on NOTIFY")
    finally:
        signal.close()


@pytest.mark.slow
def test_an_idle_worker_starts_a_job_long_before_its_safety_poll(service):
    """PostgreSQL: woken by NOTIFY; SQLite: by the upload's commit, seen within
    SQLITE_POLL_INTERVAL. Not by POLL_INTERVAL."""
    service.start_web()
    service.worker(POLL_INTERVAL="600000", SQLITE_POLL_INTERVAL="100")
    run = service.submit()
    service.wait_for_status(run["runId"], RunStatus.PROCESSING, timeout=30)


# --- The steps of a pickup -------------------------------------------------------------------


@pytest.fixture
def in_cluster(monkeypatch: pytest.MonkeyPatch) -> Worker:
    """This test process as a process of a running worker cluster."""
    monkeypatch.setenv(CLUSTER_ENV, "c1")
    monkeypatch.setattr(runner, "_worker_id", None)  # made afresh, in the cluster
    return Worker.objects.create(id="c1", host="box", pid=1)


def statements(queries: CaptureQueriesContext) -> list[str]:
    """What reached the database, without the connection's health check."""
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"] != "SELECT 1" and not q["sql"].startswith("BEGIN")
    ]


@pytest.mark.django_db(transaction=True)
def test_a_job_start_checks_its_cluster_in_the_claim_itself(in_cluster):
    job = job_enqueue(job_type="test.record")

    with CaptureQueriesContext(connection) as queries:
        assert run_job(str(job.pk)) is Outcome.SUCCEEDED

    first = statements(queries)[0]
    assert first.startswith('UPDATE "job"') and '"worker"' in first


@pytest.mark.django_db(transaction=True)
def test_a_pick_checks_its_cluster_in_its_own_query(in_cluster, monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 0)
    job = job_enqueue(job_type="test.record")

    with CaptureQueriesContext(connection) as queries:
        assert [job_id for job_id, _ in JobBroker().dequeue() or []] == [str(job.pk)]

    pick = [sql for sql in statements(queries) if sql.startswith('SELECT "job"."id"')]
    assert len(pick) == 1 and '"worker"' in pick[0]


@pytest.mark.django_db(transaction=True)
def test_a_cluster_picks_only_for_its_worker_processes_without_a_job(in_cluster, monkeypatch):
    """django-q2's pusher holds what it picks until a worker process is free: a cluster
    that picked beyond its idle processes would keep jobs from an idle cluster beside it."""
    monkeypatch.setattr(Conf, "POLL", 0)
    monkeypatch.setattr(Conf, "WORKERS", 2)
    first, second, third = (job_enqueue(job_type="test.record") for _ in range(3))
    broker = JobBroker()

    def picked() -> list[str]:
        return [job_id for job_id, _ in broker.dequeue() or []]

    assert picked() == [str(first.pk)]
    assert picked() == [str(second.pk)]
    assert picked() == [], "both processes have a job waiting for them"
    assert first.claim("c1:box:11", cluster="c1")  # a worker process starts it
    assert picked() == []
    # Another cluster's jobs are not this cluster's.
    Worker.objects.create(id="c2", host="box", pid=2)
    assert job_enqueue(job_type="test.record").claim("c2:box:21")
    assert picked() == []

    assert first.finish("c1:box:11", JobStatus.SUCCEEDED)
    assert picked() == [str(third.pk)]


@pytest.mark.parametrize("state", [WorkerState.PAUSED, WorkerState.STOPPING])
@pytest.mark.django_db(transaction=True)
def test_a_cluster_that_is_not_running_neither_picks_nor_claims(in_cluster, monkeypatch, state):
    monkeypatch.setattr(Conf, "POLL", 0)
    Worker.objects.filter(pk=in_cluster.pk).update(state=state)
    job = job_enqueue(job_type="test.record")
    assert JobBroker().dequeue() is None

    # A job it had picked before the pause: it lets go of the pick and claims nothing.
    Job.objects.filter(pk=job.pk).update(
        picked_by="c1:box:2", picked_until=timezone.now() + timedelta(seconds=30)
    )
    assert run_job(str(job.pk)) is Outcome.NOT_CLAIMED

    job.refresh_from_db()
    assert (job.status, job.attempts, job.picked_by, job.picked_until) == (
        JobStatus.QUEUED,
        0,
        "",
        None,
    )


@pytest.mark.django_db(transaction=True)
def test_a_process_whose_cluster_row_is_gone_claims_nothing(in_cluster):
    job = job_enqueue(job_type="test.record")
    in_cluster.delete()

    assert run_job(str(job.pk)) is Outcome.NOT_CLAIMED
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED


# --- Worker priority ----------------------------------------------------------------------------


def nice_of(pid: int) -> int:
    """Field 19 of /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def cluster_processes(master: int) -> list[int]:
    from tasks_admin.management.commands.worker import descendants

    return [master, *descendants(master)]


@pytest.mark.slow
def test_the_processes_that_run_jobs_are_niced_and_the_rest_of_the_cluster_is_not(service):
    """The master, the sentinel, the monitor and the pusher only keep house and pick: niced,
    the pusher's pick waited behind the web process storing the new run's events."""
    service.start_web()
    web_pid = service.processes.started[-1][0].pid
    worker = service.worker(WORKER_NICE="7")
    run = service.submit()
    wait_until(
        lambda: Job.objects.filter(run_id=run["runId"]).exclude(locked_by="").exists(),
        60,
        "a worker process to claim the job",
    )
    # `<cluster>:<host>:<pid>` of the process that ran it.
    job_pid = int(Job.objects.get(run_id=run["runId"]).locked_by.rsplit(":", 1)[1])
    housekeepers = set(cluster_processes(worker.pid)) - {job_pid}

    assert nice_of(web_pid) == 0
    assert nice_of(job_pid) == 7
    assert len(housekeepers) >= 3
    assert {nice_of(pid) for pid in housekeepers} == {0}


@pytest.mark.django_db(transaction=True)
def test_a_cluster_process_keeps_its_database_connection_from_pick_to_pick(monkeypatch):
    """django-q2 and the broker call close_old_connections() before every task and pick;
    in a cluster that no longer opens a new connection each time (on PostgreSQL ~10 ms of
    each pickup, twice)."""
    from tasks_admin.management.commands.worker import keep_database_connections

    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)  # restored afterwards
    keep_database_connections()
    first, second = job_enqueue(job_type="purge_audio"), job_enqueue(job_type="purge_audio")
    broker = JobBroker()

    assert [job_id for job_id, _ in broker.dequeue() or []] == [str(first.pk)]
    kept = connection.connection
    assert [job_id for job_id, _ in broker.dequeue() or []] == [str(second.pk)]
    assert kept is not None and connection.connection is kept


@pytest.mark.slow
def test_worker_nice_zero_leaves_the_priority_alone(service):
    worker = service.worker(WORKER_NICE="0")
    wait_until(lambda: len(cluster_processes(worker.pid)) >= 4, 30, "django-q2 to fork")

    assert {nice_of(pid) for pid in cluster_processes(worker.pid)} == {0}


# --- Queue positions in web answers -------------------------------------------------------------


@pytest.fixture
def reused_queue_reads(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings.QUEUE_SNAPSHOT_TTL_MS = 600_000  # never runs out within a test
    monkeypatch.setattr(QueueSnapshot, "_last_read", (0.0, None))
    recent_speed_is(monkeypatch, 1.0)


@pytest.mark.django_db
def test_answers_reuse_the_last_read_of_the_queue(
    alice, reused_queue_reads, django_assert_num_queries
):
    from tests.test_query_counts import PROGRESS_QUERIES

    Worker.objects.create(id="w1", host="box", pid=1, processes=1)
    runs = [queued(alice.user) for _ in range(30)]
    first = alice.client.get(f"/api/runs/{runs[-1].pk}/progress").json()

    # Token and user, the run, its jobs: no read of the queue or of the workers.
    with django_assert_num_queries(PROGRESS_QUERIES - 2):
        again = alice.client.get(f"/api/runs/{runs[-1].pk}/progress").json()

    assert first["queuePosition"] == again["queuePosition"] == 30


@pytest.mark.django_db
def test_a_run_the_last_read_cannot_know_reads_the_queue_again(alice, reused_queue_reads):
    runs = [queued(alice.user) for _ in range(3)]
    assert alice.client.get(f"/api/runs/{runs[0].pk}/progress").json()["queuePosition"] == 1

    late = queued(alice.user)  # became waiting after that read

    assert alice.client.get(f"/api/runs/{late.pk}/progress").json()["queuePosition"] == 4


@pytest.mark.django_db
def test_a_run_that_left_the_queue_has_no_position_whatever_the_last_read(
    alice, reused_queue_reads
):
    runs = [queued(alice.user) for _ in range(2)]
    assert alice.client.get(f"/api/runs/{runs[0].pk}/progress").json()["queuePosition"] == 1

    Job.objects.filter(run=runs[0]).update(status=JobStatus.CANCELLED)
    TranscriptRun.objects.filter(pk=runs[0].pk).update(status=RunStatus.CANCELLED)

    assert alice.client.get(f"/api/runs/{runs[0].pk}/progress").json()["queuePosition"] == 0
