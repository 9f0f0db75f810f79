"""OpenAI's audio API under /v1/ (issue 17), with the official `openai` package as the client,
against a real web process and worker cluster."""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from django.db import OperationalError
from django.test import Client

from tasks_admin.models import Job
from tests.conftest import (
    JFK,
    long_speech,
    reference_wer,
    stored_path,
    wait_until,
    words,
)
from tests.test_channels import stereo  # noqa: F401  (the fixture)
from tests.test_models import german  # noqa: F401  (the fixture)
from transcription import catalogue, openai_api
from transcription.models import RunMode, RunStatus, TranscriptRun

pytestmark = pytest.mark.slow

# One quick run in each format: short files are transcribed in the request.
WEB = {"TRANSCRIBE_SYNC_MAX_DURATION_MS": "60000"}


def client(service: Any, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{service.web_url}/v1",
        api_key=key or service.account.token,
        max_retries=0,
        timeout=300,
    )


SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+$", re.MULTILINE)


def test_the_reference_file_in_each_response_format(service):
    service.start_web(**WEB)
    ai = client(service)

    with JFK.open("rb") as audio:
        plain = ai.audio.transcriptions.create(model="whisper-1", file=audio)
    assert reference_wer(plain.text) < 0.1
    assert plain.usage is not None and plain.usage.seconds == 11  # type: ignore[union-attr]

    def as_format(fmt: str, **extra: Any) -> Any:
        with JFK.open("rb") as audio:
            return ai.audio.transcriptions.create(
                model="tiny.en", file=audio, response_format=fmt, **extra
            )

    text = as_format("text")
    assert isinstance(text, str) and text.strip() == plain.text

    srt = as_format("srt")
    cues = [block for block in srt.strip().split("\n\n") if block]
    assert cues and all(SRT_CUE.match(block) for block in cues), srt
    assert reference_wer(" ".join(block.split("\n", 2)[2] for block in cues)) < 0.1

    vtt = as_format("vtt")
    assert vtt.startswith("WEBVTT")
    assert re.search(r"\d\d:\d\d\.\d{3} --> \d\d:\d\d\.\d{3}", vtt) or re.search(
        r"\d\d:\d\d:\d\d\.\d{3} --> ", vtt
    )

    verbose = as_format("verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and 10.5 < verbose.duration < 11.5
    assert verbose.text == plain.text
    assert verbose.segments and verbose.segments[0].start >= 0
    assert " ".join(s.text for s in verbose.segments).split() == plain.text.split()
    assert verbose.words and reference_wer(" ".join(w.word for w in verbose.words)) < 0.1
    assert all(w.start <= w.end for w in verbose.words)

    segments_only = as_format("verbose_json")
    assert segments_only.segments and not getattr(segments_only, "words", None)

    # Each request is a run of Alice's like any other, with its exports.
    runs = TranscriptRun.objects.filter(owner=service.account.user)
    assert runs.count() == 6 and {run.status for run in runs} == {RunStatus.SUCCEEDED}
    latest = runs.order_by("-created_at").first()
    assert latest is not None and latest.word_timestamps is False
    listed = service.api("GET", "/api/runs").json()
    assert len(listed["results"]) == 6
    export = service.api("GET", f"/api/runs/{listed['results'][0]['runId']}/transcript?format=srt")
    assert export.status_code == 200 and "-->" in export.text


def test_stream_yields_deltas_then_one_done_with_the_whole_text(service):
    service.start_web(**WEB)
    service.worker()
    ai = client(service)
    audio = long_speech(service.processes.data_dir / "long.wav", repeats=3)  # 36 s

    with audio.open("rb") as handle:
        events = list(
            ai.audio.transcriptions.create(
                model="whisper-1", file=handle, response_format="text", stream=True
            )
        )

    kinds = [event.type for event in events]
    assert kinds.count("transcript.text.done") == 1 and kinds[-1] == "transcript.text.done"
    deltas = [event.delta for event in events if event.type == "transcript.text.delta"]
    assert len(deltas) >= 2, kinds
    done = events[-1]
    assert "".join(deltas) == done.text
    assert reference_wer(done.text, 3) < 0.1


def test_a_long_file_goes_through_the_queue_and_the_web_only_waits(service):
    # Anything over 20 s is queued: the worker transcribes it, not the web process.
    service.start_web(TRANSCRIBE_SYNC_MAX_DURATION_MS="20000")
    service.worker()
    ai = client(service)
    audio = long_speech(service.processes.data_dir / "long.wav", repeats=4)  # 48 s

    with audio.open("rb") as handle:
        answer = ai.audio.transcriptions.with_raw_response.create(
            model="tiny.en", file=handle, response_format="verbose_json"
        )

    transcript = answer.parse()
    assert reference_wer(transcript.text, 4) < 0.1
    assert transcript.segments and transcript.segments[-1].end > 40
    run = TranscriptRun.objects.get(pk=answer.headers["X-LingoLoop-Run"])
    assert run.mode == RunMode.ASYNC and run.status == RunStatus.SUCCEEDED
    job = Job.objects.get(run=run)
    assert not job.locked_by.startswith("web:") and job.attempts == 1


def test_a_client_that_goes_away_leaves_its_run_running(service):
    service.start_web(TRANSCRIBE_SYNC_MAX_DURATION_MS="0")
    service.worker()
    audio = long_speech(service.processes.data_dir / "long.wav", repeats=4)

    with audio.open("rb") as handle, pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{service.web_url}/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {service.account.token}"},
            files={"file": ("long.wav", handle)},
            data={"model": "whisper-1"},
            timeout=httpx.Timeout(30, read=1.5),
        )

    run = TranscriptRun.objects.get(owner=service.account.user)
    wait_until(
        lambda: TranscriptRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED,
        120,
        "the abandoned run to finish",
    )


