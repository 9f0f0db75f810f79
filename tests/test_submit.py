"""POST /api/transcribe: sync transcription, the async answer, and refusals that leave nothing."""

from __future__ import annotations

import pytest

from tasks_admin.models import Job, JobStatus
from tests.conftest import JFK_REFERENCE, post_audio, stored_files, words
from transcription.models import Audio, TranscriptRun


def assert_nothing_left() -> None:
    assert Audio.objects.count() == 0
    assert TranscriptRun.objects.count() == 0
    assert Job.objects.count() == 0
    assert stored_files() == []


@pytest.mark.django_db(transaction=True)
def test_sync_transcription_returns_the_spoken_words(alice, jfk):
    response = post_audio(alice.client, jfk)

    assert response.status_code == 201, response.json()
    run = response.json()
    assert run["status"] == "succeeded"
    assert run["mode"] == "sync"
    assert run["progress"] == 100.0
    assert words(run["text"]) == words(JFK_REFERENCE)
    assert run["language"] == "en"
    assert run["segments"][-1]["end"] == pytest.approx(11.0, abs=0.5)
    assert run["audio"] == {
        "id": run["audioId"],
        "filename": "jfk.flac",
        "durationMs": 11000,
        "sizeBytes": jfk.stat().st_size,
    }
    assert run["jobs"][0]["jobType"] == "transcribe_sync"
    assert run["jobs"][0]["status"] == "succeeded"
    # Stored under a UUID name, never the client's.
    (stored,) = stored_files()
    assert stored.name != "jfk.flac"
    assert Audio.objects.get().sha256 and Audio.objects.get().content_type == "audio/flac"


@pytest.mark.django_db(transaction=True)
def test_sync_run_records_its_events(alice, jfk):
    from django_eventstream.models import Event

    response = post_audio(alice.client, jfk)

    run_id = response.json()["runId"]
    stored = list(Event.objects.filter(channel=f"run-{run_id}").exclude(eid=0).order_by("eid"))
    assert [e.type for e in stored][-1] == "done"
    assert "update" in [e.type for e in stored]


@pytest.mark.django_db
def test_async_mode_queues_the_run_with_its_place_and_events_url(alice, jfk):
    response = post_audio(alice.client, jfk, mode="async")

    assert response.status_code == 202
    run = response.json()
    assert response["Location"] == f"/api/runs/{run['runId']}"
    assert run["status"] == "queued"
    assert run["mode"] == "async"
    assert run["queuePosition"] == 1
    assert run["links"]["events"] == f"/api/runs/{run['runId']}/events"
    assert run["eventsToken"]
    job = Job.objects.get()
    assert (job.job_type, job.status, job.max_attempts) == ("transcribe_long", JobStatus.QUEUED, 4)


@pytest.mark.django_db
def test_files_above_the_sync_limits_are_queued(alice, jfk, settings):
    settings.TRANSCRIBE_SYNC_MAX_DURATION_MS = 5000

    response = post_audio(alice.client, jfk)

    assert response.status_code == 202
    assert response.json()["status"] == "queued"


@pytest.mark.django_db
def test_forcing_sync_above_the_limits_is_refused(alice, jfk, settings):
    settings.TRANSCRIBE_SYNC_MAX_BYTES = 1000

    response = post_audio(alice.client, jfk, mode="sync")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "sync_limits_exceeded"
    assert response.json()["error"]["field"] == "mode"
    assert_nothing_left()


@pytest.mark.django_db
def test_text_renamed_mp3_is_refused_and_leaves_nothing(alice, tmp_path):
    fake = tmp_path / "notes.mp3"
    fake.write_text("These are meeting notes, not audio. " * 50)

    response = post_audio(alice.client, fake)

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "not_audio"
    assert response.json()["error"]["field"] == "file"
    assert_nothing_left()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.django_db
def test_empty_file_is_refused_and_leaves_nothing(alice, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")

    response = post_audio(alice.client, empty)

    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "empty_file", "message": "The uploaded file is empty.", "field": "file"}
    }
    assert_nothing_left()


@pytest.mark.django_db
def test_missing_file_field_names_the_field(alice):
    response = alice.client.post("/api/transcribe", {"language": "en"}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "file"
    assert response.json()["error"]["code"] == "required"


@pytest.mark.django_db
def test_unknown_model_is_refused_naming_the_field(alice, jfk):
    response = post_audio(alice.client, jfk, model="large-v3")

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "model"
    assert_nothing_left()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/transcribe", "/api/detect-language"])
@pytest.mark.parametrize("model", [" base", "base\n", "\ttiny.en"])
def test_a_model_name_is_taken_only_as_the_models_list_spells_it(alice, jfk, path, model):
    """Found by the schema fuzzer: DRF trimmed " base" to "base" and took it, where the
    documented choices refuse it."""
    with jfk.open("rb") as handle:
        response = alice.client.post(path, {"file": handle, "model": model}, format="multipart")

    assert response.status_code == 400, response.content
    assert response.json()["error"]["field"] == "model"
    assert_nothing_left()


@pytest.mark.django_db
def test_idempotency_key_returns_the_first_run(alice, jfk):
    first = post_audio(alice.client, jfk, mode="async", headers={"Idempotency-Key": "upload-42"})
    again = post_audio(alice.client, jfk, mode="async", headers={"Idempotency-Key": "upload-42"})

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["runId"] == first.json()["runId"]
    assert TranscriptRun.objects.count() == 1
    assert len(stored_files()) == 1


@pytest.mark.django_db
def test_hostile_filename_is_stored_under_a_uuid_and_shown_sanitized(alice, jfk):
    name = "../../\u202eevil\x07.flac"

    response = post_audio(alice.client, jfk, name, mode="async")

    assert response.status_code == 202
    audio = Audio.objects.get()
    assert "/" not in audio.original_filename and "\u202e" not in audio.original_filename
    assert "\x07" not in audio.original_filename
    (stored,) = stored_files()
    assert stored.name == audio.stored_name
