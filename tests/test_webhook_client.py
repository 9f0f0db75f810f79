"""One attempt of webhooks/client.py against a loopback receiver: where it connects, what it
reads, what it refuses."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests import test_webhooks
from webhooks import client

receiver = test_webhooks.receiver  # the loopback receiver fixture


def test_the_connection_goes_to_the_checked_address_not_a_fresh_lookup(receiver, monkeypatch):
    # The check answered 127.0.0.1 for a name no resolver knows: had the client looked the
    # name up again to connect (where DNS could answer another address), it would have failed.
    checked = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(client, "check_callback_url", lambda url: [checked])
    port = receiver.url.split(":")[2].split("/")[0]

    answer = client.post(f"http://hooks.invalid:{port}/hook?x=1", b"{}", {"webhook-id": "msg_1"})

    assert answer.ok, answer
    (got,) = receiver.received
    assert got.headers["host"] == f"hooks.invalid:{port}"
    assert got.path == "/hook?x=1"
    assert got.headers["accept-encoding"] == "identity"


def test_an_internal_address_is_refused_before_any_connection(receiver, settings):
    settings.CALLBACK_ALLOWED_HOSTS = []

    answer = client.post(receiver.url, b"{}", {})

    assert answer.refused and answer.status_code is None
    assert receiver.received == []


def test_a_proxy_in_the_environment_is_not_used(receiver, settings, monkeypatch):
    settings.CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there

    assert client.post(receiver.url, b"{}", {}).ok


def test_a_long_answer_is_read_only_up_to_the_limit(receiver, settings):
    settings.CALLBACK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RESPONSE_MAX_BYTES = 1024
    receiver.script = [(200, {}, b"x" * 5_000_000)]

    answer = client.post(receiver.url, b"{}", {})

    assert answer.ok and len(answer.excerpt) == client.EXCERPT_CHARACTERS


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (None, None),
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after_in_seconds(header, expected):
    assert client._retry_after(header) == expected


def test_retry_after_as_a_date():
    when = datetime.now(UTC) + timedelta(minutes=10)
    waited = client._retry_after(format_datetime(when, usegmt=True))
    assert waited is not None and timedelta(minutes=9) < waited <= timedelta(minutes=10)
    assert client._retry_after(format_datetime(when - timedelta(hours=1), usegmt=True)) == (
        timedelta(0)
    )
