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

import pytest
import redis

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

    def idle_for_30_s() -> bool:
        assert "lost Redis" not in log.read_text(errors="replace")
        now = subscriptions_of(client, pid)
        assert [c["id"] for c in now] == [first["id"]], f"the subscriber reconnected: {now}"
        return int(now[0]["age"]) >= 30

    wait_until(idle_for_30_s, 45, "30 s of one idle subscription")

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
