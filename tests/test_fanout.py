"""Many watchers, cheaply: the hub's database threads keep a few connections and batch the
reads that many streams ask for at once; an event is encoded once for all its streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from lingoloop import eventhub
from lingoloop.errors import ApiError
from tests.conftest import queued_run, stays_true, wait_until
from tests.sseclient import EventStream
from transcription import streams
from transcription.tokens import events_token_for

# --- The database threads ------------------------------------------------------------------


def _busy_threads(release: threading.Event) -> list[asyncio.Future[Any]]:
    """Occupy every database thread until `release` is set."""
    return [
        asyncio.ensure_future(eventhub.db_call(release.wait)) for _ in range(eventhub.DB_THREADS)
    ]


def test_callers_that_wait_for_a_thread_share_one_call():
    calls: list[list[int]] = []

    def double(items: list[int]) -> list[int | Exception]:
        calls.append(list(items))
        return [ValueError("odd") if n % 2 else n * 2 for n in items]

    async def main() -> list[Any]:
        release = threading.Event()
        busy = _busy_threads(release)
        await asyncio.sleep(0)  # the busy calls are queued first
        asks = [asyncio.ensure_future(eventhub.db_batch(double, n)) for n in range(40)]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*busy)
        return await asyncio.gather(*asks, return_exceptions=True)

    answers = asyncio.run(main())

    assert calls == [list(range(40))]
    assert [a if not isinstance(a, ValueError) else "odd" for a in answers] == [
        "odd" if n % 2 else n * 2 for n in range(40)
    ]


def test_a_call_a_thread_has_taken_is_not_joined():
    # A subscription's catch-up must start after its listener was registered: a caller that
    # comes while a read runs gets a read of its own.
    started, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def read(items: list[str]) -> list[str | Exception]:
        calls.append(list(items))
        started.set()
        release.wait(10)
        return list(items)

    async def main() -> list[str]:
        first = asyncio.ensure_future(eventhub.db_batch(read, "first"))
        await asyncio.to_thread(started.wait, 10)
        second = asyncio.ensure_future(eventhub.db_batch(read, "second"))
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(first, second))

    assert asyncio.run(main()) == ["first", "second"]
    assert calls == [["first"], ["second"]]


def _thread_connections(calls: int) -> list[Any]:
    """The database connection (wrapper) each of `calls` reads in the hub's threads used."""

    def own() -> Any:
        # `connection` would be a proxy to the caller's: take the thread's own.
        wrapper = connections["default"]
        wrapper.ensure_connection()
        return wrapper

    async def main() -> list[Any]:
        return [await eventhub.db_call(own) for _ in range(calls)]

    return asyncio.run(main())


@pytest.mark.django_db(transaction=True)
def test_database_threads_keep_their_connections_while_busy_and_close_them_when_idle():
    used = _thread_connections(30)

    # A fresh connection per read was most of a stream's connect.
    assert len({id(w.connection) for w in used}) <= eventhub.DB_THREADS
    wait_until(
        lambda: all(w.connection is None for w in used),
        eventhub.DB_IDLE_SECONDS * 5,
        "idle database threads to close their connections",
    )


@pytest.mark.django_db(transaction=True)
def test_the_database_threads_close_their_connections_when_told():
    used = _thread_connections(10)

    eventhub.close_connections()

    assert all(w.connection is None for w in used)


# --- Openings and events -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_openings_reads_a_shared_run_once_and_refuses_each_stranger(alice, bob):
    run_id = uuid.UUID(queued_run(alice.client)["runId"])
    factory = RequestFactory()

    def ask(token: str) -> tuple[Any, uuid.UUID]:
        return (factory.get(f"/api/runs/{run_id}/events", {"access_token": token}), run_id)

    alices, bobs = events_token_for(alice.user.pk), events_token_for(bob.user.pk)
    with CaptureQueriesContext(connection) as alone:
        [single] = streams._open_runs([ask(alices)])
    with CaptureQueriesContext(connection) as together:
        many = streams._open_runs([ask(alices)] * 30 + [ask(bobs), ask("forged")])

    *openings, stranger, forged = many
    assert all(opening == single for opening in openings)
    assert isinstance(single, streams.Opening) and single.snapshot["runId"] == str(run_id)
    assert isinstance(stranger, ApiError) and stranger.status_code == 404
    assert isinstance(forged, ApiError) and forged.code == "invalid_events_token"
    # 30 openings cost what one does, plus checking the two other credentials.
    assert len(together) < 2 * len(alone), together.captured_queries


