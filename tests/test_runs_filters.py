"""Finding and managing runs: `GET /api/runs?status=…&q=…` and the runs page, which filter
with the same function (transcription/queries.py), and the page's retry, cancel and (bulk)
delete, which work as plain forms. Django's test client; no browser, no worker."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from tests.conftest import Account
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun

pytestmark = pytest.mark.django_db


def make_run(
    owner: Any,
    filename: str,
    status: str = RunStatus.SUCCEEDED,
    text: str = "",
    *,
    age_minutes: int = 0,
) -> TranscriptRun:
    audio = Audio.objects.create(
        owner=owner,
        stored_name=uuid.uuid4().hex,
        original_filename=filename,
        content_type="audio/flac",
        size_bytes=1000,
        duration_ms=11000,
        sha256=uuid.uuid4().hex * 2,
    )
    run = TranscriptRun.objects.create(
        owner=owner,
        audio=audio,
        status=status,
        mode=RunMode.ASYNC,
        model="tiny.en",
        text=text,
    )
    if age_minutes:
        TranscriptRun.objects.filter(pk=run.pk).update(
            created_at=timezone.now() - timedelta(minutes=age_minutes)
        )
    return run


@pytest.fixture
def library(alice: Account, bob: Account) -> dict[str, TranscriptRun]:
    return {
        "speech": make_run(
            alice.user, "inaugural-speech.flac", text="Ask not what your country can do for you."
        ),
        "meeting": make_run(
            alice.user, "Team Meeting.m4a", text="The budget for next year is approved."
        ),
        "failed": make_run(alice.user, "broken.wav", RunStatus.FAILED),
        "queued": make_run(alice.user, "later.mp3", RunStatus.QUEUED),
        "bobs": make_run(bob.user, "bob-speech.flac", text="Ask not, Bob."),
    }


def web(account: Account, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(account.user)  # type: ignore[arg-type]
    return client


def listed(account: Account, query: str) -> set[str]:
    response = account.client.get(f"/api/runs{query}")
    assert response.status_code == 200, response.content
    return {run["audio"]["filename"] for run in response.json()["results"]}


def page_files(response: Any) -> list[str]:
    return re.findall(r'class="cell-file"><a href="[^"]+">([^<]+)</a>', response.content.decode())


# --- The API ----------------------------------------------------------------------------------


def test_api_searches_file_names_and_transcript_words_of_the_callers_runs(alice, library):
    assert listed(alice, "?q=speech") == {"inaugural-speech.flac"}  # not Bob's
    assert listed(alice, "?q=COUNTRY") == {"inaugural-speech.flac"}  # case-insensitive text
    assert listed(alice, "?q=meeting") == {"Team Meeting.m4a"}
    assert listed(alice, "?q=budget%20approved") == {"Team Meeting.m4a"}  # every word
    assert listed(alice, "?q=budget%20country") == set()
    assert listed(alice, "?q=") == {
        "inaugural-speech.flac",
        "Team Meeting.m4a",
        "broken.wav",
        "later.mp3",
    }


def test_api_combines_status_and_search_and_refuses_an_unknown_status(alice, library):
    assert listed(alice, "?status=failed") == {"broken.wav"}
    assert listed(alice, "?status=succeeded&q=ask") == {"inaugural-speech.flac"}
    assert listed(alice, "?status=queued&q=ask") == set()
    response = alice.client.get("/api/runs?status=done")
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "status"


def test_api_search_counts_and_pages_the_matches(alice):
    for i in range(3):
        make_run(alice.user, f"match-{i}.flac", age_minutes=i)
    make_run(alice.user, "other.flac")
    page = alice.client.get("/api/runs?q=match&limit=2").json()
    assert page["count"] == 3
    assert [r["audio"]["filename"] for r in page["results"]] == ["match-0.flac", "match-1.flac"]
    assert "q=match" in page["next"]


def test_staff_search_every_users_runs(root, library):
    assert listed(root, "?q=ask") == {"inaugural-speech.flac", "bob-speech.flac"}


def test_the_schema_documents_q_and_status():
    from django.test import Client as Plain

    schema = Plain().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/runs"]["get"]["parameters"]}
    assert "transcript" in parameters["q"]["description"]
    assert sorted(parameters["status"]["schema"]["enum"]) == sorted(RunStatus.values)


# --- The runs page ------------------------------------------------------------------------------


def test_the_page_filters_by_status_and_search_as_get_parameters(alice, library):
    client = web(alice)
    assert page_files(client.get("/runs/?status=failed")) == ["broken.wav"]
    assert page_files(client.get("/runs/?q=country")) == ["inaugural-speech.flac"]
    assert page_files(client.get("/runs/?q=ask&status=succeeded")) == ["inaugural-speech.flac"]
    # An unknown status is no filter; the form shows what is applied.
    assert len(page_files(client.get("/runs/?status=nonsense"))) == 4
    html = client.get("/runs/?q=budget&status=succeeded").content.decode()
    assert 'value="budget"' in html
    assert '<option value="succeeded" selected>' in html
    assert 'data-filter-status="succeeded"' in html and 'data-filter-q="budget"' in html
    empty = client.get("/runs/?q=nothing-like-this").content.decode()
    assert "No runs match." in empty


def test_the_page_shows_25_runs_a_page_and_its_links_keep_the_filter(alice):
    for i in range(30):
        make_run(alice.user, f"lecture-{i:02d}.flac", age_minutes=i)
    make_run(alice.user, "other.flac", RunStatus.FAILED)
    client = web(alice)
    first = client.get("/runs/?q=lecture&status=succeeded")
    assert page_files(first) == [f"lecture-{i:02d}.flac" for i in range(25)]
    html = first.content.decode()
    assert 'href="?q=lecture&amp;status=succeeded&amp;page=2" rel="next"' in html
    assert "Page 1 of 2 · 30 runs" in html
    second = client.get("/runs/?q=lecture&status=succeeded&page=2")
    assert page_files(second) == [f"lecture-{i:02d}.flac" for i in range(25, 30)]
    assert 'href="?q=lecture&amp;status=succeeded&amp;page=1" rel="prev"' in second.content.decode()
    assert 'data-live="existing"' in second.content.decode()


def test_retry_and_cancel_from_the_page_without_scripts(alice, library, bob):
    client = web(alice)
    back = "/runs/?status=failed"
    response = client.post(f"/runs/{library['failed'].pk}/retry", {"next": back})
    assert response.status_code == 302 and response["Location"] == back
    library["failed"].refresh_from_db()
    assert library["failed"].status == RunStatus.QUEUED
    response = client.post(f"/runs/{library['failed'].pk}/cancel", {"next": back}, follow=True)
    assert "broken.wav was cancelled." in response.content.decode()
    library["failed"].refresh_from_db()
    assert library["failed"].status == RunStatus.CANCELLED
    # Retrying a run that succeeded says why not; someone else's run is not found.
    response = client.post(f"/runs/{library['speech'].pk}/retry", follow=True)
    assert "Only failed or cancelled runs can be retried" in response.content.decode()
    assert client.post(f"/runs/{library['bobs'].pk}/retry").status_code == 404
    # Somewhere else is not a place to go back to.
    response = client.post(f"/runs/{library['failed'].pk}/retry", {"next": "https://evil.example/"})
    assert response["Location"] == "/runs/"
    assert client.get(f"/runs/{library['failed'].pk}/retry").status_code == 405


def test_bulk_delete_asks_first_then_deletes_only_the_callers_finished_runs(alice, library):
    client = web(alice)
    ids = [str(library[k].pk) for k in ("speech", "failed", "queued", "bobs")]
    confirm = client.post("/runs/delete", {"ids": ids, "next": "/runs/?q=x"})
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "Delete 3 runs?" in html  # Bob's is not even visible to her
    assert 'name="confirmed" value="1"' in html
    assert TranscriptRun.objects.filter(pk=library["speech"].pk).exists()

    response = client.post("/runs/delete", {"ids": ids, "confirmed": "1", "next": "/runs/?q=x"})
    assert response.status_code == 302 and response["Location"] == "/runs/?q=x"
    remaining = set(TranscriptRun.objects.values_list("audio__original_filename", flat=True))
    assert remaining == {"Team Meeting.m4a", "later.mp3", "bob-speech.flac"}
    shown = client.get("/runs/").content.decode()
    assert "Deleted 2 runs: broken.wav, inaugural-speech.flac." in shown  # newest first
    assert "Skipped 1 run: later.mp3 (still queued: cancel it first)." in shown


def test_staff_cannot_delete_someone_elses_runs_from_the_page(root, library):
    client = web(root)
    response = client.post(
        "/runs/delete", {"ids": [str(library["bobs"].pk)], "confirmed": "1"}, follow=True
    )
    assert (
        "bob-speech.flac (it is bob&#x27;s: only they can delete it)" in response.content.decode()
    )
    assert TranscriptRun.objects.filter(pk=library["bobs"].pk).exists()


def test_one_rows_delete_button_deletes_just_that_run(alice, library):
    client = web(alice)
    response = client.post(
        "/runs/delete",
        {"one": str(library["meeting"].pk), "ids": [str(library["speech"].pk)], "confirmed": "1"},
    )
    assert response.status_code == 302
    assert not TranscriptRun.objects.filter(pk=library["meeting"].pk).exists()
    assert TranscriptRun.objects.filter(pk=library["speech"].pk).exists()


def test_the_page_forms_need_the_csrf_token(alice, library):
    client = web(alice, csrf=True)
    run = library["speech"].pk
    assert client.post("/runs/delete", {"ids": [str(run)], "confirmed": "1"}).status_code == 403
    assert client.post(f"/runs/{library['failed'].pk}/retry").status_code == 403
    page = client.get("/runs/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token
    response = client.post(
        "/runs/delete",
        {"ids": [str(run)], "confirmed": "1", "csrfmiddlewaretoken": token.group(1)},
    )
    assert response.status_code == 302
    assert not TranscriptRun.objects.filter(pk=run).exists()


def test_nothing_selected_says_so(alice, library):
    response = web(alice).post("/runs/delete", {"confirmed": "1"}, follow=True)
    assert "No runs were selected" in response.content.decode()


# --- Small things -----------------------------------------------------------------------------


def test_favicon_ico_is_the_svg_icon_and_cacheable(client):
    from django.conf import settings

    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].startswith(settings.STATIC_URL)
    assert response["Location"].split("?")[0].endswith(".svg")
    assert "max-age=86400" in response["Cache-Control"]
    assert "public" in response["Cache-Control"]
