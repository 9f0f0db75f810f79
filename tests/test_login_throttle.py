"""Login throttling on every door: the API's token endpoint, the login page and the admin's.

LOGIN_FAILURE_LIMIT failed logins lock out for LOGIN_COOLOFF_SECONDS; the failure that reaches
the limit already answers 429, with Retry-After, and so does every login after it until the
cool-off ends. Counted together: each client address, and each username except at the
addresses it has logged in from before (lingoloop/login_throttle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from tests.conftest import make_account

ATTACKER = "203.0.113.66"
ALICES_DESK = "198.51.100.7"
ALICES_HOTEL = "198.51.100.99"


@pytest.fixture(autouse=True)
def _quick_hashes(settings) -> None:  # type: ignore[no-untyped-def]
    # Every refused login hashes a password: keep dozens of them quick. Autouse, so accounts
    # made by other fixtures get this hasher too.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db):  # type: ignore[no-untyped-def]
    return make_account("alice", staff=True)  # staff: the admin's login lets her in too


@dataclass
class Door:
    """One login form or endpoint, and what it answers to a good and a bad password."""

    name: str
    path: str
    success: int
    failure: int

    def attempt(self, username: str, password: str, address: str) -> Any:
        data = {"username": username, "password": password}
        if self.name == "api":
            return APIClient().post(self.path, data, format="json", REMOTE_ADDR=address)
        return Client().post(self.path, data, REMOTE_ADDR=address)


API = Door("api", "/api/auth/token", success=200, failure=401)
WEB = Door("web", "/accounts/login/", success=302, failure=200)  # the form again, with an error
ADMIN = Door("admin", "/admin/login/", success=302, failure=200)
DOORS = [API, WEB, ADMIN]


def fail_until_locked(door: Door, username: str, address: str) -> Any:
    """LOGIN_FAILURE_LIMIT wrong passwords: all but the last answer as a plain failure."""
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        assert door.attempt(username, "a wrong guess", address).status_code == door.failure
    return door.attempt(username, "a wrong guess", address)


def assert_locked(response: Any, door: Door, seconds: int) -> None:
    """A 429 that asks to wait `seconds` more: the lock lifts the second after the cool-off of
    the failure that reached the limit, hence the + 1."""
    assert response.status_code == 429
    assert response["Retry-After"] == str(seconds + 1)
    if door.name == "api":
        error = response.json()["error"]
        assert error["code"] == "too_many_login_attempts"
        assert "Try again in" in error["message"]
    else:
        page = response.content.decode()
        assert "Too many attempts" in page
        assert "Please wait" in page


@pytest.mark.parametrize("door", DOORS, ids=lambda d: d.name)
def test_the_limit_locks_the_door_with_429_and_retry_after(alice, door):
    with time_machine.travel("2026-03-02 09:00:00Z", tick=False):
        locking = fail_until_locked(door, "alice", ATTACKER)
        assert_locked(locking, door, settings.LOGIN_COOLOFF_SECONDS)
        # Even the right password is refused now, without being checked.
        assert_locked(
            door.attempt("alice", "alice-password-1", ATTACKER),
            door,
            settings.LOGIN_COOLOFF_SECONDS,
        )


@pytest.mark.parametrize("door", DOORS, ids=lambda d: d.name)
def test_the_lock_lifts_after_the_cool_off_and_refused_attempts_do_not_extend_it(alice, door):
    cool_off = settings.LOGIN_COOLOFF_SECONDS
    with time_machine.travel("2026-03-02 09:00:00Z", tick=False) as clock:
        fail_until_locked(door, "alice", ATTACKER)

        clock.shift(cool_off - 60)
        refused = door.attempt("alice", "another guess", ATTACKER)
        assert_locked(refused, door, 60)

        # Retry-After is exact: a second early is still too early.
        clock.shift(int(refused["Retry-After"]) - 1)
        assert door.attempt("alice", "alice-password-1", ATTACKER).status_code == 429
        clock.shift(1)
        assert door.attempt("alice", "alice-password-1", ATTACKER).status_code == door.success


def test_one_door_locked_is_every_door_locked(alice):
    with time_machine.travel("2026-03-02 09:00:00Z", tick=False):
        fail_until_locked(API, "alice", ATTACKER)
        for door in (WEB, ADMIN):
            response = door.attempt("alice", "alice-password-1", ATTACKER)
            assert_locked(response, door, settings.LOGIN_COOLOFF_SECONDS)


def test_an_address_guessing_at_many_usernames_is_locked(alice):
    limit = settings.LOGIN_FAILURE_LIMIT
    answers = [API.attempt(f"user{n}", "a wrong guess", ATTACKER).status_code for n in range(limit)]

    assert answers == [401] * (limit - 1) + [429]
    assert API.attempt("alice", "alice-password-1", ATTACKER).status_code == 429
    # Nobody else is held up by it.
    assert API.attempt("alice", "alice-password-1", ALICES_DESK).status_code == 200


@pytest.mark.parametrize("door", DOORS, ids=lambda d: d.name)
def test_a_username_hammered_from_elsewhere_still_opens_where_its_owner_logs_in(alice, door):
    """Guesses at one account from many addresses are stopped, but the attacker cannot lock
    Alice out of an address she has logged in from before."""
    assert door.attempt("alice", "alice-password-1", ALICES_DESK).status_code == door.success
    for n in range(settings.LOGIN_FAILURE_LIMIT):
        # Each guess from another address: no address reaches the limit on its own.
        door.attempt("alice", "a wrong guess", f"203.0.113.{n + 1}")

    assert door.attempt("alice", "alice-password-1", ALICES_DESK).status_code == door.success
    # An address she never used waits out the cool-off like the attacker's.
    assert door.attempt("alice", "alice-password-1", ALICES_HOTEL).status_code == 429
    assert door.attempt("alice", "another guess", "203.0.113.200").status_code == 429


def test_wrong_credentials_on_the_api_are_401_and_missing_fields_400(alice):
    wrong = API.attempt("alice", "nope", ALICES_DESK)
    nobody = API.attempt("nobody", "nope", ALICES_DESK)
    missing = APIClient().post("/api/auth/token", {"username": "alice"}, format="json")

    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json() == nobody.json()  # no hint whether the account exists
    assert wrong.json()["error"]["code"] == "invalid_credentials"
    assert wrong["WWW-Authenticate"] == "Bearer"
    assert missing.status_code == 400
    assert missing.json()["error"] == {
        "code": "required",
        "message": "password: This field is required.",
        "field": "password",
    }


def test_a_username_longer_than_any_account_can_have_is_400_not_a_failed_login(alice):
    """Found by the schema fuzzer on PostgreSQL: the failed login's 300-character name did not
    fit django-axes' AccessAttempt row (255), and the token endpoint answered 500."""
    answer = API.attempt("a" * 300, "nope", ALICES_DESK)

    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == "username"
    assert answer.json()["error"]["code"] == "max_length"
    # Django's login form passes such a name to `authenticate` as it is: django-axes counts
    # it by its first 255 characters (AXES_USERNAME_CALLABLE), a failed login, not a 500.
    for door in (WEB, ADMIN):
        assert door.attempt("a" * 300, "nope", ALICES_DESK).status_code == door.failure


