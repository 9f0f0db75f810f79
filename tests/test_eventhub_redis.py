"""The Redis subscriber of a real web process: it stays connected while idle, delivers the
next event at once, and notices a Redis that stops answering (DESIGN.md, "Events", item 13)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings

from lingoloop import eventhub
from tests.conftest import Processes, free_port, make_account, redis_reachable, wait_until
from tests.sseclient import EventStream
from transcription.events import user_channel
from transcription.tokens import events_token_for

pytestmark = pytest.mark.slow

# Neither database path may deliver within the test's deadlines: only pub/sub can.
ONLY_REDIS = {"EVENTS_DB_POLL_MS": "600000", "REDIS_SAFETY_POLL_MS": "600000"}


def subscriptions_of(client: redis.Redis, pid: int) -> list[dict[str, Any]]:
    """The web process's subscriptions as Redis sees them (`CLIENT LIST`)."""
    name = f"{eventhub.REDIS_CLIENT_NAME_PREFIX}{pid}"
    return [c for c in client.client_list(_type="pubsub") if c["name"] == name]


def watching_web(processes: Processes, **env: str) -> tuple[EventStream, int, Path, int]:
    """A web process with one open user stream: the stream, the web pid, its log, the user."""
    account = make_account("alice")
    base = processes.web(**ONLY_REDIS, **env)
    web, log = processes.started[-1]
    token = events_token_for(account.user.pk)  # type: ignore[attr-defined]
    stream = EventStream(f"{base}/api/runs/events?access_token={token}")
    stream.wait_for("snapshot")
    return stream, web.pid, log, account.user.pk  # type: ignore[attr-defined]


@pytest.mark.skipif(not redis_reachable(), reason="REDIS_URL is not set or Redis is not reachable")
def test_an_idle_subscriber_stays_connected_and_delivers_the_next_event_at_once(processes):
    stream, pid, log, user_id = watching_web(processes)
    client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    wait_until(lambda: subscriptions_of(client, pid), 10, "the web process to subscribe")
    [first] = subscriptions_of(client, pid)

    # Three times the command timeout (EVENTS_REDIS' socket_timeout, 5 s), after which an
    # idle subscriber that blocked on a read used to time out and reconnect, and three pings.
    idle_seconds = 3 * settings.EVENTS_REDIS["socket_timeout"]

    def idle_long_enough() -> bool:
        assert "lost Redis" not in log.read_text(errors="replace")
        now = subscriptions_of(client, pid)
        assert [c["id"] for c in now] == [first["id"]], f"the subscriber reconnected: {now}"
        return int(now[0]["age"]) >= idle_seconds

    wait_until(idle_long_enough, idle_seconds + 15, f"{idle_seconds} s of one idle subscription")

    stored = eventhub.store(user_channel(user_id), "update", json.dumps({"event": "update"}))
    eventhub.announce(stored)  # this test process stands in for a worker
    # 2 s is far below the 600 s polls: only pub/sub can make it.
    wait_until(lambda: "update" in stream.names(), 2, "the update over Redis")
    stream.close()
    assert stream.events[-1].id == str(stored.id)
    assert [c["id"] for c in subscriptions_of(client, pid)] == [first["id"]]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_a_redis_that_stops_answering_is_noticed_and_rejoined(processes):
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, decode_responses=True, socket_connect_timeout=1)
        wait_until(lambda: _answers(client), 10, "the private redis")
        _stream, pid, log, _ = watching_web(processes, REDIS_URL=f"redis://127.0.0.1:{port}/0")
        wait_until(lambda: subscriptions_of(client, pid), 10, "the web process to subscribe")
        [first] = subscriptions_of(client, pid)

        # Stopped, not killed: the connection stays open and the kernel still accepts bytes,
        # as with a hung Redis or a silent network; only an unanswered ping can tell.
        server.send_signal(signal.SIGSTOP)
        try:
            wait_until(
                lambda: "lost Redis" in log.read_text(errors="replace"),
                4 * eventhub.REDIS_PING_SECONDS,
                "the web process to notice",
            )
        finally:
            server.send_signal(signal.SIGCONT)
        wait_until(
            lambda: any(c["id"] != first["id"] for c in subscriptions_of(client, pid)),
            30,
            "a new subscription once Redis answers again",
        )
    finally:
        server.kill()
        server.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _redis_server(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)
    wait_until(lambda: _answers(client), 10, "the private redis")
    return server


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_events_flow_through_the_database_while_redis_is_gone_and_through_redis_once_back(
    processes: Processes, tmp_path: Path
) -> None:
    """A real worker's events to a real web process's stream, across a Redis restart (issue
    18): killed, so nothing answers on its port, then a new redis-server on the same port."""
    from tests.conftest import long_speech

    port = free_port()
    server = _redis_server(port)
    try:
        own = {
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "WHISPER_BATCH_SIZE": "0",  # sequential: updates all along the job
            "CHUNK_LONGER_THAN_SECONDS": "0",
        }
        account = make_account("alice")
        # While Redis is connected the database is read only every 600 s: what arrives
        # sooner came by pub/sub. Without Redis the web process reads it every 50 ms.
        base = processes.web(**own, EVENTS_DB_POLL_MS="50", REDIS_SAFETY_POLL_MS="600000")
        web = processes.started[-1][0]
        processes.worker(**own)
        audio = long_speech(tmp_path / "long.wav", 12)
        with audio.open("rb") as handle:
            submitted = httpx.post(
                f"{base}/api/transcribe",
                headers={"Authorization": f"Bearer {account.token}"},
                files={"file": (audio.name, handle)},
                data={"mode": "async"},
                timeout=60,
            )
        assert submitted.status_code == 202, submitted.text
        run = submitted.json()
        stream = EventStream(f"{base}{run['links']['events']}?access_token={run['eventsToken']}")

        def updates() -> int:
            return sum(e.name == "update" and e.data.get("progress", 0) > 0 for e in stream.events)

        wait_until(updates, 90, "the job to make progress")

        server.kill()  # Redis gone
        server.wait()
        gone = updates()
        wait_until(lambda: updates() >= gone + 3, 15, "updates through the database path")
        assert "done" not in stream.names(), "the job finished too soon for this test"

        server = _redis_server(port)  # back, on the same port, with nothing of the old one
        client = redis.Redis(port=port, decode_responses=True)
        wait_until(lambda: subscriptions_of(client, web.pid), 30, "the web process to resubscribe")
        back = updates()
        wait_until(lambda: updates() >= back + 3, 15, "updates through Redis again")
        # Its end, without waiting for the rest of the transcription.
        cancelled = httpx.post(
            f"{base}/api/runs/{run['runId']}/cancel",
            headers={"Authorization": f"Bearer {account.token}"},
            timeout=30,
        )
        assert cancelled.status_code in (200, 202), cancelled.text
        stream.wait_for("done", timeout=60)
        stream.close()

        ids = [int(e.id) for e in stream.events if e.id]
        assert ids == sorted(set(ids)), "an event was repeated or came out of order"
        assert stream.names().count("done") == 1
        assert stream.events[-1].data["status"] == "cancelled"
        for process, _log in processes.started:
            assert process.poll() is None  # nothing was restarted
    finally:
        server.kill()
        server.wait()
