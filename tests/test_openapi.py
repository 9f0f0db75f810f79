"""The OpenAPI schema at /api/schema/ describes every endpoint, and the API keeps to it.

The schemathesis run sends generated requests (valid and invalid) to every documented
operation but the two event streams and checks each answer against the schema: no 500s,
only documented status codes and content types, bodies that match their schemas, every
refusal in the API's error shape, and an upload that is refused leaves no row and no file.
Uploads carry random small files (random bytes, bytes behind audio magic numbers, a slice of
real audio); the fuzzer acts on its own runs and on someone else's. tests/test_fuzz_api.py
fuzzes the event streams and the characters no parameter may hold.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from rest_framework.views import APIView
from schemathesis.checks import CheckFunction

# Imported now, not lazily by a check deep in a test's stack, where CPython 3.11's parser
# fails with "AST constructor recursion depth mismatch" under pytest's assertion rewriting.
from schemathesis.specs.openapi import object_authorization  # noqa: F401
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tasks_admin.models import Job, JobStatus, Worker
from tests.conftest import JFK, Account, make_account
from transcription.exports import CONTENT_TYPES
from transcription.jobs import JOB_TYPE_ASYNC
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun

SCHEMA_MEDIA_TYPE = "application/vnd.oai.openapi+json"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def fetch_schema() -> dict[str, Any]:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT=SCHEMA_MEDIA_TYPE)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def api_routes(
    patterns: list[URLPattern | URLResolver] | None = None, prefix: str = ""
) -> Iterator[tuple[str, URLPattern]]:
    """Every route the project serves under /api/ (includes followed), with its full route."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from api_routes(entry.url_patterns, route)
        elif route.startswith("api/") and not route.startswith(("api/schema", "api/docs")):
            yield route, entry


