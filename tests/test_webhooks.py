"""Webhooks on real processes: a web process, a worker cluster and a receiver on loopback.

The receiver is a real HTTP server answering from a script (status codes, a hang, a
Retry-After); loopback is reachable only because each test allow-lists 127.0.0.1, as an
operator would (CALLBACK_ALLOWED_HOSTS).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.conftest import JFK, Service, never_happens, wait_until
from tests.test_metrics import TOKEN as METRICS_TOKEN
from tests.test_metrics import parse, value
from webhooks.models import DeliveryAttempt, WebhookDelivery, WebhookSecret

pytestmark = pytest.mark.slow

LOOPBACK = {"CALLBACK_ALLOWED_HOSTS": "127.0.0.1"}
# Quick retries for tests; the default schedule spans about a day.
FAST = {**LOOPBACK, "WEBHOOK_RETRY_DELAYS": "200,200,200,200"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each POST with the next step of `script` (the last one repeats): a status
    code, ("hang", seconds), (status, {headers}) or (status, {headers}, body)."""

    script: list[Any] = field(default_factory=lambda: [200])
    received: list[Received] = field(default_factory=list)
    url: str = ""
    stop_hanging: threading.Event = field(default_factory=threading.Event)

    def next_step(self) -> Any:
        index = min(len(self.received) - 1, len(self.script) - 1)
        return self.script[index]

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.received.append(
                Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
            )
            step = state.next_step()
            if isinstance(step, tuple) and step[0] == "hang":
                state.stop_hanging.wait(step[1])
                return  # no answer at all
            code, headers, answer = (
                (*step, b"ok")[:3] if isinstance(step, tuple) else (step, {}, b"ok")
            )
            self.send_response(code)
            for name, header in headers.items():
                self.send_header(name, header)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            with contextlib.suppress(OSError):  # a client that read enough hangs up
                self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.stop_hanging.set()
    server.shutdown()
    server.server_close()


def delivered(run_id: str, status: str = "succeeded", count: int = 1) -> list[WebhookDelivery]:
    def ended() -> bool:
        return WebhookDelivery.objects.filter(run_id=run_id, status=status).count() >= count

    wait_until(ended, 120, f"{count} {status} deliveries of run {run_id}")
    return list(WebhookDelivery.objects.filter(run_id=run_id).order_by("created_at"))


def attempts(delivery: WebhookDelivery) -> list[DeliveryAttempt]:
    return list(delivery.attempts.order_by("attempted_at", "pk"))


def test_a_finished_run_calls_its_callback_url_once_signed_with_the_owners_secret(
    service: Service, receiver: Receiver
):
    service.start_web(**LOOPBACK)
    service.worker(**LOOPBACK)

    run = service.submit(JFK, callbackUrl=receiver.url)
    (delivery,) = delivered(run["runId"])

    assert len(receiver.received) == 1
    got = receiver.received[0]
    secret = WebhookSecret.objects.get(user__username="alice").secret
    # The library's verification, and the same by hand as the README shows it.
    body = Webhook(secret).verify(got.body, got.headers)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert got.headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 120

    assert body["type"] == "run.succeeded"
    assert body["data"]["runId"] == run["runId"]
    assert body["data"]["status"] == "succeeded"
    assert "fellow americans" in body["data"]["text"].lower()
    assert "eventsToken" not in body["data"]  # a credential of the owner's, not the receiver's
    datetime.fromisoformat(body["timestamp"])

    assert got.headers["webhook-id"] == delivery.message_id
    assert [(a.status_code, a.succeeded) for a in attempts(delivery)] == [(200, True)]
    answer = service.api("GET", f"/api/runs/{run['runId']}/deliveries")
    assert answer.status_code == 200
    (listed,) = answer.json()
    assert listed["webhookId"] == delivery.message_id
    assert listed["status"] == "succeeded" and listed["endpointId"] is None
    assert listed["attempts"][0]["statusCode"] == 200
    assert listed["attempts"][0]["response"] == "ok"
    never_happens(lambda: len(receiver.received) > 1, 1, "a second call")


