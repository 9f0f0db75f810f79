"""Fuzzing every door of the API (issue #9), beside the schemathesis run of test_openapi.py.

* Every operation of /api/schema/ is fuzzed: test_openapi.py runs all but the event streams
  (as a user and as staff); the event streams are fuzzed here without credentials, so that
  every answer is a refusal and no stream stays open.
* No parameter of this service needs a NUL byte or a control character. One in a query
  parameter, a form field, a JSON field or a header is a 400 in the API's error shape, never a
  500 (PostgreSQL cannot store or compare NUL) and never silently accepted.
* Other odd input (bytes that are not UTF-8, lone surrogates, very deep JSON, numbers past
  64 bits) gets an answer under 500, a refusal in the error shape.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework.test import APIClient

from tasks_admin.models import Job
from tests.conftest import Account, make_account, post_audio, stored_files
from tests.test_bad_input import wav
from tests.test_openapi import (
    HTTP_METHODS,
    SCHEMA_MEDIA_TYPE,
    api_error_shape,
    closing,
    fetch_schema,
    seed_runs,
    seed_worker,
    wsgi_in_test_transaction,  # noqa: F401  (a fixture)
)
from tests.test_openapi import schema as fuzzed_schema
from transcription.models import Audio, TranscriptRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _quick_passwords(settings) -> None:  # type: ignore[no-untyped-def]
    """Accounts are made for every test here; their password hashing is not under test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Every operation is fuzzed ----------------------------------------------------------------

# The event streams, which test_openapi.py leaves out: never end once they are open.
events_schema = schemathesis.openapi.from_wsgi(
    "/api/schema/", closing(get_wsgi_application()), headers={"Accept": SCHEMA_MEDIA_TYPE}
).include(path_regex=r"/events$")
events_schema.config.generation.update(with_security_parameters=False)


def operations(loaded: Any) -> set[tuple[str, str]]:
    return {
        (result.ok().method.lower(), result.ok().path) for result in loaded.get_all_operations()
    }


def test_every_documented_operation_is_fuzzed():
    documented = {
        (method, path)
        for path, methods in fetch_schema()["paths"].items()
        for method in methods
        if method in HTTP_METHODS
    }

    assert operations(fuzzed_schema) | operations(events_schema) == documented
    assert {("get", "/api/runs/events"), ("get", "/api/runs/{run_id}/events")} == operations(
        events_schema
    )


def test_every_operation_with_query_parameters_documents_the_400_it_gives_for_bad_characters():
    """lingoloop/middleware.py answers 400 to a control character in any query parameter."""
    undocumented = [
        f"{method.upper()} {path}"
        for path, methods in fetch_schema()["paths"].items()
        for method, operation in methods.items()
        if method in HTTP_METHODS
        and any(p["in"] == "query" for p in operation.get("parameters", []))
        and "400" not in operation["responses"]
    ]

    assert undocumented == []


