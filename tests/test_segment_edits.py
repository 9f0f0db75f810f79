"""Corrections of a finished transcript: kept beside the model's segments, never over them.

`PATCH /api/runs/{runId}/segments/{segmentId}` corrects one segment's text, `DELETE` drops the
correction; the run's representation and every transcript format show the corrections, and
`?version=original` the model's own output.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from lingoloop import eventhub
from tests.conftest import Account, make_account
from transcription import services
from transcription.events import run_channel
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun

SEGMENTS = [
    {
        "id": 0,
        "start": 0.0,
        "end": 2.5,
        "text": "And so my fellow Americans,",
        "words": [
            {"start": 0.0, "end": 0.4, "word": " And", "probability": 0.93},
            {"start": 0.4, "end": 0.8, "word": " so", "probability": 0.97},
            {"start": 0.8, "end": 1.2, "word": " my", "probability": 0.99},
            {"start": 1.2, "end": 1.7, "word": " fellow", "probability": 0.98},
            {"start": 1.7, "end": 2.5, "word": " Americans,", "probability": 0.95},
        ],
    },
    {
        "id": 1,
        "start": 2.5,
        "end": 6.0,
        "text": "ask not what your country can do for you,",
        "words": [
            {"start": 2.5, "end": 3.0, "word": " ask", "probability": 0.9},
            {"start": 3.0, "end": 6.0, "word": " not…", "probability": 0.9},
        ],
    },
    {
        "id": 2,
        "start": 6.0,
        "end": 11.0,
        "text": "ask what you can do for your country.",
        "words": [{"start": 6.0, "end": 11.0, "word": " ask…", "probability": 0.9}],
    },
]
MODEL_TEXT = " ".join(s["text"] for s in SEGMENTS)


def finished_run(owner: Any, *, status: str = RunStatus.SUCCEEDED, words: bool = True) -> str:
    """A run as the worker leaves it, with three segments (and their words)."""
    audio = Audio.objects.create(
        owner=owner,
        stored_name=uuid.uuid4().hex,
        original_filename="speech.flac",
        content_type="audio/flac",
        size_bytes=1000,
        duration_ms=11000,
        sha256="0" * 64,
    )
    segments = (
        SEGMENTS if words else [{k: v for k, v in s.items() if k != "words"} for s in SEGMENTS]
    )
    run = TranscriptRun.objects.create(
        owner=owner,
        audio=audio,
        status=status,
        mode=RunMode.ASYNC,
        model="tiny.en",
        word_timestamps=words,
        progress=100.0 if status == RunStatus.SUCCEEDED else 0.0,
        text=MODEL_TEXT if status == RunStatus.SUCCEEDED else "",
        segments=segments if status == RunStatus.SUCCEEDED else [],
        detected_language="en",
        language_probability=0.99,
    )
    return str(run.pk)


def correct(account: Account, run_id: str, segment: int, text: Any) -> Any:
    return account.client.patch(
        f"/api/runs/{run_id}/segments/{segment}", {"text": text}, format="json"
    )


def transcript(account: Account, run_id: str, **params: str) -> str:
    response = account.client.get(f"/api/runs/{run_id}/transcript", params)
    assert response.status_code == 200, response.content
    return response.content.decode()


@pytest.fixture
def run_id(alice: Account) -> str:
    return finished_run(alice.user)


# --- Correct and revert -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_correction_is_kept_beside_the_models_segment(alice, run_id):
    response = correct(alice, run_id, 1, "Ask not what your country can do for you —")

    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == 1 and answer["start"] == 2.5 and answer["end"] == 6.0
    assert answer["text"] == "Ask not what your country can do for you —"
    assert answer["edited"] is True
    assert answer["originalText"] == SEGMENTS[1]["text"]
    assert answer["originalWords"] == SEGMENTS[1]["words"]
    assert "words" not in answer  # they timed the model's words
    assert answer["editedAt"].endswith("Z")

    run = alice.client.get(f"/api/runs/{run_id}").json()
    assert run["segments"][1] == {k: v for k, v in answer.items()}
    assert run["segments"][0] == SEGMENTS[0]  # the others as the model made them
    assert run["text"] == (
        f"{SEGMENTS[0]['text']} Ask not what your country can do for you — {SEGMENTS[2]['text']}"
    )
    # The model's output itself is untouched.
    stored = TranscriptRun.objects.get(pk=run_id)
    assert stored.segments == SEGMENTS and stored.text == MODEL_TEXT


@pytest.mark.django_db
def test_the_last_correction_wins_and_the_models_text_again_removes_it(alice, run_id):
    correct(alice, run_id, 2, "first")
    assert correct(alice, run_id, 2, "  second\n  try\t").json()["text"] == "second try"
    assert alice.client.get(f"/api/runs/{run_id}").json()["segments"][2]["text"] == "second try"

    answer = correct(alice, run_id, 2, f" {SEGMENTS[2]['text']} ").json()

    assert answer["edited"] is False and answer["text"] == SEGMENTS[2]["text"]
    assert "originalText" not in answer
    assert TranscriptRun.objects.get(pk=run_id).segment_edits == {}


@pytest.mark.django_db
def test_delete_reverts_a_segment_to_the_models_text(alice, run_id):
    correct(alice, run_id, 0, "And so, my fellow Americans:")
    correct(alice, run_id, 2, "kept")

    response = alice.client.delete(f"/api/runs/{run_id}/segments/0")

    assert response.status_code == 200
    assert response.json() == {**SEGMENTS[0], "edited": False}
    run = alice.client.get(f"/api/runs/{run_id}").json()
    assert run["segments"][0] == SEGMENTS[0]
    assert run["segments"][2]["text"] == "kept"  # the other correction stays
    # Nothing to revert: the same answer again.
    assert alice.client.delete(f"/api/runs/{run_id}/segments/0").json()["edited"] is False


@pytest.mark.django_db
def test_an_empty_correction_silences_the_segment(alice, run_id):
    assert correct(alice, run_id, 1, "   ").json()["text"] == ""

    assert alice.client.get(f"/api/runs/{run_id}").json()["text"] == (
        f"{SEGMENTS[0]['text']} {SEGMENTS[2]['text']}"
    )
    srt = transcript(alice, run_id, format="srt")
    assert srt.count("-->") == 2 and "ask not" not in srt


@pytest.mark.django_db
def test_a_patch_without_text_changes_nothing(alice, run_id):
    correct(alice, run_id, 1, "changed")

    response = alice.client.patch(f"/api/runs/{run_id}/segments/1", {}, format="json")

    assert response.status_code == 200 and response.json()["text"] == "changed"


@pytest.mark.django_db
def test_a_correction_sends_no_event(alice, run_id):
    before = eventhub.current_id(run_channel(uuid.UUID(run_id)))

    correct(alice, run_id, 1, "quietly")

    assert eventhub.current_id(run_channel(uuid.UUID(run_id))) == before


@pytest.mark.django_db
def test_a_retry_transcribes_anew_without_the_old_corrections(alice):
    # Only a succeeded run can be corrected and only a failed or cancelled one retried: a
    # correction left on a run that is retried (an operator's change of status) goes.
    run_id = finished_run(alice.user, status=RunStatus.CANCELLED)
    TranscriptRun.objects.filter(pk=run_id).update(
        segment_edits={"0": {"text": "stale", "editedAt": "2026-01-01T00:00:00Z"}}
    )

    services.run_retry(run=TranscriptRun.objects.get(pk=run_id))

    assert TranscriptRun.objects.get(pk=run_id).segment_edits == {}


# --- Exports ------------------------------------------------------------------------------


@pytest.fixture
def corrected(alice, run_id) -> str:
    response = correct(alice, run_id, 1, "Ask <not> what your country & you --> can do")
    assert response.status_code == 200
    return run_id


@pytest.mark.django_db
def test_every_format_carries_the_correction_by_default(alice, corrected):
    fixed = "Ask <not> what your country & you --> can do"

    txt = transcript(alice, corrected, format="txt")
    srt = transcript(alice, corrected, format="srt")
    vtt = transcript(alice, corrected, format="vtt")
    tsv = transcript(alice, corrected, format="tsv")
    document = json.loads(transcript(alice, corrected, format="json"))

    assert txt == f"{SEGMENTS[0]['text']} {fixed} {SEGMENTS[2]['text']}\n"
    assert f"2\n00:00:02,500 --> 00:00:06,000\n{fixed}\n" in srt
    # WebVTT cue text is markup: the correction's <, & and --> are escaped.
    assert (
        "00:00:02.500 --> 00:00:06.000\nAsk &lt;not&gt; what your country &amp; you --&gt; can do\n"
        in vtt
    )
    assert f"2500\t6000\t{fixed}\n" in tsv
    assert document["edited"] is True
    assert document["text"] == txt.strip()
    segment = document["segments"][1]
    assert segment["text"] == fixed and segment["edited"] is True
    assert segment["originalText"] == SEGMENTS[1]["text"]
    assert document["segments"][0] == SEGMENTS[0]


@pytest.mark.django_db
def test_version_original_is_the_models_output_in_every_format(alice, corrected):
    plain = finished_run(alice.user)  # the same transcript, never corrected

    for fmt in ("txt", "srt", "vtt", "tsv", "json"):
        original = transcript(alice, corrected, format=fmt, version="original")
        never_corrected = transcript(alice, plain, format=fmt)
        assert original == never_corrected.replace(plain, corrected), fmt
        assert "Ask <not>" not in original and "&lt;not" not in original
    document = json.loads(transcript(alice, corrected, format="json", version="original"))
    assert document["edited"] is False and document["segments"] == SEGMENTS
    response = alice.client.get(
        f"/api/runs/{corrected}/transcript", {"format": "srt", "version": "original"}
    )
    assert response["Content-Disposition"] == 'attachment; filename="speech.original.srt"'


@pytest.mark.django_db
def test_word_level_exports_time_each_word_and_keep_a_corrected_segment_whole(alice, corrected):
    srt = transcript(alice, corrected, format="srt", level="word")
    vtt = transcript(alice, corrected, format="vtt", level="word")
    tsv = transcript(alice, corrected, format="tsv", level="word")

    assert srt.startswith("1\n00:00:00,000 --> 00:00:00,400\nAnd\n\n2\n00:00:00,400 --> ")
    # Segment 0's words, then the corrected segment 1 whole, then segment 2's one word.
    assert len(re.findall(r"^\d\d:\d\d:\d\d,\d{3} --> ", srt, re.MULTILINE)) == 5 + 1 + 1
    assert "00:00:02,500 --> 00:00:06,000\nAsk <not> what your country" in srt
    assert "00:00:01.200 --> 00:00:01.700\nfellow\n" in vtt
    assert tsv.splitlines()[:3] == ["start\tend\ttext", "0\t400\tAnd", "400\t800\tso"]
    # The model's words of the corrected segment are in the original version.
    original = transcript(alice, corrected, format="tsv", level="word", version="original")
    assert "2500\t3000\task\n3000\t6000\tnot…\n" in original
    response = alice.client.get(
        f"/api/runs/{corrected}/transcript", {"format": "vtt", "level": "word"}
    )
    assert response["Content-Disposition"] == 'attachment; filename="speech.words.vtt"'
    # json carries the words at either level; txt has no times.
    assert transcript(alice, corrected, format="json", level="word") == transcript(
        alice, corrected, format="json"
    )
    assert transcript(alice, corrected, format="txt", level="word") == transcript(
        alice, corrected, format="txt"
    )


@pytest.mark.django_db
def test_word_level_needs_word_timestamps(alice):
    run_id = finished_run(alice.user, words=False)

    response = alice.client.get(
        f"/api/runs/{run_id}/transcript", {"format": "srt", "level": "word"}
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_word_timestamps"
    for name, value in (("level", "letter"), ("version", "latest")):
        refused = alice.client.get(f"/api/runs/{run_id}/transcript", {name: value})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == name


# --- Who may, and what is refused ---------------------------------------------------------


@pytest.mark.django_db
def test_corrections_need_credentials(run_id):
    anonymous = APIClient()

    patched = anonymous.patch(f"/api/runs/{run_id}/segments/0", {"text": "x"}, format="json")
    deleted = anonymous.delete(f"/api/runs/{run_id}/segments/0")

    assert patched.status_code == deleted.status_code == 401
    assert patched.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
def test_someone_elses_run_is_not_found_and_staff_may_not_correct_it(alice, bob, run_id):
    staff = make_account("staff", staff=True)

    for account, expected in ((bob, 404), (staff, 403)):
        patched = correct(account, run_id, 0, "mine now")
        deleted = account.client.delete(f"/api/runs/{run_id}/segments/0")
        assert patched.status_code == deleted.status_code == expected
        assert set(patched.json()["error"]) == {"code", "message", "field"}
    assert TranscriptRun.objects.get(pk=run_id).segment_edits == {}
    assert staff.client.get(f"/api/runs/{run_id}").status_code == 200  # staff may read it


@pytest.mark.django_db
def test_a_browser_session_needs_its_csrf_token(alice, run_id):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice.user)  # type: ignore[arg-type]

    response = browser.patch(
        f"/api/runs/{run_id}/segments/0", json.dumps({"text": "x"}), content_type="application/json"
    )

    assert response.status_code == 403
    assert TranscriptRun.objects.get(pk=run_id).segment_edits == {}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("bell\x07", "invalid_characters"),
        ("nul\x00", "invalid_characters"),
        ("x" * 1001, "max_length"),
        (42, "invalid"),
        (None, "null"),
    ],
)
def test_unusable_text_is_refused(alice, run_id, text, code):
    response = correct(alice, run_id, 0, text)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == "text"
    assert TranscriptRun.objects.get(pk=run_id).segment_edits == {}


@pytest.mark.django_db
def test_a_field_other_than_text_is_refused(alice, run_id):
    response = alice.client.patch(f"/api/runs/{run_id}/segments/0", {"txt": "typo"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_field"


@pytest.mark.django_db
def test_the_longest_text_allowed_is_kept(alice, run_id):
    assert correct(alice, run_id, 0, "é" * 1000).json()["text"] == "é" * 1000


@pytest.mark.django_db
def test_a_segment_that_does_not_exist_is_not_found(alice, run_id):
    for path in ("segments/3", "segments/99999999999", "segments/-1", "segments/one"):
        response = alice.client.patch(f"/api/runs/{run_id}/{path}", {"text": "x"}, format="json")
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
@pytest.mark.parametrize("status", [RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_only_a_succeeded_transcript_can_be_corrected(alice, status):
    run_id = finished_run(alice.user, status=status)

    for response in (
        correct(alice, run_id, 0, "x"),
        alice.client.delete(f"/api/runs/{run_id}/segments/0"),
    ):
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "transcript_not_ready"


@pytest.mark.django_db
def test_the_schema_documents_the_segment_endpoints_and_the_transcript_versions():
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    segment = schema["paths"]["/api/runs/{run_id}/segments/{segment_id}"]
    assert segment["patch"]["operationId"] == "correctRunSegment"
    assert segment["delete"]["operationId"] == "revertRunSegment"
    for operation in segment.values():
        assert {"200", "401", "403", "404", "409"} <= set(operation["responses"])
    body = segment["patch"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    assert schema["components"]["schemas"][name]["additionalProperties"] is False
    text = schema["components"]["schemas"][name]["properties"]["text"]
    assert text["maxLength"] == services.SEGMENT_TEXT_MAX_LENGTH
    answer = segment["patch"]["responses"]["200"]["content"]["application/json"]["schema"]
    answer_name = answer["$ref"].rsplit("/", 1)[-1]
    assert {"text", "edited", "originalText"} <= set(
        schema["components"]["schemas"][answer_name]["properties"]
    )
    parameters = {
        p["name"]: p["schema"]
        for p in schema["paths"]["/api/runs/{run_id}/transcript"]["get"]["parameters"]
    }
    assert parameters["version"]["enum"] == ["edited", "original"]
    assert parameters["level"]["enum"] == ["segment", "word"]


# --- Two corrections at once, on real processes -------------------------------------------


@pytest.mark.slow
def test_corrections_at_the_same_time_lose_nothing_and_the_last_wins(service):
    service.start_web()
    run_id = finished_run(service.account.user)
    sent: dict[int, list[str]] = {0: [], 2: []}
    barrier = threading.Barrier(8)
    failures: list[str] = []

    def edit(n: int) -> None:
        segment = (0, 2)[n % 2]
        text = f"version {n} of segment {segment}"
        sent[segment].append(text)
        barrier.wait()
        response = service.api(
            "PATCH", f"/api/runs/{run_id}/segments/{segment}", json={"text": text}
        )
        if response.status_code != 200:
            failures.append(response.text)

    threads = [threading.Thread(target=edit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not failures
    run = service.api("GET", f"/api/runs/{run_id}").json()
    # Both segments corrected (neither write lost the other's), each with one whole text sent.
    assert run["segments"][0]["text"] in sent[0]
    assert run["segments"][2]["text"] in sent[2]
    assert run["segments"][1] == SEGMENTS[1]
    # The last write is what every format shows.
    srt = service.api("GET", f"/api/runs/{run_id}/transcript?format=srt").text
    assert run["segments"][0]["text"] in srt and run["segments"][2]["text"] in srt
