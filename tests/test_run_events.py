"""The event streams on a real web process: resume, connect races, auth, delivery, resources."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import timedelta

import httpx
import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from lingoloop import eventhub
from tests.conftest import (
    free_port,
    long_speech,
    make_account,
    queued_run,
    redis_reachable,
    stays_true,
    wait_until,
)
from tests.sseclient import EventStream
from transcription import streams
from transcription.events import publish
from transcription.models import TranscriptRun
from transcription.tokens import events_token_for

pytestmark = pytest.mark.slow


def bump(run_id: str, progress: float) -> None:
    """What a worker does for each progress step: change the row, then publish."""
    run = TranscriptRun.objects.select_related("audio").get(pk=run_id)
    run.progress = progress
    run.save(update_fields=["progress"])
    publish(run, "update", newSegments=[])


def test_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(service):
    service.start_web()
    run = queued_run(service.account.client)
    url = service.events_url(run)
    first = EventStream(url)
    first.wait_for("init")
    for step in range(1, 6):
        bump(run["runId"], step)
    wait_until(lambda: len(first.events) >= 6, 10, "five updates")
    first.close()
    last_seen = first.events[-1].id

    for step in range(6, 11):  # sent while the client is away
        bump(run["runId"], step)
    second = EventStream(url, headers={"Last-Event-ID": last_seen})
    third = EventStream(f"{url}&lastEventId={last_seen}")  # the query-string form
    for step in range(11, 13):
        bump(run["runId"], step)
    wait_until(lambda: len(second.events) >= 8 and len(third.events) >= 8, 10, "catch-up")
    second.close()
    third.close()

    seen = [e for e in first.events[1:] + second.events[1:] if e.name == "update"]
    ids = [int(e.id) for e in seen]
    assert ids == list(range(ids[0], ids[0] + 12))  # every event once, in order
    assert [e.data["progress"] for e in seen] == [float(p) for p in range(1, 13)]
    assert second.names()[0] == "init" and second.events[0].id == last_seen
    assert [e.id for e in third.events] == [e.id for e in second.events]


def test_event_sent_while_a_client_connects_is_not_lost(service):
    service.start_web()
    run = queued_run(service.account.client)
    url = service.events_url(run)
    stop = threading.Event()
    sent = [0]

    def burst() -> None:
        while not stop.is_set():
            sent[0] += 1
            bump(run["runId"], sent[0] % 100)
        connection.close()

    sender = threading.Thread(target=burst)
    sender.start()
    streams = []
    try:
        for _ in range(15):
            before = sent[0]
            streams.append(EventStream(url))
            # Events were sent while this client connected, and before the next one does.
            wait_until(lambda: sent[0] > before + 1, 10, "events during a connect")  # noqa: B023  (waited on here)
    finally:
        stop.set()
        sender.join()
    bump(run["runId"], 100)

    for stream in streams:
        wait_until(
            lambda s=stream: any(e.data.get("progress") == 100.0 for e in s.events[1:]),
            15,
            "the last event",
        )
        stream.close()
        ids = [int(e.id) for e in stream.events]
        # After the snapshot (`init`, id N), exactly N+1, N+2, …: nothing skipped at connect.
        assert ids[1:] == list(range(ids[0] + 1, ids[0] + len(ids))), stream.names()


def test_worker_event_reaches_a_client_within_a_second_without_redis(service, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    service.start_web(REDIS_URL="")
    run = queued_run(service.account.client)
    stream = service.events(run)
    stream.wait_for("init")

    latencies = []
    for step in range(1, 6):
        sent = time.monotonic()
        bump(run["runId"], step)  # this test process stands in for the worker process
        wait_until(lambda n=step: len(stream.events) > n, 5, f"update {step}")
        latencies.append(time.monotonic() - sent)
    stream.close()

    assert max(latencies) < 1.0, latencies


@pytest.mark.skipif(not redis_reachable(), reason="REDIS_URL is not set or Redis is not reachable")
def test_two_web_processes_with_redis_see_the_same_events(service):
    slow_db = {"EVENTS_DB_POLL_MS": "600000", "REDIS_SAFETY_POLL_MS": "600000"}  # only Redis
    one, two = service.start_web(**slow_db), service.processes.web(**slow_db)
    run = queued_run(service.account.client)
    path = f"{run['links']['events']}?access_token={run['eventsToken']}"
    streams = [EventStream(one + path), EventStream(two + path)]
    for stream in streams:
        stream.wait_for("init")

    for step in range(1, 4):
        bump(run["runId"], step)
    for stream in streams:
        wait_until(lambda s=stream: len(s.events) >= 4, 5, "three updates over Redis")
        stream.close()

    assert [(e.id, e.data["progress"]) for e in streams[0].events[1:]] == [
        (e.id, e.data["progress"]) for e in streams[1].events[1:]
    ]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_redis_stopped_during_a_job_the_run_still_succeeds(service, tmp_path):
    port = free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        redis_url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _redis_up(redis_url), 10, "the private redis")
        env = {"REDIS_URL": redis_url, "EVENTS_DB_POLL_MS": "500"}
        service.start_web(**env)
        service.worker(**env)
        run = service.submit(long_speech(tmp_path / "long.wav", repeats=4))
        service.wait_for_status(run["runId"], "processing", timeout=60)
        redis.send_signal(signal.SIGKILL)
        redis.wait()

        service.wait_for_status(run["runId"], "succeeded")
        late = service.events(run)
        late.ended.wait(10)
        late.close()
        assert late.names() == ["init", "done"]
        assert late.events[1].data["status"] == "succeeded"
    finally:
        if redis.poll() is None:
            redis.kill()
            redis.wait()


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except redis.RedisError:
        return False


def test_stream_auth_refuses_strangers_forgeries_and_api_tokens_in_urls(processes):
    alice, bob = make_account("alice"), make_account("bob")
    base = processes.web()
    run = queued_run(alice.client)
    events = f"{base}{run['links']['events']}"
    bobs_token = events_token_for(bob.user.pk)  # type: ignore[attr-defined]

    def status(url: str, **headers: str) -> tuple[int, str]:
        response = httpx.get(url, headers=headers, timeout=10)
        return response.status_code, response.json()["error"]["code"]

    assert status(f"{events}?access_token={bobs_token}") == (404, "not_found")
    assert status(events, Authorization=f"Bearer {bob.token}") == (404, "not_found")
    assert status(f"{events}?access_token={run['eventsToken']}x") == (401, "invalid_events_token")
    assert status(f"{events}?access_token={alice.token}") == (401, "api_token_in_url")
    with time_machine.travel(timezone.now() - timedelta(hours=2)):
        expired = events_token_for(alice.user.pk)  # type: ignore[attr-defined]
    assert status(f"{events}?access_token={expired}") == (401, "invalid_events_token")

    # Bob's own stream shows nothing of Alice's.
    own = EventStream(f"{base}/api/runs/events?access_token={bobs_token}")
    snapshot = own.wait_for("snapshot")
    own.close()
    assert snapshot.data["runs"] == []

    log = "".join(p.read_text(errors="replace") for p in processes.logs.glob("web-*.log"))
    for secret in (alice.token, bob.token, run["eventsToken"], bobs_token):
        assert secret not in log


def test_user_stream_snapshot_then_updates_of_own_runs(processes):
    alice, bob = make_account("alice"), make_account("bob")
    base = processes.web()
    mine = queued_run(alice.client)
    queued_run(bob.client)
    stream = EventStream(
        f"{base}/api/runs/events", headers={"Authorization": f"Bearer {alice.token}"}
    )
    snapshot = stream.wait_for("snapshot")

    bump(mine["runId"], 42)
    update = stream.wait_for("update", timeout=5)
    stream.close()

    assert [r["runId"] for r in snapshot.data["runs"]] == [mine["runId"]]
    assert (update.data["runId"], update.data["progress"]) == (mine["runId"], 42.0)


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="counts PostgreSQL backends; DATABASE_URL is not PostgreSQL",
)
def test_two_hundred_idle_streams_hold_at_most_a_handful_of_connections(service):
    service.start_web()
    run = queued_run(service.account.client)
    url = service.events_url(run)
    database = connection.settings_dict["NAME"]

    def backends() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [database],
            )
            return int(cursor.fetchone()[0])

    before = backends()
    streams = [EventStream(url) for _ in range(200)]
    try:
        for stream in streams:
            stream.wait_for("init")
        # Idle, for several poller rounds: the count never rises past a handful.
        stays_true(lambda: backends() - before <= 5, 1, "at most 5 connections held")
        held = backends() - before
    finally:
        for stream in streams:
            stream.close()

    assert held <= 5, f"{held} connections held by 200 idle streams"


def _stream_of_a_finished_run(
    channel: str, current_id: int, stored: list[tuple[str, str]]
) -> list[str]:
    """The events a new watcher of a finished run gets when `stored` (event, status) came on
    its channel after its snapshot's id was read (as the finish's own events do, a moment
    after the commit that finished the run)."""
    for event, status in stored:
        eventhub.store(channel, event, json.dumps({"status": status}))
    opening = streams.Opening(channel, current_id, {"status": "succeeded"}, finished=True)

    async def watch() -> list[str]:
        sent = []
        async for chunk in streams._stream(
            opening, current_id, "init", {"update", "error", "done"}, ends_at_done=True
        ):
            sent.append(chunk.split("\n", 1)[0].removeprefix("event: "))
            if sent[-1] == "update":
                break  # a run that goes on (a retry) streams on: enough seen
        return sent

    return asyncio.run(watch())


@pytest.mark.django_db(transaction=True)
def test_a_new_watcher_of_a_just_finished_run_gets_init_and_done_only():
    # The snapshot already shows the finish; its own events, stored a moment after the
    # commit, must not come again after `init` (seen under load: init, update, done).
    channel = "run-finished-just-now"
    current_id = eventhub.current_id(channel)
    finish = [("update", "succeeded"), ("done", "succeeded")]

    assert _stream_of_a_finished_run(channel, current_id, finish) == ["init", "done"]


@pytest.mark.django_db(transaction=True)
def test_a_new_watcher_of_a_finished_run_still_gets_what_came_after_the_finish():
    channel = "run-retried-since"
    current_id = eventhub.current_id(channel)
    retried = [("update", "succeeded"), ("done", "succeeded"), ("update", "queued")]

    sent = _stream_of_a_finished_run(channel, current_id, retried)

    assert sent == ["init", "update"]  # retried: the watcher follows the new attempt