@pytest.fixture
def nobody(wsgi_in_test_transaction, alice) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Runs exist (someone's), but the fuzzer of the streams has no credentials."""
    seed_runs(alice.user)


@events_schema.parametrize()
@hypothesis_settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.timeout(120)  # a stream that opened would never end
def test_event_streams_refuse_strangers_in_the_error_shape(case: Any, nobody: None) -> None:
    response = case.call_and_validate(additional_checks=[api_error_shape])

    # 403 and 405 only for the methods the streams do not serve, which schemathesis also tries.
    allowed = (400, 401, 404) if case.method.upper() == "GET" else (400, 401, 403, 404, 405)
    assert response.status_code in allowed, (case.method, response.status_code, response.text)


# --- NUL bytes and control characters ---------------------------------------------------------


@pytest.fixture
def staff(db) -> Account:  # type: ignore[no-untyped-def]
    return make_account("staff", staff=True)


@pytest.fixture
def runs(alice) -> list[str]:
    seed_worker()
    return seed_runs(alice.user)


def assert_error(response: Any, status: int | set[int], field: str | None = None) -> None:
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["code"] and body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field, body


@pytest.mark.parametrize(
    "query",
    [
        "status=%00",
        "status=queued%00",
        "limit=%00",
        "offset=1%00",
        "status=%01",
        "status=%1b%5b31m",
        "status=%7f",
    ],
)
def test_a_control_character_in_the_runs_query_is_400(alice, runs, query):
    assert_error(alice.client.get(f"/api/runs?{query}"), 400)


@pytest.mark.parametrize("stream", ["/api/runs/events", "/api/runs/{run}/events"])
@pytest.mark.parametrize(
    "query", ["access_token=%00", "access_token=abc%00def", "lastEventId=%00", "lastEventId=1%00"]
)
def test_a_nul_in_an_event_stream_query_is_400(alice, runs, stream, query):
    """Without credentials: were the NUL let through, the answer would be a 401, not a hang."""
    response = APIClient().get(stream.format(run=runs[0]) + "?" + query)

    assert_error(response, 400)


@pytest.mark.parametrize("fmt", ["%00", "txt%00", "%00txt", "srt%0d%0a"])
def test_a_control_character_in_the_transcript_format_is_400(alice, runs, fmt):
    succeeded = runs[2]

    assert_error(alice.client.get(f"/api/runs/{succeeded}/transcript?format={fmt}"), 400)


@pytest.mark.parametrize("method", ["get", "post", "delete"])
@pytest.mark.parametrize("worker", ["%00", "w1%00", "%00w1"])
def test_a_nul_in_the_worker_id_query_is_400_for_staff_and_users(
    alice, staff, runs, method, worker
):
    for account in (staff, alice):
        response = getattr(account.client, method)(f"/api/admin/worker?workerId={worker}")
        assert_error(response, 400)


@pytest.mark.parametrize("method", ["post", "delete"])
@pytest.mark.parametrize("worker", ["\x00", "w1\x00", "\x00w1"])
def test_a_nul_in_the_worker_id_body_is_400(staff, runs, method, worker):
    response = staff.client.generic(
        method.upper(),
        "/api/admin/worker",
        json.dumps({"workerId": worker}),
        content_type="application/json",
    )

    assert_error(response, 400, "workerId")


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "\x00", "password": "x"},
        {"username": "alice", "password": "alice-password-1\x00"},
        {"username": "ali\x00ce", "password": "alice-password-1"},
    ],
)
@pytest.mark.parametrize("fmt", ["json", "multipart"])
def test_a_nul_in_the_login_is_400(alice, credentials, fmt):
    response = APIClient().post("/api/auth/token", credentials, format=fmt)

    assert_error(response, 400)


UPLOAD_FIELDS = [
    ("language", "e\x00n"),
    ("model", "tiny.en\x00"),
    ("task", "transcribe\x00"),
    ("mode", "async\x00"),
    ("priority", "1\x00"),
    ("beamSize", "\x005"),
    ("wordTimestamps", "true\x00"),
    ("vadFilter", "\x00"),
    ("initialPrompt", "JFK\x00"),
    ("callbackUrl", "https://example.com/\x00hook"),
]


def assert_nothing_stored() -> None:
    assert Audio.objects.count() == 0
    assert TranscriptRun.objects.count() == 0
    assert Job.objects.count() == 0
    assert stored_files() == []


@pytest.mark.parametrize(("field", "value"), UPLOAD_FIELDS, ids=[f for f, _ in UPLOAD_FIELDS])
def test_a_nul_in_an_upload_field_is_400_naming_it(alice, field, value):
    response = post_audio(alice.client, wav(1.0), "one.wav", **{"mode": "async", field: value})

    assert_error(response, 400, field)
    assert_nothing_stored()


@pytest.mark.parametrize("key", ["\x00", "key\x00", "k\x00ey", "key\x1b[31m", "key\x7f"])
def test_a_control_character_in_the_idempotency_key_is_400(alice, key):
    response = post_audio(
        alice.client, wav(1.0), "one.wav", mode="async", headers={"Idempotency-Key": key}
    )

    assert_error(response, 400, "Idempotency-Key")
    assert_nothing_stored()


@pytest.mark.parametrize("header", ["Bearer \x00", "Bearer abc\x00def", "Token \x00", "\x00"])
@pytest.mark.parametrize("path", ["/api/runs", "/api/stats", "/api/runs/events"])
def test_a_nul_in_the_authorization_header_is_refused_not_a_500(alice, header, path):
    response = APIClient().get(path, HTTP_AUTHORIZATION=header)

    assert_error(response, {400, 401})


