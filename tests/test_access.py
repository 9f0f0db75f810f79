"""Who may see what: token auth, the error shape, and owner filtering (404, never 403)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.conftest import queued_run


@pytest.fixture
def alices_run(alice) -> str:  # type: ignore[no-untyped-def]
    return str(queued_run(alice.client)["runId"])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/api/runs",
        "/api/runs/00000000-0000-0000-0000-000000000000",
        "/api/runs/00000000-0000-0000-0000-000000000000/events",
        "/api/runs/events",
    ],
)
def test_unauthenticated_requests_get_401_with_the_error_shape(path):
    response = APIClient().get(path)

    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
def test_wrong_token_gets_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")

    response = client.get("/api/runs")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


@pytest.mark.django_db
def test_token_scheme_is_accepted_too(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {alice.token}")

    assert client.get("/api/runs").status_code == 200


@pytest.mark.django_db
def test_token_endpoint_trades_a_password_for_the_api_token(alice):
    response = APIClient().post(
        "/api/auth/token", {"username": "alice", "password": "alice-password-1"}, format="json"
    )
    wrong = APIClient().post(
        "/api/auth/token", {"username": "alice", "password": "nope"}, format="json"
    )

    assert response.status_code == 200
    assert response.json() == {"token": alice.token}
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_credentials"


# Transactional: the event stream reads the database from its own thread.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("suffix", ["", "/progress", "/transcript?format=txt", "/events"])
def test_another_users_run_is_not_found(alices_run, bob, suffix):
    response = bob.client.get(f"/api/runs/{alices_run}{suffix}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_another_users_run_cannot_be_acted_on(alices_run, bob, action):
    assert bob.client.post(f"/api/runs/{alices_run}/{action}").status_code == 404
    assert bob.client.delete(f"/api/runs/{alices_run}").status_code == 404


@pytest.mark.django_db
def test_run_list_shows_only_own_runs(alices_run, alice, bob):
    assert [r["runId"] for r in alice.client.get("/api/runs").json()["results"]] == [alices_run]
    assert bob.client.get("/api/runs").json()["results"] == []


@pytest.mark.django_db
def test_owner_sees_run_and_progress(alices_run, alice):
    run = alice.client.get(f"/api/runs/{alices_run}").json()
    progress = alice.client.get(f"/api/runs/{alices_run}/progress").json()

    assert run["status"] == progress["status"] == "queued"
    assert progress["queuePosition"] == 1
    assert progress["links"]["transcript"] == f"/api/runs/{alices_run}/transcript"
    assert "text" not in progress


@pytest.mark.django_db
def test_transcript_of_an_unfinished_run_is_a_conflict(alices_run, alice):
    response = alice.client.get(f"/api/runs/{alices_run}/transcript?format=srt")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "transcript_not_ready"
