"""Audio in an S3-compatible object store (AUDIO_STORAGE=s3), against a real S3 server on
loopback (moto's, tests/s3server.py), including a store that is away.

What must hold: uploads and the pieces of work land in the store and nowhere else for good;
workers fetch a job's audio to a temporary file and remove it; deleting and retention remove
the stored object, even when the store is away at that moment; the store serves audio only
through short-lived signed URLs to the owner; a store that is down is a clear 503 for an
upload (nothing kept anywhere) and a retried attempt for a job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from tests.conftest import JFK, ROOT, post_audio, queued_run, words
from tests.s3server import S3Store
from transcription import storage
from transcription.jobs import purge_expired_audio
from transcription.models import Audio, PendingDeletion, TranscriptRun

pytestmark = pytest.mark.django_db

REFERENCE = "and so my fellow americans ask not what your country can do for you"


def leftovers() -> list[Path]:
    """Files under this test's DATA_DIR uploads and temporary folders."""
    return sorted(
        path
        for folder in (settings.UPLOAD_DIR, settings.UPLOAD_TEMP_DIR)
        for path in Path(folder).rglob("*")
        if path.is_file()
    )


def key_of(audio: Audio) -> str:
    return f"lingoloop/{audio.stored_name}"


# --- The web process ------------------------------------------------------------------------


def test_an_upload_is_kept_in_the_bucket_and_nowhere_on_the_web_machine(alice, s3_store):
    run = queued_run(alice.client)

    audio = Audio.objects.get(runs__pk=run["runId"])
    assert s3_store.objects() == [key_of(audio)]
    stored = s3_store.client().get_object(Bucket=s3_store.bucket, Key=key_of(audio))
    assert stored["Body"].read() == JFK.read_bytes()
    assert leftovers() == []


@pytest.mark.django_db(transaction=True)  # the sync job runs on a connection of its own
def test_a_sync_upload_is_transcribed_from_the_upload_itself_and_kept_in_the_bucket(
    alice, s3_store, monkeypatch
):
    fetched: list[str] = []
    monkeypatch.setattr(
        storage.audio_storage(), "open", lambda name, mode="rb": fetched.append(name)
    )

    response = post_audio(alice.client, JFK, mode="sync")

    assert response.status_code == 201, response.content
    assert REFERENCE in " ".join(words(response.json()["text"]))
    assert fetched == []  # not fetched back from the store it was just written to
    assert len(s3_store.objects()) == 1
    assert leftovers() == []


def test_a_store_that_is_down_refuses_the_upload_with_503_and_keeps_nothing(alice, s3_store):
    with s3_store.away():
        response = post_audio(alice.client, JFK, mode="async")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert "try again" in response.json()["error"]["message"].lower()
    assert int(response["Retry-After"]) > 0
    assert not Audio.objects.exists() and not TranscriptRun.objects.exists()
    assert s3_store.objects() == []
    assert leftovers() == []


def test_an_upload_refused_as_not_audio_never_reaches_the_store(alice, s3_store):
    response = post_audio(alice.client, b"not audio at all" * 100, "notes.wav", mode="async")

    assert response.status_code == 415
    assert s3_store.objects() == []
    assert leftovers() == []


def test_deleting_a_run_deletes_its_object(alice, s3_store, django_capture_on_commit_callbacks):
    run = queued_run(alice.client)
    alice.client.post(f"/api/runs/{run['runId']}/cancel")

    with django_capture_on_commit_callbacks(execute=True):
        response = alice.client.delete(f"/api/runs/{run['runId']}")

    assert response.status_code == 204
    assert s3_store.objects() == []
    assert not PendingDeletion.objects.exists()


def test_a_user_deleted_with_everything_they_own_leaves_no_object(
    alice, s3_store, django_capture_on_commit_callbacks
):
    """Not only the API's delete: any way an Audio row goes (here the cascade of a user
    deleted in the admin) takes its file."""
    for _ in range(2):
        queued_run(alice.client)
    assert len(s3_store.objects()) == 2

    with django_capture_on_commit_callbacks(execute=True):
        alice.user.delete()  # type: ignore[attr-defined]

    assert s3_store.objects() == []
    assert not PendingDeletion.objects.exists()


def test_a_delete_while_the_store_is_away_is_finished_once_it_is_back(
    alice, s3_store, django_capture_on_commit_callbacks
):
    run = queued_run(alice.client)
    alice.client.post(f"/api/runs/{run['runId']}/cancel")

    with s3_store.away():
        with django_capture_on_commit_callbacks(execute=True):
            response = alice.client.delete(f"/api/runs/{run['runId']}")
        # The user's delete is done; the object waits for the store.
        assert response.status_code == 204
        assert not TranscriptRun.objects.exists() and not Audio.objects.exists()
        pending = PendingDeletion.objects.get()
        assert pending.attempts == 1
        assert storage.delete_pending() == 0  # too young: the request's own to finish
        PendingDeletion.objects.update(created_at=timezone.now() - timedelta(minutes=5))
        assert storage.delete_pending() == 0  # still away

    assert len(s3_store.objects()) == 1
    assert storage.delete_pending() == 1  # the worker clusters' housekeeping, store back
    assert s3_store.objects() == []
    assert not PendingDeletion.objects.exists()


