"""SQLite has no NOTIFY: a worker cluster's pusher and a web process's event poller read
`PRAGMA data_version` every interval and look at the tables only when another connection has
committed, so a process with nothing to do costs next to nothing and a commit is still seen
within an interval."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_q.conf import Conf

from lingoloop import eventhub
from lingoloop.database import committed_since, sqlite_commit_mark
from tasks_admin.broker import DueJobSignal, JobBroker
from tasks_admin.services import job_enqueue
from tests.conftest import wait_until

T = TypeVar("T")

on_sqlite = pytest.mark.skipif(
    "connection.vendor != 'sqlite'", reason="PRAGMA data_version is SQLite's"
)


def in_another_connection(fn: Callable[[], T]) -> T:
    """`fn()` in a thread of its own, so on a database connection of its own (as another
    process would be); its result."""
    results: list[T] = []

    def run() -> None:
        try:
            results.append(fn())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert results, "the other connection's work did not finish"
    return results[0]


# --- The mark ------------------------------------------------------------------------------


@on_sqlite
@pytest.mark.django_db(transaction=True)
def test_a_commit_of_another_connection_moves_the_mark_and_one_of_its_own_does_not():
    mark = sqlite_commit_mark()
    assert not committed_since(mark)

    job_enqueue(job_type="purge_audio")  # this connection's own commit
    assert not committed_since(mark)

    in_another_connection(lambda: job_enqueue(job_type="purge_audio"))
    assert committed_since(mark)


@on_sqlite
@pytest.mark.django_db(transaction=True)
def test_a_mark_of_a_closed_connection_never_stands_for_a_new_one():
    mark = sqlite_commit_mark()
    connection.close()

    assert committed_since(mark)


@pytest.mark.django_db(transaction=True)
def test_without_sqlite_there_is_no_mark_and_anything_may_have_changed():
    if connection.vendor == "sqlite":
        pytest.skip("the other databases' answer")
    assert sqlite_commit_mark() is None
    assert committed_since(None)


# --- A worker cluster's pusher ---------------------------------------------------------------


@on_sqlite
@pytest.mark.django_db(transaction=True)
def test_an_idle_pusher_looks_at_the_job_table_once_a_poll_interval_when_nothing_is_committed(
    settings, monkeypatch
):
    """It looked every SQLITE_POLL_INTERVAL: 20 picks a second, each a millisecond or more of
    query building, in every cluster however busy or idle."""
    settings.SQLITE_POLL_INTERVAL = 20
    monkeypatch.setattr(Conf, "POLL", 0.5)
    broker = JobBroker()
    looks = 0
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        assert broker.dequeue() is None
        looks += 1

    # 1.5 s / POLL and the first: 4, and room for a commit of another test's leftover thread.
    # Looking every SQLITE_POLL_INTERVAL, it made 65.
    assert looks <= 8


@on_sqlite
@pytest.mark.django_db(transaction=True)
def test_a_job_queued_by_another_process_wakes_an_idle_pusher_long_before_its_poll(settings):
    settings.SQLITE_POLL_INTERVAL = 20
    ready, woke = threading.Event(), threading.Event()

    def idle_pusher() -> None:
        try:
            mark = sqlite_commit_mark()
            ready.set()
            DueJobSignal().wait(120, since=mark)
            woke.set()
        finally:
            connection.close()

    waiter = threading.Thread(target=idle_pusher, daemon=True)
    waiter.start()
    assert ready.wait(10)
    job = job_enqueue(job_type="purge_audio")  # the web's connection, not the pusher's

    wait_until(woke.is_set, 20, "the pusher to see the commit")
    assert [job_id for job_id, _ in JobBroker().dequeue() or []] == [str(job.pk)]


# --- A web process's event poller ------------------------------------------------------------


def _store_event(channel: str) -> eventhub.StoredEvent:
    with transaction.atomic():
        return eventhub.store(channel, "update", "{}")


@on_sqlite
@pytest.mark.django_db(transaction=True)
def test_the_event_poller_reads_nothing_until_another_process_commits(monkeypatch):
    monkeypatch.setattr(eventhub, "UNCHANGED_READ_SECONDS", 60.0, raising=False)
    channel = f"test-{uuid.uuid4().hex}"
    first = in_another_connection(lambda: _store_event(channel))
    known = {channel: 0}
    assert [e.id for e in eventhub._new_events(known)[channel][0]] == [first.id]
    known = {channel: int(first.id)}
    eventhub._new_events(known)  # the read at these ids

    with CaptureQueriesContext(connection) as queries:
        assert eventhub._new_events(known) == {}
    assert queries.captured_queries == []

    second = in_another_connection(lambda: _store_event(channel))
    assert [e.id for e in eventhub._new_events(known)[channel][0]] == [second.id]


@on_sqlite
@pytest.mark.django_db(transaction=True)
def test_the_event_poller_reads_again_for_a_channel_it_did_not_read(monkeypatch):
    monkeypatch.setattr(eventhub, "UNCHANGED_READ_SECONDS", 60.0, raising=False)
    older, newer = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    stored = in_another_connection(lambda: _store_event(newer))
    eventhub._new_events({older: 0})

    fresh = eventhub._new_events({older: 0, newer: 0})  # a stream opened on `newer` since

    assert [e.id for e in fresh[newer][0]] == [stored.id]


@on_sqlite
@pytest.mark.django_db(transaction=True)
def test_the_event_poller_reads_at_least_every_unchanged_read_interval(monkeypatch):
    """A commit of the poll's own connection is not one that data_version counts."""
    monkeypatch.setattr(eventhub, "UNCHANGED_READ_SECONDS", 0.0, raising=False)
    channel = f"test-{uuid.uuid4().hex}"
    eventhub._new_events({channel: 0})
    stored = _store_event(channel)  # on the poll's own connection

    assert [e.id for e in eventhub._new_events({channel: 0})[channel][0]] == [stored.id]