def test_a_receiver_that_fails_twice_gets_the_third_attempt(service, receiver):
    receiver.script = [500, 503, 200]
    service.start_web(METRICS_TOKEN=METRICS_TOKEN, **FAST)
    service.worker(**FAST)

    run = service.submit(JFK, callbackUrl=receiver.url)
    (delivery,) = delivered(run["runId"])
    scraped = httpx.get(
        f"{service.web_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    samples = parse(scraped.text)
    for outcome, count in (("retrying", 2), ("delivered", 1), ("failed", 0)):
        assert value(samples, "lingoloop_webhook_deliveries_total", outcome=outcome) == count

    assert [a.status_code for a in attempts(delivery)] == [500, 503, 200]
    assert [a.succeeded for a in attempts(delivery)] == [False, False, True]
    # One message, tried three times: the id stays, each attempt is signed anew.
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1


def test_a_receiver_that_hangs_is_timed_out_and_tried_again(service, receiver):
    receiver.script = [("hang", 60), 200]
    env = {**FAST, "WEBHOOK_TIMEOUT_MS": "1000"}
    service.start_web(**env)
    service.worker(**env)

    run = service.submit(JFK, callbackUrl=receiver.url)
    (delivery,) = delivered(run["runId"])

    first, second = attempts(delivery)
    assert first.status_code is None and "timed out" in first.error.lower()
    assert 1000 <= first.duration_ms < 10_000
    assert second.status_code == 200


def test_retry_after_is_honoured_and_other_4xx_are_not_retried(service, receiver):
    receiver.script = [(429, {"Retry-After": "3"}), 200]
    service.start_web(**FAST)
    service.worker(**FAST)

    run = service.submit(JFK, callbackUrl=receiver.url)
    delivered(run["runId"])
    # The schedule says 200 ms; the receiver asked for 3 s.
    assert receiver.received[1].at - receiver.received[0].at >= 3

    receiver.received.clear()
    receiver.script = [404]
    run = service.submit(JFK, callbackUrl=receiver.url)
    (delivery,) = delivered(run["runId"], status="failed")
    assert [a.status_code for a in attempts(delivery)] == [404]
    assert delivery.job is not None and delivery.job.attempts == 1

    receiver.received.clear()
    receiver.script = [(302, {"Location": "http://169.254.169.254/latest/meta-data/"})]
    run = service.submit(JFK, callbackUrl=receiver.url)
    (delivery,) = delivered(run["runId"], status="failed")
    assert len(receiver.received) == 1  # the redirect was not followed
    assert "redirect" in delivery.job.last_error.lower()


def test_kill_9_during_a_delivery_still_ends_in_one_successful_delivery(service, receiver):
    receiver.script = [("hang", 60), 200]
    env = {**FAST, "JOB_LEASE_SECONDS": "3", "WEBHOOK_TIMEOUT_MS": "60000"}
    service.start_web(**env)
    doomed = service.worker(**env)

    run = service.submit(JFK, callbackUrl=receiver.url)
    wait_until(lambda: receiver.received, 120, "the first delivery to arrive")
    os.killpg(doomed.pid, signal.SIGKILL)  # mid-request: the receiver never answered
    doomed.wait()
    service.worker(**env)

    (delivery,) = delivered(run["runId"])
    never_happens(lambda: len(receiver.received) > 2, 2, "a third call")
    # The receiver saw the message twice, under one webhook-id to deduplicate by; the log has
    # one success.
    assert [r.headers["webhook-id"] for r in receiver.received] == [delivery.message_id] * 2
    assert [a.succeeded for a in attempts(delivery)] == [True]
    assert delivery.job is not None and delivery.job.attempts == 2


def test_internal_destinations_are_refused_without_the_allow_list(service, receiver):
    service.start_web()

    for url in (receiver.url, "http://10.0.0.7/hook", "http://[::ffff:127.0.0.1]/hook"):
        answer = service.api("POST", "/api/webhooks", json={"url": url, "events": ["run.failed"]})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "unsafe_callback_url"

    # Accepted while an operator allowed it, refused at delivery once the worker does not:
    # the destination is checked again when it is called.
    service.processes.stop_all()
    service.start_web(**LOOPBACK)
    service.worker()
    run = service.submit(JFK, callbackUrl=receiver.url)
    (delivery,) = delivered(run["runId"], status="failed")
    (attempt,) = attempts(delivery)
    assert attempt.status_code is None and "private" in attempt.error
    assert receiver.received == []


def test_standing_endpoints_get_the_events_they_chose_for_every_run(service, receiver):
    service.start_web(**LOOPBACK)
    service.worker(**LOOPBACK)
    chosen = {"url": receiver.url + "/all", "events": ["run.processing", "run.succeeded"]}
    answer = service.api("POST", "/api/webhooks", json=chosen)
    assert answer.status_code == 201, answer.text
    endpoint = answer.json()
    failures_only = {"url": receiver.url + "/failures", "events": ["run.failed"]}
    assert service.api("POST", "/api/webhooks", json=failures_only).status_code == 201

    run = service.submit(JFK)  # no callbackUrl of its own
    delivered(run["runId"], count=2)

    assert [
        (r.path, b["type"]) for r, b in zip(receiver.received, receiver.bodies(), strict=True)
    ] == [
        ("/hook/all", "run.processing"),
        ("/hook/all", "run.succeeded"),
    ]
    listed = service.api("GET", f"/api/runs/{run['runId']}/deliveries").json()
    assert {d["endpointId"] for d in listed} == {endpoint["id"]}
    assert [e["url"] for e in service.api("GET", "/api/webhooks").json()] == [
        chosen["url"],
        failures_only["url"],
    ]

    secret = service.api("GET", "/api/webhooks/secret").json()["secret"]
    rotated = service.api("POST", "/api/webhooks/secret/rotate").json()["secret"]
    assert rotated != secret and rotated.startswith("whsec_")
    assert service.api("DELETE", f"/api/webhooks/{endpoint['id']}").status_code == 204

    # A redelivery: the same message again, signed with the new secret.
    delivery = listed[-1]
    path = f"/api/runs/{run['runId']}/deliveries/{delivery['id']}/redeliver"
    answer = service.api("POST", path)
    assert answer.status_code == 202, answer.text
    wait_until(lambda: len(receiver.received) == 3, 60, "the redelivery")
    again = receiver.received[-1]
    assert again.headers["webhook-id"] == delivery["webhookId"]
    assert again.body == receiver.received[1].body
    Webhook(rotated).verify(again.body, again.headers)
    wait_until(
        lambda: WebhookDelivery.objects.get(pk=delivery["id"]).status == "succeeded",
        30,
        "the redelivery to be recorded",
    )
    assert len(attempts(WebhookDelivery.objects.get(pk=delivery["id"]))) == 2


def test_a_large_transcript_is_sent_as_a_link(service, receiver):
    env = {**LOOPBACK, "WEBHOOK_MAX_PAYLOAD_BYTES": "1024", "PUBLIC_URL": "https://stt.example"}
    service.start_web(**env)
    service.worker(**env)

    run = service.submit(JFK, callbackUrl=receiver.url)
    delivered(run["runId"])

    (body,) = receiver.bodies()
    assert body["data"]["truncated"] is True
    assert "text" not in body["data"] and "segments" not in body["data"]
    transcript = body["data"]["links"]["transcript"]
    assert transcript == f"https://stt.example/api/runs/{run['runId']}/transcript"