def test_x_forwarded_for_is_ignored_unless_proxies_are_trusted(alice, settings):
    # Untrusted, a header the client writes changes nothing: every guess counts against the
    # one real address.
    for n in range(settings.LOGIN_FAILURE_LIMIT):
        APIClient().post(
            "/api/auth/token",
            {"username": f"user{n}", "password": "guess"},
            format="json",
            REMOTE_ADDR=ATTACKER,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{n}",
        )
    assert API.attempt("alice", "alice-password-1", ATTACKER).status_code == 429

    # Behind one trusted proxy, its X-Forwarded-For names the client: one client locked out
    # is not everyone behind the proxy.
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"

    def through_proxy(forwarded_for: str, password: str) -> int:
        response = APIClient().post(
            "/api/auth/token",
            {"username": "alice", "password": password},
            format="json",
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=forwarded_for,
        )
        return int(response.status_code)

    # What a client writes itself sits left of what the proxy appends: it is not believed.
    answers = [
        through_proxy(f"192.0.2.{n}, {ATTACKER}", "guess")
        for n in range(settings.LOGIN_FAILURE_LIMIT)
    ]
    assert answers[-1] == 429
    assert through_proxy(ALICES_DESK, "alice-password-1") == 200


def test_the_login_page_is_locked_under_asgi_too(alice):
    """The server runs the ASGI handler, where django-axes' middleware takes its async path."""

    def attempt(password: str) -> Any:
        client = AsyncClient()
        return async_to_sync(client.post)(
            "/accounts/login/",
            {"username": "alice", "password": password},
            REMOTE_ADDR=ATTACKER,
        )

    with time_machine.travel("2026-03-02 09:00:00Z", tick=False):
        answers = [attempt("a wrong guess") for _ in range(settings.LOGIN_FAILURE_LIMIT)]
        refused = attempt("alice-password-1")

    assert [a.status_code for a in answers[:-1]] == [200] * (settings.LOGIN_FAILURE_LIMIT - 1)
    assert_locked(answers[-1], WEB, settings.LOGIN_COOLOFF_SECONDS)
    assert_locked(refused, WEB, settings.LOGIN_COOLOFF_SECONDS)
