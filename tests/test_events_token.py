"""Events tokens are bound to the API token: regenerating it revokes the events tokens before.

A leaked API token is regenerated on the token page; the eventsTokens handed out with runs
until then (in URLs, so in logs and browser histories) must stop opening streams at once, not
when EVENTS_TOKEN_TTL runs out.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.authtoken.models import Token

from tests.conftest import post_audio
from tests.sseclient import EventStream


def opens(base: str, events_token: str) -> bool:
    """True when the user's stream opens with this token (its first event arrives), False
    when it is refused as an invalid events token."""
    stream = EventStream(f"{base}/api/runs/events?access_token={events_token}")
    try:
        if stream.status == 200:
            stream.wait_for("snapshot")
            return True
        assert stream.status == 401, stream.body
        assert json.loads(stream.body)["error"]["code"] == "invalid_events_token"
        return False
    finally:
        stream.close()


def regenerate_on_the_token_page(user: Any) -> str:
    client = Client()
    client.force_login(user)
    assert client.post("/accounts/token/").status_code == 302
    return str(Token.objects.get(user=user).key)


@pytest.mark.slow
def test_a_new_api_token_revokes_the_events_tokens_issued_before(service):
    alice = service.account
    base = service.start_web()
    run = service.submit()
    old = run["eventsToken"]
    assert opens(base, old)

    new_api_token = regenerate_on_the_token_page(alice.user)

    assert not opens(base, old)
    answer = httpx.get(
        f"{base}/api/runs/{run['runId']}",
        headers={"Authorization": f"Bearer {new_api_token}"},
        timeout=10,
    )
    new = answer.json()["eventsToken"]
    assert new != old
    assert opens(base, new)
    # The run's own stream too, not only the user's.
    stream = EventStream(f"{base}/api/runs/{run['runId']}/events?access_token={old}")
    stream.close()
    assert stream.status == 401


@pytest.mark.slow
def test_a_user_without_an_api_token_gets_working_events_tokens(processes, jfk):
    user = get_user_model().objects.create_user(username="carol", password="carol-password-1")
    browser = Client()
    browser.force_login(user)
    base = processes.web()
    answer = post_audio(browser, jfk, mode="async")
    assert answer.status_code == 202, answer.content
    assert not Token.objects.filter(user=user).exists()
    first = answer.json()["eventsToken"]

    assert opens(base, first)

    # Her first API token counts as a new one: what was issued before it stops working.
    regenerate_on_the_token_page(user)
    assert not opens(base, first)