def test_a_run_that_fails_after_it_was_accepted_is_an_openai_error_answered_and_streamed(
    service,
):
    """Accepted (the probe passed, the run queued), then failed in the worker: the waiting
    answer is the failure in OpenAI's shape, and a stream ends with it as an error event;
    both raised by the SDK as what they are (the file's fault: 400, `undecodable`)."""
    service.start_web(TRANSCRIBE_SYNC_MAX_DURATION_MS="0")  # every file goes to the queue
    ai = client(service)
    audio = long_speech(service.processes.data_dir / "long.wav", repeats=1)

    def answered() -> Any:
        with audio.open("rb") as handle:
            return ai.audio.transcriptions.create(model="whisper-1", file=handle)

    def streamed() -> list[Any]:
        with audio.open("rb") as handle:
            return list(ai.audio.transcriptions.create(model="whisper-1", file=handle, stream=True))

    with ThreadPoolExecutor(2) as pool:
        answer, stream = pool.submit(answered), pool.submit(streamed)
        owner = service.account.user
        wait_until(lambda: TranscriptRun.objects.filter(owner=owner).count() == 2, 60, "both runs")
        # No worker yet: both wait in the queue while their stored audio breaks.
        for run in TranscriptRun.objects.filter(owner=owner).select_related("audio"):
            stored_path(run.audio).write_bytes(b"RIFF" + os.urandom(4000))
        service.worker()

        with pytest.raises(openai.BadRequestError) as refused:
            answer.result(timeout=120)
        with pytest.raises(openai.APIError) as ended:
            stream.result(timeout=120)

    assert refused.value.code == "undecodable" and refused.value.type == "invalid_request_error"
    assert ended.value.code == "undecodable"
    assert "could not be decoded" in ended.value.message
    assert set(TranscriptRun.objects.values_list("status", "error_code")) == {
        (RunStatus.FAILED, "undecodable")
    }


@pytest.mark.django_db(transaction=True)
def test_a_database_that_goes_away_while_a_client_waits_is_a_503_in_openai_shape(
    alice, settings, monkeypatch
):
    """The wait is outside DRF (an async view reading the run's events): its refusal came
    from the middleware, as a plain sentence the SDK could not read."""
    settings.TRANSCRIBE_SYNC_MAX_DURATION_MS = 0  # queued: the answer waits for the run

    def away(run_id: Any) -> Any:
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed")

    monkeypatch.setattr(openai_api, "_opening", away)
    with JFK.open("rb") as handle:
        answer = Client().post(
            "/v1/audio/transcriptions",
            {"file": handle, "model": "whisper-1"},
            headers={"Authorization": f"Bearer {alice.token}"},
        )

    assert answer.status_code == 503, answer.content
    assert answer.json()["error"] == {
        "message": answer.json()["error"]["message"],
        "type": "server_error",
        "param": None,
        "code": "database_unavailable",
    }
    assert answer["Retry-After"]