def test_retention_deletes_the_stored_object_and_keeps_the_transcript(
    alice, s3_store, settings, django_capture_on_commit_callbacks
):
    settings.AUDIO_RETENTION_HOURS = 1
    run = queued_run(alice.client)
    long_ago = timezone.now() - timedelta(hours=3)
    TranscriptRun.objects.filter(pk=run["runId"]).update(
        status="succeeded", text="kept", finished_at=long_ago
    )
    Audio.objects.filter(runs__pk=run["runId"]).update(created_at=long_ago)

    with django_capture_on_commit_callbacks(execute=True):
        assert purge_expired_audio() == 1

    assert s3_store.objects() == []
    assert TranscriptRun.objects.get(pk=run["runId"]).text == "kept"


def test_the_owners_player_is_sent_to_a_short_lived_signed_url(alice, bob, s3_store):
    run = queued_run(alice.client)
    owner = Client()
    owner.force_login(alice.user)  # type: ignore[arg-type]

    response = owner.get(f"/runs/{run['runId']}/audio")

    assert response.status_code == 302
    assert response["Cache-Control"] == "private, no-store"
    signed = response["Location"]
    assert signed.startswith(s3_store.endpoint_url + "/")
    assert "X-Amz-Expires=300" in signed and "X-Amz-Signature=" in signed
    fetched = httpx.get(signed, timeout=10)
    assert fetched.status_code == 200 and fetched.content == JFK.read_bytes()
    # Without the signature the store refuses.
    assert httpx.get(signed.split("?")[0], timeout=10).status_code == 403

    stranger = Client()
    stranger.force_login(bob.user)  # type: ignore[arg-type]
    assert stranger.get(f"/runs/{run['runId']}/audio").status_code == 404


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume:Warning")
def test_without_signed_urls_the_web_process_streams_the_audio_with_byte_ranges(
    alice, s3_store, settings
):
    """AUDIO_URL_SECONDS=0: for a store that browsers cannot reach."""
    settings.AUDIO_URL_SECONDS = 0
    run = queued_run(alice.client)
    owner = Client()
    owner.force_login(alice.user)  # type: ignore[arg-type]
    whole = JFK.read_bytes()

    full = owner.get(f"/runs/{run['runId']}/audio")
    part = owner.get(f"/runs/{run['runId']}/audio", headers={"Range": "bytes=100-1099"})

    assert full.status_code == 200 and b"".join(full) == whole
    assert part.status_code == 206 and b"".join(part) == whole[100:1100]
    assert part["Content-Range"] == f"bytes 100-1099/{len(whole)}"
    with s3_store.away():
        assert owner.get(f"/runs/{run['runId']}/audio").status_code == 503
    s3_store.client().delete_object(Bucket=s3_store.bucket, Key=s3_store.objects()[0])
    assert owner.get(f"/runs/{run['runId']}/audio").status_code == 404


def test_the_pages_allow_media_from_the_store_and_nothing_else_new():
    """The Content-Security-Policy of a server on S3 lets the player follow the redirect."""
    code = (
        "from django.conf import settings;"
        "print(settings.CONTENT_SECURITY_POLICY['DIRECTIVES']['media-src'])"
    )
    env = {
        **os.environ,
        "AUDIO_STORAGE": "s3",
        "S3_BUCKET": "audio",
        "S3_ENDPOINT_URL": "https://store.example:9000",
        "DJANGO_SETTINGS_MODULE": "lingoloop.settings",
    }
    shown = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[\"'self'\", 'https://store.example:9000']"

    env.pop("S3_BUCKET")
    refused = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "AUDIO_STORAGE=s3 needs S3_BUCKET" in refused.stderr


# --- Worker processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_on_another_machine_transcribes_from_the_store_and_cleans_up(
    service, s3_store: S3Store, tmp_path
):
    """Web and worker with data folders of their own: only the store is shared."""
    web_data, worker_data = tmp_path / "web", tmp_path / "worker"
    service.start_web(**s3_store.env(), DATA_DIR=str(web_data))
    service.worker(**s3_store.env(), DATA_DIR=str(worker_data))

    run = service.submit(JFK)
    finished = service.wait_for_status(run["runId"], "succeeded")

    assert REFERENCE in " ".join(words(finished.text))
    assert s3_store.objects() == [f"lingoloop/{finished.audio.stored_name}"]
    for data_dir in (web_data, worker_data):
        kept = [p for p in (data_dir / "uploads").rglob("*") if p.is_file()]
        scratch = [p for p in (data_dir / "tmp").rglob("*") if p.is_file()]
        assert kept == [] and scratch == [], data_dir


@pytest.mark.slow
def test_a_store_that_is_down_when_a_worker_needs_it_is_retried_until_it_is_back(
    service, s3_store: S3Store, tmp_path
):
    service.start_web(**s3_store.env())
    run = service.submit(JFK)
    events = service.events(run)

    s3_store.down()
    service.worker(**s3_store.env(), WORKER_RETRY_DELAYS="1000,1000,1000,1000")
    error = events.wait_for("error", timeout=120)
    assert error.data["willRetry"] is True
    assert "audio store" in error.data["error"]["message"]
    s3_store.up()

    finished = service.wait_for_status(run["runId"], "succeeded")
    assert REFERENCE in " ".join(words(finished.text))
    events.close()
    assert list((Path(settings.DATA_DIR) / "tmp").rglob("*.fetched")) == []
