"""Submitting in plain steps: the sync slot wait, idempotency races, and refusals that are
domain exceptions which only the API layer turns into HTTP."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError

from lingoloop import refusals
from lingoloop.errors import REFUSAL_STATUS, ApiError
from tests.conftest import post_audio, queued_run, stored_files
from transcription import services
from transcription.models import TranscriptRun

ROOT = Path(__file__).resolve().parent.parent

# Code that decides what happens to audio, runs and jobs. It refuses with lingoloop.refusals
# and never names an HTTP status: the API, the web pages and the admin each show a refusal
# their own way.
DOMAIN_MODULES = [
    "transcription/services.py",
    "transcription/probe.py",
    "transcription/engine.py",
    "transcription/pcm.py",
    "transcription/jobs.py",
    "transcription/models.py",
    "transcription/callbacks.py",
    "tasks_admin/models.py",
    "tasks_admin/runner.py",
    "tasks_admin/handlers.py",
    "tasks_admin/services.py",
    "tasks_admin/broker.py",
]
HTTP_MODULES = ("lingoloop.errors", "rest_framework.status", "django.http", "rest_framework.views")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", DOMAIN_MODULES)
def test_domain_code_refuses_without_speaking_http(module):
    imports = imported_modules(ROOT / module)

    assert not {name for name in imports if name.startswith(HTTP_MODULES)}, module


@pytest.mark.parametrize(
    ("refusal", "status_code"),
    [
        (refusals.Invalid("bad", "Bad."), 400),
        (refusals.NotAudio("not_audio", "Not audio."), 415),
        (refusals.Unprocessable("undecodable", "Broken."), 422),
        (refusals.Conflict("run_finished", "Finished."), 409),
        (refusals.LimitReached("throttled", "Later.", retry_after=7), 429),
    ],
)
def test_each_kind_of_refusal_has_its_status_in_the_api(refusal, status_code):
    error = ApiError.from_refusal(refusal)

    assert error.status_code == status_code
    assert error.as_dict() == {
        "error": {"code": refusal.code, "message": refusal.message, "field": None}
    }
    assert set(REFUSAL_STATUS.values()) >= {status_code}


def test_a_limit_says_when_to_come_back():
    error = ApiError.from_refusal(refusals.LimitReached("throttled", "Later.", retry_after=0))

    assert error.headers == {"Retry-After": "1"}


@pytest.fixture
def busy_sync_slots(settings):  # type: ignore[no-untyped-def]
    """Every sync slot of this process taken, as by other requests transcribing."""
    settings.TRANSCRIBE_SYNC_CONCURRENCY = 1
    slots, _ = services._sync_capacity(1)
    assert slots.acquire(timeout=5)
    yield
    slots.release()


@pytest.mark.django_db
def test_mode_sync_waits_for_a_busy_slot_only_so_long_then_queues(
    alice, jfk, settings, busy_sync_slots
):
    settings.TRANSCRIBE_SYNC_WAIT_MS = 200

    response = post_audio(alice.client, jfk, mode="sync")

    assert response.status_code == 202, response.json()
    run = response.json()
    assert (run["mode"], run["status"]) == ("async", "queued")
    assert run["jobs"][0]["jobType"] == "transcribe_long"


@pytest.mark.django_db
def test_auto_goes_to_the_queue_at_once_when_every_sync_slot_is_busy(
    alice, jfk, settings, busy_sync_slots
):
    settings.TRANSCRIBE_SYNC_WAIT_MS = 600_000  # `auto` must not wait at all

    response = post_audio(alice.client, jfk)

    assert response.status_code == 202
    assert response.json()["mode"] == "async"


@pytest.mark.django_db(transaction=True)
def test_a_sync_request_gets_the_slot_as_soon_as_it_frees(alice, jfk, settings, busy_sync_slots):
    settings.TRANSCRIBE_SYNC_WAIT_MS = 60_000
    slots, _ = services._sync_capacity(1)
    releaser = threading.Timer(0.3, slots.release)
    releaser.start()

    response = post_audio(alice.client, jfk, mode="sync")

    releaser.join()
    assert slots.acquire(timeout=5)  # given back after the run, for the fixture to release
    assert response.status_code == 201, response.json()
    assert response.json()["mode"] == "sync"


@pytest.mark.django_db
def test_an_idempotency_race_lost_at_insert_answers_the_winner_and_keeps_no_file(
    alice, jfk, monkeypatch
):
    winner = queued_run(alice.client, jfk)
    TranscriptRun.objects.filter(pk=winner["runId"]).update(idempotency_key="k-1")
    files_before = stored_files()
    # The other request's look-up came before the winner's insert: it sees no run for the
    # key, and only the unique constraint stops it.
    real_lookup = services._run_for_key
    lookups = iter([None])
    monkeypatch.setattr(
        services, "_run_for_key", lambda owner, key: next(lookups, real_lookup(owner, key))
    )

    def insert_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise IntegrityError("uniq_run_owner_idempotency_key")

    monkeypatch.setattr(services, "_create_rows", insert_fails)
    upload = SimpleUploadedFile(jfk.name, jfk.read_bytes())
    run, created = services.run_submit(
        owner=alice.user,
        upload=upload,
        options=services.RunOptions(model="tiny.en", mode="async"),
        idempotency_key="k-1",
    )

    assert (str(run.pk), created) == (winner["runId"], False)
    assert stored_files() == files_before