# --- Other odd input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs?status=%ff%fe",
        "/api/runs?status=%ed%a0%80",  # a UTF-8-encoded surrogate
        "/api/runs?limit=99999999999999999999",
        "/api/runs?limit=-1&offset=-1",
        "/api/runs?offset=99999999999999999999",
        "/api/runs/{run}/transcript?format=%ff",
        "/api/runs/{run}/transcript?format=" + "x" * 5000,
        "/api/admin/worker?workerId=%ff%fe",
        "/api/admin/worker?workerId=" + "w" * 5000,
        "/api/runs/events?access_token=%ff%fe",
        "/api/runs/events?access_token=" + "a" * 5000,
        "/api/runs/%ff%fe",
        "/api/runs/00000000-0000-0000-0000-000000000000%00",
    ],
)
def test_odd_query_strings_and_paths_are_answered_without_a_500(alice, staff, runs, path):
    path = path.format(run=runs[2])
    for client in (alice.client, staff.client, APIClient()):
        if path.startswith("/api/runs/events"):
            client = APIClient()  # with credentials a stream would open and never end
        response = client.get(path)
        assert response.status_code < 500, (path, response.status_code, response.content[:300])
        if response.status_code >= 400:
            assert_error(response, response.status_code)


DEEP = 100_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/auth/token", '{"username": "\\ud800", "password": "x"}'),
        ("/api/auth/token", '{"username": "alice", "password": "\\udfff"}'),
        ("/api/auth/token", "[" * DEEP + "]" * DEEP),
        ("/api/auth/token", '{"username": ' + "[" * DEEP + "]" * DEEP + "}"),
        ("/api/auth/token", '{"username": 1e999, "password": -1e999}'),
        ("/api/auth/token", '{"username": 123456789012345678901234567890, "password": null}'),
        ("/api/auth/token", "\xff\xfe{}"),
        ("/api/admin/worker", '{"workerId": "\\ud800"}'),
        ("/api/admin/worker", "[" * DEEP + "]" * DEEP),
        ("/api/admin/worker", '{"workerId": 123456789012345678901234567890}'),
        ("/api/admin/worker", '{"workerId": ' + "{" * 1000 + "}" * 1000 + "}"),
    ],
    ids=[
        "token-lone-surrogate-username",
        "token-lone-surrogate-password",
        "token-deep-array",
        "token-deep-username",
        "token-infinite-numbers",
        "token-huge-integer",
        "token-not-utf8",
        "worker-lone-surrogate",
        "worker-deep-array",
        "worker-huge-integer",
        "worker-nested-object",
    ],
)
def test_odd_json_bodies_are_answered_without_a_500(alice, staff, path, body):
    for client in (APIClient(), staff.client):
        response = client.generic(
            "POST", path, body.encode("utf-8", "surrogatepass"), content_type="application/json"
        )
        assert response.status_code < 500, (response.status_code, response.content[:300])
        if response.status_code >= 400:
            assert_error(response, response.status_code)


@pytest.mark.parametrize(
    "fields",
    [
        {"language": "\ud800"},
        {"initialPrompt": "\udfff" * 10},
        {"callbackUrl": "https://\ud800.example.com/"},
        {"priority": "9" * 50},
        {"beamSize": "1e999"},
        {"language": "e" * 100_000},
        {"\x00": "x"},
    ],
    ids=[
        "lone-surrogate-language",
        "lone-surrogate-prompt",
        "lone-surrogate-callback-host",
        "huge-priority",
        "infinite-beam",
        "long-language",
        "nul-field-name",
    ],
)
def test_odd_upload_fields_are_answered_without_a_500(alice, fields):
    boundary = "fuzzboundary"
    parts = [
        (f'name="{key}"'.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass"))
        for key, value in {"mode": "async", **fields}.items()
    ]
    parts.append((b'name="file"; filename="one.wav"', wav(1.0)))
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Disposition: form-data; "
            + disposition
            + b"\r\n\r\n"
            + content
            + b"\r\n"
            for disposition, content in parts
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )

    response = alice.client.generic(
        "POST", "/api/transcribe", body, content_type=f"multipart/form-data; boundary={boundary}"
    )

    assert response.status_code < 500, (response.status_code, response.content[:300])
    if response.status_code >= 400:
        assert_error(response, response.status_code)
        assert_nothing_stored()
