"""Every door refuses the wrong thing clearly (status, code, field) and leaves nothing behind.

One class a door: the upload form, the file's bytes, its name, the options, auth, the limits;
then random input, retention and the production settings."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import wave
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from tasks_admin.models import Job
from tests.conftest import JFK, ROOT, post_audio, stored_files, stored_path
from transcription.jobs import purge_expired_audio
from transcription.models import Audio, RunStatus, TranscriptRun

pytestmark = pytest.mark.django_db


# --- Files that are not (good) audio, built here rather than committed ---------------------


def wav(seconds: float) -> bytes:
    path_samples = (np.sin(np.arange(int(16000 * seconds)) / 10) * 8000).astype("<i2")
    import io

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(path_samples.tobytes())
    return buffer.getvalue()


def png() -> bytes:
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 16 for _ in range(16))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def video_only(path: Path) -> bytes:
    out = av.open(str(path), "w")
    stream = out.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    for _ in range(10):
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), dtype=np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path.read_bytes()


def flac_claiming_centuries() -> bytes:
    """jfk.flac whose STREAMINFO says it holds 2^36 - 1 samples (about 18 days)."""
    data = bytearray(JFK.read_bytes())
    start = 8 + 10  # 'fLaC', block header, then sample rate / channels / bits / total samples
    packed = int.from_bytes(data[start : start + 8], "big") | ((1 << 36) - 1)
    data[start : start + 8] = packed.to_bytes(8, "big")
    return bytes(data)


def post(
    client: Client,
    content: bytes,
    name: str = "upload.mp3",
    *,
    headers: dict[str, str] | None = None,
    **fields: object,
) -> Any:
    """An async upload: refusals come before the mode matters, and an accepted file is queued
    rather than transcribed in the request."""
    return post_audio(client, content, name, headers=headers, **{"mode": "async", **fields})


def assert_refused(response, status: int, code: str, field: str | None = "file") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]
    assert Audio.objects.count() == 0
    assert TranscriptRun.objects.count() == 0
    assert Job.objects.count() == 0
    assert stored_files() == []


# --- The upload form: one `file` field in a well-formed multipart body -----------------------


class TestUploadForm:
    def test_a_file_field_with_no_bytes_is_refused_as_empty_file(self, alice):
        assert_refused(post(alice.client, b""), 400, "empty_file")

    def test_a_form_without_a_file_field_is_refused_as_required(self, alice):
        response = alice.client.post("/api/transcribe", {"language": "en"}, format="multipart")
        assert_refused(response, 400, "required")

    def test_two_file_fields_are_refused_as_too_many_files(self, alice):
        response = alice.client.post(
            "/api/transcribe",
            {
                "file": [
                    SimpleUploadedFile("a.flac", JFK.read_bytes()),
                    SimpleUploadedFile("b.flac", JFK.read_bytes()),
                ]
            },
            format="multipart",
        )
        assert_refused(response, 400, "too_many_files")

    def test_a_body_without_a_boundary_is_refused_as_malformed_request(self, alice):
        response = alice.client.generic(
            "POST",
            "/api/transcribe",
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nabc',
            content_type="multipart/form-data; boundary=",
        )
        assert_refused(response, 400, "malformed_request", None)


# --- The file's bytes: what they really are, whatever the name says -------------------------


class TestFileBytes:
    @pytest.mark.parametrize(
        ("name", "content"),
        [
            ("report.mp3", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + b"x" * 2000),
            ("picture.mp3", png()),
            ("page.wav", b"<!doctype html><html><body>" + b"hello " * 500 + b"</body></html>"),
            ("script.mp3", b"#!/bin/sh\necho pwned\n" * 100),
        ],
    )
    def test_bytes_that_are_not_audio_are_refused_as_not_audio(self, alice, name, content):
        assert_refused(post(alice.client, content, name), 415, "not_audio")

    def test_a_container_without_an_audio_stream_is_refused_as_no_audio_stream(
        self, alice, tmp_path
    ):
        response = post(alice.client, video_only(tmp_path / "silent.mp4"), "silent.mp4")
        assert_refused(response, 422, "no_audio_stream")

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(JFK.read_bytes()[:2000], id="truncated"),
            pytest.param(JFK.read_bytes()[:200] + os.urandom(50_000), id="garbage-after-header"),
        ],
    )
    def test_truncated_or_corrupt_audio_is_refused_as_undecodable(self, alice, content):
        assert_refused(post(alice.client, content, "broken.flac"), 422, "undecodable")

    @pytest.mark.django_db(transaction=True)
    def test_audio_that_stops_decoding_after_the_probe_fails_its_run_without_retry(
        self, alice, settings
    ):
        """The probe passed, then the file became unreadable: `undecodable`, one attempt."""
        from tasks_admin.runner import run_job

        run = post(alice.client, wav(1.0), "one.wav").json()
        audio = Audio.objects.get()
        stored_path(audio).write_bytes(b"RIFF" + os.urandom(4000))

        run_job(str(Job.objects.get().pk))

        stored = TranscriptRun.objects.get(pk=run["runId"])
        assert (stored.status, stored.error_code) == (RunStatus.FAILED, "undecodable")
        assert Job.objects.get().attempts == 1

    def test_audio_of_zero_length_is_refused_as_empty_audio(self, alice):
        assert_refused(post(alice.client, wav(0), "odd.flac"), 422, "empty_audio")

    def test_a_header_claiming_centuries_is_measured_not_believed(self, alice):
        response = post(alice.client, flac_claiming_centuries(), "odd.flac")

        assert response.status_code == 202, response.content
        assert response.json()["audio"]["durationMs"] == 11000


# --- The file's name: shown to people, never used as a path ---------------------------------


class TestFileName:
    @pytest.mark.parametrize(
        ("name", "shown"),
        [
            ("../../x.wav", "x.wav"),
            ("a.wav%00.php", "a.wav%00.php"),
            ("evil\u202egnp.wav", "evilgnp.wav"),
            ("bell\x07\x1b[31m.wav", "bell[31m.wav"),
            ("..\\..\\windows\\win.ini.wav", "win.ini.wav"),
        ],
    )
    def test_a_hostile_filename_is_stored_under_a_uuid_and_shown_sanitized(
        self, alice, name, shown
    ):
        response = post(alice.client, wav(1.0), name)

        assert response.status_code == 202
        audio = Audio.objects.get()
        assert audio.original_filename == shown
        assert response.json()["audio"]["filename"] == shown
        (stored,) = stored_files()
        assert stored.name == audio.stored_name and len(stored.name) == 32

    def test_a_300_byte_filename_is_shortened_keeping_its_extension(self, alice):
        response = post(alice.client, wav(1.0), "n" * 296 + ".wav")

        assert response.status_code == 202
        name = Audio.objects.get().original_filename
        assert name.endswith(".wav") and len(name.encode()) <= 200


# --- Options: the other form fields, the Idempotency-Key header, query parameters -----------


class TestOptions:
    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"language": "klingon"}, "language"),
            ({"language": "de"}, "language"),  # tiny.en knows English only
            ({"model": "large-v3"}, "model"),
            ({"priority": 11}, "priority"),
            ({"priority": -11}, "priority"),
            ({"priority": "NaN"}, "priority"),
            ({"beamSize": -1}, "beamSize"),
            ({"beamSize": "NaN"}, "beamSize"),
            ({"task": "summarize"}, "task"),
            ({"mode": "later"}, "mode"),
            ({"wordTimestamps": "maybe"}, "wordTimestamps"),
            ({"callbackUrl": "ftp://example.com/hook"}, "callbackUrl"),
            ({"callbackUrl": "javascript:alert(1)"}, "callbackUrl"),
        ],
    )
    def test_an_option_out_of_its_range_is_refused_naming_the_field(self, alice, fields, field):
        response = post(alice.client, wav(1.0), "one.wav", **fields)

        assert response.status_code == 400, response.json()
        assert response.json()["error"]["field"] == field
        assert Audio.objects.count() == 0 and stored_files() == []

    @pytest.mark.parametrize(
        "fields",
        [
            {"language": "e\x00n"},
            {"initialPrompt": "hello\x00world"},
            {"callbackUrl": "https://8.8.8.8/\x00"},
            {"model": "tiny.en\x00"},
        ],
        ids=["language", "initialPrompt", "callbackUrl", "model"],
    )
    def test_a_nul_in_any_field_is_refused_naming_the_field(self, alice, fields):
        response = post(alice.client, JFK.read_bytes(), "jfk.flac", **fields)

        assert_refused(response, 400, response.json()["error"]["code"], field=next(iter(fields)))

    @pytest.mark.parametrize("key", ["k\x00", "k\x01y", "ключ"])
    def test_an_idempotency_key_of_unprintable_characters_is_refused_as_invalid(self, alice, key):
        response = post(
            alice.client, JFK.read_bytes(), "jfk.flac", headers={"Idempotency-Key": key}
        )

        assert_refused(response, 400, "invalid", field="Idempotency-Key")

    def test_a_nul_in_a_query_parameter_is_refused_as_invalid_characters(self, alice):
        query = alice.client.get("/api/runs", {"status": "queued\x00", "limit": "\x07"})

        assert query.status_code == 400 and query.json()["error"]["code"] == "invalid_characters"


# --- Auth: who may send, and whose runs they may touch ---------------------------------------


class TestAuth:
    def test_a_session_post_without_a_csrf_token_is_refused_as_permission_denied(self, alice):
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(alice.user)  # type: ignore[arg-type]

        response = post_audio(browser, wav(1.0), "a.wav")

        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
        assert Audio.objects.count() == 0 and stored_files() == []

    def test_no_token_or_a_wrong_one_is_refused_as_401(self):
        anonymous = APIClient().post("/api/transcribe", {}, format="multipart")
        wrong = APIClient(HTTP_AUTHORIZATION="Bearer nope").post(
            "/api/transcribe", {}, format="multipart"
        )

        assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (
            401,
            "not_authenticated",
        )
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "authentication_failed")

    def test_a_nul_in_a_login_field_is_refused_naming_the_field(self):
        token = APIClient().post(
            "/api/auth/token", {"username": "alice\x00", "password": "x"}, format="json"
        )

        assert token.status_code == 400 and token.json()["error"]["field"] == "username"

    def test_someone_elses_run_is_not_found_through_every_door(self, alice, bob):
        run_id = post(alice.client, wav(1.0), "one.wav").json()["runId"]

        for method, path in [
            ("get", f"/api/runs/{run_id}"),
            ("get", f"/api/runs/{run_id}/progress"),
            ("get", f"/api/runs/{run_id}/transcript?format=json"),
            ("post", f"/api/runs/{run_id}/cancel"),
            ("post", f"/api/runs/{run_id}/retry"),
            ("delete", f"/api/runs/{run_id}"),
        ]:
            response = getattr(bob.client, method)(path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"
        assert TranscriptRun.objects.get(pk=run_id).status == RunStatus.QUEUED


# --- Limits: how much one upload and one user may ask for -----------------------------------


class TestLimits:
    def test_a_file_over_the_upload_limit_is_refused_as_413_and_its_partial_file_removed(
        self, alice, settings
    ):
        settings.MAX_UPLOAD_BYTES = 200_000

        response = post(alice.client, JFK.read_bytes(), "jfk.flac")

        assert_refused(response, 413, "file_too_large")
        assert list(Path(settings.UPLOAD_TEMP_DIR).iterdir()) == []

    @pytest.mark.slow
    def test_an_oversized_upload_is_refused_before_its_body_is_sent(self, service):
        """Over HTTP: the 413 comes back while the client has sent only the headers."""
        import http.client
        import json

        base = service.start_web(MAX_UPLOAD_BYTES="1000000")
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.putrequest("POST", "/api/transcribe")
        connection.putheader("Authorization", f"Bearer {service.account.token}")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(10 * 1024**3))  # 10 GiB announced, none sent
        connection.endheaders()

        response = connection.getresponse()

        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "file_too_large"
        connection.close()
        assert list(Path(service.processes.data_dir, "tmp").iterdir()) == []

    def test_audio_over_the_duration_limit_is_refused_as_audio_too_long(self, alice, settings):
        settings.MAX_AUDIO_DURATION_MS = 5000
        assert_refused(post(alice.client, JFK.read_bytes(), "jfk.flac"), 422, "audio_too_long")

    def test_more_active_runs_than_allowed_is_429_with_retry_after(self, alice, settings):
        settings.USER_MAX_ACTIVE_RUNS = 2
        assert post(alice.client, wav(1.0), "1.wav").status_code == 202
        assert post(alice.client, wav(1.0), "2.wav").status_code == 202

        response = post(alice.client, wav(1.0), "3.wav")

        assert response.status_code == 429
        assert response.json()["error"]["code"] == "too_many_active_runs"
        assert int(response["Retry-After"]) > 0
        assert TranscriptRun.objects.count() == 2 and len(stored_files()) == 2

    def test_more_uploads_per_minute_than_the_throttle_allows_is_429(self, alice, settings):
        settings.UPLOADS_PER_MINUTE = 2
        for name in ("1.wav", "2.wav"):
            assert post(alice.client, wav(1.0), name).status_code == 202

        response = post(alice.client, wav(1.0), "3.wav")

        assert response.status_code == 429
        assert response.json()["error"]["code"] == "throttled"
        assert int(response["Retry-After"]) > 0
        assert TranscriptRun.objects.count() == 2


# --- Random input through every upload field never breaks the server ------------------------


class TestRandomInput:
    @hypothesis_settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        content=st.binary(max_size=4096),
        language=st.text(max_size=20),
        priority=st.one_of(st.integers(), st.text(max_size=8)),
        beam=st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=5)),
        word_timestamps=st.text(max_size=6),
        callback=st.text(max_size=40),
    )
    def test_random_bytes_and_options_never_produce_a_500(
        self, alice, content, language, priority, beam, word_timestamps, callback
    ):
        response = post(
            alice.client,
            content,
            "random.bin",
            language=language,
            priority=str(priority),
            beamSize=str(beam),
            wordTimestamps=word_timestamps,
            callbackUrl=callback,
        )

        assert response.status_code < 500, response.content
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message", "field"}
            assert Audio.objects.count() == 0
        TranscriptRun.objects.all().delete()
        Audio.objects.all().delete()
        for leftover in stored_files():
            leftover.unlink()


# --- Retention: uploads are removed from disk when their time is up -------------------------


def age(run: TranscriptRun, *, finished: datetime | None, uploaded: datetime) -> None:
    """Make `run` look finished at `finished` (if given), its audio uploaded at `uploaded`."""
    if finished is not None:
        TranscriptRun.objects.filter(pk=run.pk).update(
            status=RunStatus.SUCCEEDED, text="kept", finished_at=finished
        )
    Audio.objects.filter(pk=run.audio_id).update(created_at=uploaded)


class TestRetention:
    def test_retention_deletes_exactly_the_expired_files_from_disk(
        self, alice, settings, django_capture_on_commit_callbacks
    ):
        settings.AUDIO_RETENTION_HOURS = 24
        ids = [post(alice.client, wav(1.0), f"{n}.wav").json()["runId"] for n in range(4)]
        old = timezone.now() - timedelta(hours=30)
        recent = timezone.now() - timedelta(hours=2)
        runs = TranscriptRun.objects.filter(pk__in=ids).order_by("created_at")
        expired, finished_lately, still_queued, kept_young = list(runs)
        age(expired, finished=old, uploaded=old)
        age(finished_lately, finished=recent, uploaded=old)
        age(still_queued, finished=None, uploaded=old)
        kept = [stored_path(run.audio) for run in (finished_lately, still_queued, kept_young)]
        doomed = stored_path(expired.audio)
        assert stored_files() == sorted([doomed, *kept])

        with django_capture_on_commit_callbacks(execute=True):  # files go once rows commit
            assert purge_expired_audio() == 1

        # On disk: the expired file is gone, and only it.
        assert not doomed.exists()
        assert stored_files() == sorted(kept)
        expired.audio.refresh_from_db()
        assert expired.audio.purged_at is not None and not stored_path(expired.audio).exists()
        assert TranscriptRun.objects.get(pk=expired.pk).text == "kept"
        for run in (finished_lately, still_queued, kept_young):
            run.audio.refresh_from_db()
            assert run.audio.purged_at is None and stored_path(run.audio).exists()
        assert purge_expired_audio() == 0  # nothing twice
        assert stored_files() == sorted(kept)

    @pytest.mark.django_db(transaction=True)
    def test_retention_runs_as_a_periodic_job_that_removes_the_expired_file(self, alice, settings):
        from tasks_admin.runner import enqueue_periodic_jobs, run_job

        settings.AUDIO_RETENTION_HOURS = 1
        run_id = post(alice.client, wav(1.0), "old.wav").json()["runId"]
        run = TranscriptRun.objects.select_related("audio").get(pk=run_id)
        old = timezone.now() - timedelta(hours=2)
        age(run, finished=old, uploaded=old)
        (on_disk,) = stored_files()
        assert "purge_audio" in enqueue_periodic_jobs()
        assert enqueue_periodic_jobs() == []  # one at a time
        job = Job.objects.get(job_type="purge_audio")

        assert run_job(str(job.pk)) == "succeeded"

        assert not on_disk.exists() and stored_files() == []
        assert Audio.objects.get().purged_at is not None


# --- Production settings --------------------------------------------------------------------


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


class TestProductionSettings:
    def test_debug_is_off_with_nothing_set_and_a_weak_secret_key_is_refused(self, tmp_path):
        base = {"DATA_DIR": str(tmp_path)}
        defaults = manage(
            "shell",
            "--no-imports",
            "-c",
            "from django.conf import settings; print(settings.DEBUG)",
            **base,
        )
        weak_key = manage("check", **base, SECRET_KEY="short")

        assert defaults.returncode == 0, defaults.stderr
        assert defaults.stdout.strip() == "False"
        assert weak_key.returncode != 0 and "SECRET_KEY must be at least 50" in weak_key.stderr

    def test_check_deploy_is_clean_with_the_documented_production_settings(self, tmp_path):
        result = manage(
            "check",
            "--deploy",
            "--fail-level",
            "WARNING",
            DEBUG="0",
            DATA_DIR=str(tmp_path),
            SECRET_KEY="x7!" + "q9Zr-Lm2pW8vT4kB6yN1cD3fH5jA0sE" * 2,
            ALLOWED_HOSTS="lingoloop.example.com",
            SECURE_SSL_REDIRECT="1",
            SECURE_HSTS_SECONDS="31536000",
            SECURE_HSTS_INCLUDE_SUBDOMAINS="1",
            SECURE_HSTS_PRELOAD="1",
        )

        assert result.returncode == 0, result.stdout + result.stderr