def test_speakers_by_channel_come_back_as_diarized_json(service, stereo):  # noqa: F811
    service.start_web(**WEB)
    ai = client(service)

    with stereo.open("rb") as handle:
        diarized = ai.audio.transcriptions.create(
            model="whisper-1",
            file=handle,
            response_format="diarized_json",
            known_speaker_names=["Alice", "Bob"],
        )

    speakers = {segment.speaker for segment in diarized.segments}
    assert speakers == {"Alice", "Bob"}
    first = next(s for s in diarized.segments if s.speaker == "Alice")
    assert "fellow americans" in first.text.lower()

    mono_file = long_speech(service.processes.data_dir / "mono.wav", repeats=1)
    with mono_file.open("rb") as handle, pytest.raises(openai.BadRequestError) as mono:
        ai.audio.transcriptions.create(
            model="whisper-1", file=handle, response_format="diarized_json"
        )
    assert mono.value.code == "not_multichannel"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's translations
def test_german_is_detected_and_translated_with_a_multilingual_model(service, german):  # noqa: F811
    if not catalogue.base_installed():
        pytest.skip("the base model's packages are not installed (the `base` extra)")
    service.start_web(**WEB)
    ai = client(service)

    with german.open("rb") as audio:
        heard = ai.audio.transcriptions.create(
            model="base", file=audio, response_format="verbose_json"
        )
    assert heard.language == "german" and "morgen" in heard.text.lower()

    with german.open("rb") as audio:
        english = ai.audio.translations.create(model="base", file=audio)
    assert {"good", "morning"} <= set(words(english.text)), english.text


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's translations
def test_what_is_refused_and_how_the_sdk_sees_it(service, tmp_path):
    service.start_web(**WEB)
    ai = client(service)

    models = [model.id for model in ai.models.list()]
    assert models[0] == "whisper-1" and "tiny.en" in models
    assert ai.models.retrieve("tiny.en").id == "tiny.en"
    with pytest.raises(openai.NotFoundError):
        ai.models.retrieve("gpt-4o-transcribe")

    with JFK.open("rb") as audio, pytest.raises(openai.AuthenticationError) as wrong:
        client(service, key="0" * 40).audio.transcriptions.create(model="whisper-1", file=audio)
    assert wrong.value.body["type"] == "authentication_error"  # type: ignore[index]

    with JFK.open("rb") as audio, pytest.raises(openai.BadRequestError) as english_only:
        ai.audio.translations.create(model="whisper-1", file=audio)
    assert english_only.value.param == "model"
    assert "English-only" in english_only.value.message and "base" in english_only.value.message

    pdf = tmp_path / "notes.mp3"
    pdf.write_bytes(b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 50)
    with pdf.open("rb") as audio, pytest.raises(openai.BadRequestError) as not_audio:
        ai.audio.transcriptions.create(model="whisper-1", file=audio)
    assert not_audio.value.code == "not_audio" and not_audio.value.param == "file"
    assert "not audio" in not_audio.value.message

    for bad, param in [
        ({"temperature": 0.4}, "temperature"),
        ({"include": ["logprobs"]}, "include[]"),
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities[]"),
        ({"response_format": "srt", "stream": True}, "stream"),
        ({"model": "gpt-4o-transcribe"}, "model"),
        ({"language": "klingon"}, "language"),
        ({"extra_body": {"beam_size": 3}}, "beam_size"),
        ({"known_speaker_names": ["Ann"]}, "known_speaker_names[]"),
        (
            {"response_format": "diarized_json", "known_speaker_names": ["Smith, Ann", "Bo"]},
            "known_speaker_names[]",
        ),
    ]:
        with JFK.open("rb") as audio, pytest.raises(openai.BadRequestError) as refused:
            ai.audio.transcriptions.create(**{"model": "whisper-1", "file": audio, **bad})
        assert refused.value.param == param, (bad, refused.value.body)
        assert refused.value.type == "invalid_request_error"

    # Nothing was kept of any refusal.
    assert not TranscriptRun.objects.exists()
    # A URL under /v1/ that does not exist answers in the same shape.
    missing = httpx.get(f"{service.web_url}/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_an_oversized_upload_is_refused_in_openai_shape(service, tmp_path):
    service.start_web(MAX_UPLOAD_BYTES="100000")
    big = tmp_path / "big.wav"
    big.write_bytes(b"RIFF" + b"\0" * 300_000)

    with big.open("rb") as audio, pytest.raises(openai.APIStatusError) as refused:
        client(service).audio.transcriptions.create(model="whisper-1", file=audio)

    assert refused.value.status_code == 413
    body = json.loads(refused.value.response.text)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "file_too_large"