def documented_path(route: str) -> str:
    """`api/runs/<uuid:run_id>/cancel` -> `/api/runs/{run_id}/cancel`, as OpenAPI writes it."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def served_methods(pattern: URLPattern) -> set[str]:
    view_class = getattr(pattern.callback, "view_class", None)
    if view_class is None:
        return {"get"}  # the SSE endpoints: plain async views answering GET
    assert issubclass(view_class, APIView)
    return {method for method in HTTP_METHODS if hasattr(view_class, method)}


@pytest.mark.django_db
def test_schema_lists_every_api_url_with_every_method_it_serves():
    paths = fetch_schema()["paths"]

    expected = {documented_path(route): served_methods(p) for route, p in api_routes()}
    documented = {
        path: {method for method in operations if method in HTTP_METHODS}
        for path, operations in paths.items()
    }
    assert documented == expected


@pytest.mark.django_db
def test_every_operation_has_a_unique_id_and_documents_its_errors_in_one_shape():
    paths = fetch_schema()["paths"]

    operations = [op for ops in paths.values() for m, op in ops.items() if m in HTTP_METHODS]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    for operation in operations:
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                content = response["content"]["application/json"]
                assert content["schema"] == {"$ref": "#/components/schemas/Error"}


@pytest.mark.django_db
def test_event_streams_are_documented_as_server_sent_events():
    paths = fetch_schema()["paths"]

    for path in ("/api/runs/events", "/api/runs/{run_id}/events"):
        operation = paths[path]["get"]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        assert "401" in operation["responses"]
        parameters = {(p["in"], p["name"]) for p in operation["parameters"]}
        assert {
            ("query", "access_token"),
            ("query", "lastEventId"),
            ("header", "Last-Event-ID"),
        } <= parameters
    assert "404" in paths["/api/runs/{run_id}/events"]["get"]["responses"]


@pytest.mark.django_db
def test_schema_names_the_bearer_and_session_schemes():
    schema = fetch_schema()

    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["cookieAuth"]["in"] == "cookie"
    runs = schema["paths"]["/api/runs"]["get"]
    assert {"bearerAuth": []} in runs["security"]
    assert {"cookieAuth": []} in runs["security"]


# --- The schemathesis run -----------------------------------------------------------------

SEGMENTS = [
    {
        "id": 0,
        "start": 0.0,
        "end": 2.5,
        "text": "And so my fellow Americans",
        "words": [{"start": 0.0, "end": 0.4, "word": " And", "probability": 0.93}],
    },
    {"id": 1, "start": 2.5, "end": 11.0, "text": "ask not what your country can do"},
]


def seed_run(owner: Any, status: str, **fields: Any) -> TranscriptRun:
    """A run in `status` with its audio and job, as the services would have left it."""
    now = timezone.now()
    audio = Audio.objects.create(
        owner=owner,
        stored_name=uuid.uuid4().hex,
        original_filename="talk.flac",
        content_type="audio/flac",
        size_bytes=1000,
        duration_ms=11000,
        sha256="0" * 64,
    )
    started = status != RunStatus.QUEUED
    finished = status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
    run = TranscriptRun.objects.create(
        owner=owner,
        audio=audio,
        status=status,
        mode=RunMode.ASYNC,
        model="tiny.en",
        started_at=now - timedelta(seconds=20) if started else None,
        finished_at=now if finished else None,
        **fields,
    )
    Job.objects.create(
        job_type=JOB_TYPE_ASYNC,
        run=run,
        status=JobStatus(status),  # the same five states
        attempts=0 if status == RunStatus.QUEUED else 1,
        max_attempts=4,
        last_error="decoder exploded" if status == RunStatus.FAILED else "",
    )
    return run


def seed_runs(owner: Any) -> list[str]:
    runs = [
        seed_run(owner, RunStatus.QUEUED, language="en", callback_url="https://example.com/hook"),
        seed_run(owner, RunStatus.PROCESSING, progress=42.5),
        seed_run(
            owner,
            RunStatus.SUCCEEDED,
            progress=100.0,
            text="And so my fellow Americans, ask not what your country can do.",
            segments=SEGMENTS,
            detected_language="en",
            language_probability=0.99,
            word_timestamps=True,
            initial_prompt="JFK",
        ),
        seed_run(
            owner,
            RunStatus.FAILED,
            error_code="undecodable",
            error_message="The audio could not be decoded.",
        ),
        seed_run(owner, RunStatus.CANCELLED),
    ]
    return [str(run.pk) for run in runs]


def seed_worker() -> None:
    now = timezone.now()
    worker = Worker.objects.create(id="w1", host="box", pid=4242, processes=2, last_seen=now)
    Job.objects.filter(run__status=RunStatus.PROCESSING).update(
        locked_by=f"{worker.holder_prefix}1", locked_until=now + timedelta(seconds=60)
    )


# The runs the fixture seeded, for the current test: the path-parameter hook draws from
# them. A list fixed for the test's life, so Hypothesis sees the same choices on every replay.
seeded_run_ids: list[str] = []


@pytest.fixture
def wsgi_in_test_transaction(db) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The WSGI handler closes the database connection after each request, as in
    production; that would end the test's transaction. Django's test client keeps it open
    the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture(params=["user", "staff"])
def fuzzer(request, wsgi_in_test_transaction, settings) -> Account:  # type: ignore[no-untyped-def]
    """Who sends the generated requests: a user (staff endpoints answer 403) or staff; with
    runs in every state. The schema and the answers come from the same serializers
    (transcription/representations.py); what can still stray is where a serializer departs
    from its fields (a run's result fields only once it succeeded, a null error), and each
    state takes a different one of those paths."""
    # Uploads that happen to be audio are queued, never transcribed in a worker thread.
    settings.TRANSCRIBE_SYNC_CONCURRENCY = 0
    # Every refused login hashes a password: keep hundreds of them quick.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    account = make_account(f"fuzzer-{request.param}", staff=request.param == "staff")
    # Someone else's runs too: a user gets 404 for them, staff may act on them.
    someone_else = make_account(f"other-of-{request.param}")
    seeded_run_ids[:] = seed_runs(account.user) + seed_runs(someone_else.user)
    seed_worker()
    return account


def closing(app: Any) -> Any:
    """The WSGI app, with each response closed once read, as a WSGI server does (PEP 3333):
    schemathesis's WSGI transport does not, and Django closes the uploaded files (and sends
    request_finished) only then."""

    def closing_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = app(environ, start_response)
        try:
            return [b"".join(body)]
        finally:
            body.close()

    return closing_app


# Loaded once, at collection (generating the schema needs no database). Not through
# `schemathesis.pytest.from_fixture`: its lazy loader (schemathesis 4.32) sets
# `Function._nodeid`, which pytest 9.2 no longer has.
schema = schemathesis.openapi.from_wsgi(
    "/api/schema/", closing(get_wsgi_application()), headers={"Accept": SCHEMA_MEDIA_TYPE}
).exclude(path_regex=r"/events$")  # the event streams never end; test_run_events.py has them
# The test sends the fuzzer's own token; generated credentials would only ever be refused.
schema.config.generation.update(with_security_parameters=False)


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    """Besides random run ids (404), ask about the seeded runs. Ids that are not UUIDs are
    left alone: they are invalid on purpose (negative cases)."""
    if not path_parameters or not is_uuid(path_parameters.get("run_id")):
        return st.just(path_parameters)
    return st.sampled_from([path_parameters["run_id"], *seeded_run_ids]).map(
        lambda run_id: {**path_parameters, "run_id": run_id}
    )


# Small files that make the upload reach the probe: random bytes, random bytes behind the
# magic numbers of audio and of what FFmpeg must not open, and slices of real audio.
_MAGIC_NUMBERS = [
    b"fLaC",
    b"RIFF\xff\xff\xff\xffWAVEfmt ",
    b"ID3\x03\x00\x00\x00\x00\x00\x00",
    b"OggS\x00\x02",
    b"\x00\x00\x00\x20ftypM4A ",
    b"\x1a\x45\xdf\xa3",
    b"FORM\x00\x00\x10\x00AIFF",
    b"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/x.mp3\n",
    b"ffconcat version 1.0\nfile ",
]
_JFK_BYTES = JFK.read_bytes()
upload_bytes = st.one_of(
    st.binary(max_size=2048),
    st.builds(operator.add, st.sampled_from(_MAGIC_NUMBERS), st.binary(max_size=2048)),
    st.integers(min_value=1, max_value=len(_JFK_BYTES)).map(lambda end: _JFK_BYTES[:end]),
)


def operation_id(context: Any) -> str | None:
    operation = getattr(context, "operation", None)
    return operation.definition.raw.get("operationId") if operation is not None else None


@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    """The `file` of a generated upload: one of `upload_bytes` instead of an empty string."""
    if operation_id(context) not in _UPLOADS or not isinstance(body, dict) or "file" not in body:
        return st.just(body)
    return upload_bytes.map(lambda content: {**body, "file": content})


@schema.hook
def flatmap_query(context: Any, query: Any) -> Any:
    """Besides random worker ids (404), name the seeded worker."""
    if not isinstance(query, dict) or not isinstance(query.get("workerId"), str):
        return st.just(query)
    return st.sampled_from([query["workerId"], "w1"]).map(lambda w: {**query, "workerId": w})


def api_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every refusal is `{"error": {"code", "message", "field"}}`, documented or not."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error shape: {body!r}"
    error = body["error"]
    assert set(error) == {"code", "message", "field"}, f"not the error shape: {body!r}"
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    assert error["field"] is None or isinstance(error["field"], str), body
    return None


def upload_leftovers() -> tuple[int, int, int, set[str]]:
    stored = {path.name for path in Path(django_settings.UPLOAD_DIR).iterdir()}
    return Audio.objects.count(), TranscriptRun.objects.count(), Job.objects.count(), stored


def assert_upload_left_nothing(before: tuple[int, int, int, set[str]], status: int) -> None:
    """A refused upload leaves no row and no stored file; no upload leaves a temporary file."""
    assert list(Path(django_settings.UPLOAD_TEMP_DIR).iterdir()) == []
    if status >= 400:
        assert upload_leftovers() == before


# What no generated data can satisfy: a file that really is audio, a real password, a URL
# whose host resolves to public addresses only.
_SEMANTIC_INPUT = {"transcribe", "detectLanguage", "obtainToken", "createWebhookEndpoint"}
# The operations that take an upload: their generated files come from `upload_bytes`, and
# they leave no file behind.
_UPLOADS = {"transcribe", "detectLanguage"}
# DRF's LimitOffsetPagination reads an unusable `limit` or `offset` as its default (as the
# parameters say) instead of refusing it; DESIGN.md does not ask for a 400 there.
_LENIENT_QUERY = {"listRuns"}


@pytest.mark.django_db
@schema.parametrize()
@hypothesis_settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_keeps_to_its_schema(case: Any, fuzzer: Account) -> None:
    operation_id = case.operation.definition.raw.get("operationId")
    excluded: list[CheckFunction] = []
    if operation_id in _SEMANTIC_INPUT:
        excluded.append(positive_data_acceptance)
    if operation_id in _LENIENT_QUERY:
        excluded.append(negative_data_rejection)
    # Past UPLOADS_PER_MINUTE every upload would be a 429 (tests/test_bad_input.py has that):
    # start each request with a fresh throttle, so uploads reach validation and probing.
    cache.clear()
    before = upload_leftovers()
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzzer.token}"},
        additional_checks=[api_error_shape],
        excluded_checks=excluded,
    )
    if operation_id in _UPLOADS:
        assert_upload_left_nothing(before, response.status_code)


def test_a_real_upload_answers_as_documented(fuzzer, jfk):
    """What generated bytes never are: audio. Queued (202), then the same key again (200)."""
    upload = schema["/api/transcribe"]["POST"]
    auth = {"Authorization": f"Bearer {fuzzer.token}", "Idempotency-Key": "jfk-1"}
    answers = []
    for _ in range(2):
        case = upload.Case(
            body={"file": jfk.read_bytes(), "mode": "async", "language": "en"},
            media_type="multipart/form-data",
        )
        answers.append(case.call_and_validate(headers=auth))

    assert [answer.status_code for answer in answers] == [202, 200]
    run_id = answers[0].json()["runId"]
    assert answers[0].headers["location"] == [f"/api/runs/{run_id}"]
    assert answers[1].json()["runId"] == run_id


@pytest.mark.django_db
def test_each_transcript_format_comes_as_documented_even_to_a_picky_client(alice):
    documented = fetch_schema()["paths"]["/api/runs/{run_id}/transcript"]["get"]
    media_types = set(documented["responses"]["200"]["content"])
    succeeded = seed_runs(alice.user)[2]

    (format_parameter,) = [p for p in documented["parameters"] if p["name"] == "format"]
    for fmt in format_parameter["schema"]["enum"]:
        media_type = CONTENT_TYPES[fmt].split(";")[0]
        response = alice.client.get(
            f"/api/runs/{succeeded}/transcript", {"format": fmt}, HTTP_ACCEPT=media_type
        )
        assert response.status_code == 200, (fmt, response.content)
        assert response["Content-Type"].split(";")[0] == media_type
        assert media_type in media_types
    # A refusal is JSON (the error shape) whatever the client accepts.
    response = alice.client.get(
        f"/api/runs/{succeeded}/transcript", {"format": "doc"}, HTTP_ACCEPT="text/vtt"
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "format"


@pytest.mark.django_db
def test_an_unknown_status_filter_is_refused(alice):
    response = alice.client.get("/api/runs", {"status": "finished"})

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "status"


@pytest.mark.django_db
def test_a_run_id_that_is_not_a_uuid_gets_the_json_error_shape(alice):
    response = alice.client.get("/api/runs/not-a-uuid")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"