def test_the_streams_of_a_channel_share_one_listener_and_each_gets_every_event():
    # One django-eventstream listener per stream meant a write to the loop's wake-up pipe per
    # stream per event.
    async def main() -> tuple[int, list[list[int]]]:
        subscriptions = [eventhub.Subscription("fan", 0) for _ in range(50)]
        async with contextlib.AsyncExitStack() as stack:
            for subscription in subscriptions:
                await stack.enter_async_context(subscription)
            listeners = len(eventhub._listener_manager().listeners_by_channel["fan"])
            for event_id in (1, 2, 3):
                eventhub._deliver_here(eventhub._make_event("fan", "update", "{}", event_id))
            got = []
            for subscription in subscriptions:
                assert await subscription.wait(5)
                got.append([event_id for event_id, _ in await subscription.next_events()])
        return listeners, got

    listeners, got = asyncio.run(main())

    assert listeners == 1
    assert got == [[1, 2, 3]] * 50
    assert "fan" not in eventhub._listener_manager().listeners_by_channel


def test_a_stored_event_is_sent_as_the_json_text_it_was_stored_with():
    text = json.dumps({"event": "update", "progress": 42.0, "text": "a\nb"})
    event = eventhub._make_event("run-x", "update", text, 7)

    sent = eventhub.encode_stored(event)

    assert sent == f"event: update\nid: 7\ndata: {text}\n\n"
    lines = eventhub.encode_stored(eventhub._make_event("run-x", "update", '{\n"a": 1}', 8))
    assert lines == 'event: update\nid: 8\ndata: {"a":1}\n\n'  # a line break must not split it


# --- A real web process --------------------------------------------------------------------


def _web_pid(service: Any) -> int:
    web, _ = service.processes.started[-1]
    return int(web.pid)


def _connections_of(pid: int) -> int:
    """Database connections a web process holds: PostgreSQL backends named for it cannot be
    told apart, so count all of the test database's other backends; SQLite: its open
    descriptors on the database file."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [connection.settings_dict["NAME"]],
            )
            return int(cursor.fetchone()[0])
    database = os.path.realpath(connection.settings_dict["NAME"])
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.path.realpath(fd.readlink()) == database
        except OSError:
            continue  # closed while we looked
    return count


@pytest.mark.slow
def test_a_hundred_streams_connecting_at_once_hold_at_most_five_connections(service):
    service.start_web()
    run = queued_run(service.account.client)
    url = service.events_url(run)
    pid = _web_pid(service)
    before = _connections_of(pid)
    most = [0]
    sampling = threading.Event()

    def sample() -> None:
        try:
            while not sampling.is_set():
                most[0] = max(most[0], _connections_of(pid) - before)
                sampling.wait(0.02)
        finally:
            connection.close()  # this thread's own: the test database is dropped at the end

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    streams_: list[EventStream] = []
    try:
        openers = [
            threading.Thread(target=lambda: streams_.append(EventStream(url))) for _ in range(100)
        ]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(60)
        for stream in streams_:
            stream.wait_for("init", timeout=60)
        stays_true(lambda: _connections_of(pid) - before <= 5, 2, "at most 5 connections held")
    finally:
        sampling.set()
        sampler.join(5)
        for stream in streams_:
            stream.close()

    assert len(streams_) == 100
    assert most[0] <= 5, f"{most[0]} connections held while 100 streams connected"
