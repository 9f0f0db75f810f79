"""The SSE streams are served beside Django's handler (lingoloop.streaming): what the
middleware chain did for them still holds, and an open stream costs no thread."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client

from lingoloop import eventhub
from lingoloop.streaming import LongLivedRoutes
from tests.conftest import queued_run, wait_until
from tests.sseclient import EventStream
from transcription import streams


def web_threads(base: str) -> int:
    """Threads of the web process serving `base` (found by its listening port)."""
    port = base.rsplit(":", 1)[1]
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lingoloop.server" in cmdline and port.encode() in cmdline:
            for line in status.read_text().splitlines():
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    raise AssertionError(f"no web process on port {port}")


def test_open_streams_do_not_hold_a_thread_each(service):
    """Through Django's middleware chain each stream kept a thread of its own for its whole
    life (the hooks of sync middleware run in a per-request executor)."""
    service.start_web()
    run = queued_run(service.account.client)
    first = service.events(run)
    wait_until(lambda: first.names(), 15, "the first stream's init")
    before = web_threads(service.web_url)

    opened = [service.events(run) for _ in range(40)]
    wait_until(lambda: all(s.names() for s in opened), 30, "every stream's init")

    assert web_threads(service.web_url) <= before + eventhub.DB_THREADS
    for stream in [first, *opened]:
        stream.close()


def test_a_stream_opened_with_the_session_cookie_of_a_logged_in_user(service):
    service.start_web()
    run = queued_run(service.account.client)
    browser = Client()
    browser.force_login(service.account.user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"

    stream = EventStream(f"{service.web_url}{run['links']['events']}", headers={"Cookie": cookie})
    wait_until(lambda: stream.names(), 15, "init")
    stranger = EventStream(f"{service.web_url}{run['links']['events']}")
    stranger.ended.wait(15)

    assert stream.status == 200
    assert stream.names()[0] == "init"
    assert stream.events[0].data["runId"] == run["runId"]
    assert stranger.status == 401
    stream.close()


def test_stream_answers_carry_the_security_headers_and_the_error_shape(service):
    service.start_web()
    run = queued_run(service.account.client)
    url = service.events_url(run)

    opened = EventStream(url)
    wait_until(lambda: opened.names(), 15, "init")
    refused = httpx.get(f"{service.web_url}{run['links']['events']}?access_token=forged")
    bad_query = httpx.get(f"{url}&lastEventId=1%00")

    for headers in (opened.response_headers, refused.headers):
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    assert opened.response_headers["content-type"].startswith("text/event-stream")
    assert opened.response_headers["cache-control"] == "no-cache"
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_events_token"
    assert bad_query.status_code == 400
    assert bad_query.json()["error"] == {
        "code": "invalid_characters",
        "message": "Query parameters may not contain NUL or other control characters.",
        "field": "lastEventId",
    }
    opened.close()


# --- In process: the ASGI side, with a client that goes away -------------------------------


class Exchange:
    """One ASGI request to `LongLivedRoutes`: what was sent back, and a client that can
    hang up."""

    def __init__(self, path: str, query: str = "", method: str = "GET", root: str = "") -> None:
        self.scope: MutableMapping[str, Any] = {
            "type": "http",
            "method": method,
            "path": root + path,
            "raw_path": (root + path).encode(),
            "query_string": query.encode(),
            "root_path": root,
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        self.sent: list[MutableMapping[str, Any]] = []
        self.hang_up = asyncio.Event()
        self.passed_on = False

    async def receive(self) -> MutableMapping[str, Any]:
        await self.hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    async def django(self, scope: Any, receive: Any, send: Any) -> None:
        self.passed_on = True

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


@pytest.fixture(autouse=True)
def _no_redis_in_process(settings, request):  # type: ignore[no-untyped-def]
    """The in-process exchanges run on a loop of their own (asyncio.run) that ends with the
    test; the hub's Redis subscriber, started on such a loop, kept its shutdown waiting.
    They are about the ASGI side: the database delivers their events."""
    if "service" not in request.fixturenames:
        settings.EVENTS_REDIS = None


@pytest.mark.django_db(transaction=True)
def test_a_client_that_hangs_up_ends_its_stream_and_its_subscription(alice):
    run = queued_run(alice.client)
    token = run["eventsToken"]

    async def exchange() -> Exchange:
        talk = Exchange(run["links"]["events"], f"access_token={token}")
        serving = asyncio.ensure_future(
            LongLivedRoutes(talk.django)(talk.scope, talk.receive, talk.send)
        )
        while b"event: init" not in talk.body:
            await asyncio.sleep(0.01)
        assert eventhub._taps, "the stream subscribed to its run"
        talk.hang_up.set()
        await asyncio.wait_for(serving, 10)
        assert not eventhub._taps, "the subscription ended with the stream"
        return talk

    talk = asyncio.run(exchange())
    assert talk.status == 200
    assert not talk.passed_on


@pytest.mark.django_db(transaction=True)
def test_a_stream_that_fails_to_open_answers_500_in_the_error_shape(alice, monkeypatch):
    run = queued_run(alice.client)

    def broken(asks: list[Any]) -> list[Any]:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(streams, "_open_runs", broken)
    talk = Exchange(run["links"]["events"], f"access_token={run['eventsToken']}")
    asyncio.run(LongLivedRoutes(talk.django)(talk.scope, talk.receive, talk.send))

    assert talk.status == 500
    assert b'"code": "server_error"' in talk.body


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/runs"), ("POST", "/api/runs/events"), ("GET", "/no/such/page")],
)
def test_everything_else_goes_to_django(method, path):
    talk = Exchange(path, method=method)
    asyncio.run(LongLivedRoutes(talk.django)(talk.scope, talk.receive, talk.send))
    assert talk.passed_on
    assert talk.sent == []


@pytest.mark.django_db(transaction=True)
def test_a_stream_that_breaks_after_it_opened_ends_cleanly_and_says_why(alice, monkeypatch, caplog):
    run = queued_run(alice.client)

    async def broken(self: Any) -> list[Any]:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(eventhub.Subscription, "catch_up", broken)
    talk = Exchange(run["links"]["events"], f"access_token={run['eventsToken']}")
    asyncio.run(LongLivedRoutes(talk.django)(talk.scope, talk.receive, talk.send))

    assert talk.status == 200
    assert b"event: init" in talk.body
    assert talk.sent[-1] == {"type": "http.response.body", "body": b""}  # the response ends
    assert "stream failed" in caplog.text
    assert "the database went away" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_stream_is_served_below_the_prefix_the_service_is_mounted_at(alice):
    run = queued_run(alice.client)
    talk = Exchange(run["links"]["events"], f"access_token={run['eventsToken']}", root="/stt")

    async def exchange() -> None:
        serving = asyncio.ensure_future(
            LongLivedRoutes(talk.django)(talk.scope, talk.receive, talk.send)
        )
        while b"event: init" not in talk.body:
            await asyncio.sleep(0.01)
        talk.hang_up.set()
        await asyncio.wait_for(serving, 10)

    asyncio.run(exchange())
    assert talk.status == 200
    assert not talk.passed_on
