"""channels=separate: each channel of a recording transcribed on its own and labelled with
its speaker, merged in time order, in every export and in the live events.

The stereo file is built from two different recordings, one per channel: the reference
speech on the left from 0 s, an English sentence spoken by espeak-ng on the right from 4 s,
so that their segments interleave in time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.conftest import JFK, post_audio, words
from transcription import engine
from transcription.models import Audio
from transcription.pcm import SAMPLE_RATE, pcm_chunks

pytestmark = pytest.mark.django_db

SENTENCE = "The weather today is cold and windy, so please bring a warm coat and an umbrella."
RIGHT_STARTS_AT = 4.0


def decoded(path: Path) -> np.ndarray:
    return np.concatenate(list(pcm_chunks(path, max_ms=10**9)))


def write_wav(path: Path, channels: np.ndarray) -> Path:
    """float32 samples, one row per channel, as 16-bit PCM."""
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    pcm = (np.clip(channels, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout=layout)
        frame = av.AudioFrame.from_ndarray(pcm.T.reshape(1, -1).copy(), format="s16", layout=layout)
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("stereo")
    spoken = folder / "sentence.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(spoken), SENTENCE],
        check=True,
        timeout=60,
    )
    left, right = decoded(JFK), decoded(spoken)
    delay = int(RIGHT_STARTS_AT * SAMPLE_RATE)
    length = max(left.shape[0], delay + right.shape[0]) + SAMPLE_RATE
    both = np.zeros((2, length), dtype=np.float32)
    both[0, : left.shape[0]] = left
    both[1, delay : delay + right.shape[0]] = right
    return write_wav(folder / "call.wav", both)


def spoken_by(segments: list[dict[str, Any]], speaker: str) -> list[str]:
    return words(" ".join(s["text"] for s in segments if s["speaker"] == speaker))


@pytest.mark.django_db(transaction=True)  # the sync job runs on a connection of its own
def test_each_channel_comes_back_under_its_own_speaker_in_time_order_in_every_format(alice, stereo):
    response = post_audio(
        alice.client, stereo, mode="sync", channels="separate", speakerNames="Alice, Bob"
    )

    assert response.status_code == 201, response.content
    run = response.json()
    segments = run["segments"]
    assert run["options"]["channels"] == "separate"
    assert run["options"]["speakerNames"] == ["Alice", "Bob"]
    assert {s["speaker"] for s in segments} == {"Alice", "Bob"}
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    speakers_in_order = [s["speaker"] for s in segments]
    assert speakers_in_order != sorted(speakers_in_order)  # interleaved, not one after the other
    assert "ask not what your country can do for you" in " ".join(spoken_by(segments, "Alice"))
    assert "please bring a warm coat" in " ".join(spoken_by(segments, "Bob"))
    assert not set(spoken_by(segments, "Alice")) & {"weather", "umbrella", "windy"}
    assert all(s["start"] >= RIGHT_STARTS_AT - 0.5 for s in segments if s["speaker"] == "Bob")

    def export(fmt: str) -> str:
        answer = alice.client.get(f"/api/runs/{run['runId']}/transcript?format={fmt}")
        assert answer.status_code == 200, fmt
        return answer.content.decode()

    as_json = [s["speaker"] for s in __import__("json").loads(export("json"))["segments"]]
    assert as_json == speakers_in_order
    tsv = export("tsv").splitlines()
    assert tsv[0] == "start\tend\ttext\tspeaker"
    assert [row.split("\t")[3] for row in tsv[1:]] == speakers_in_order
    srt_lines = [line for line in export("srt").splitlines() if ": " in line]
    assert [line.split(": ")[0] for line in srt_lines] == speakers_in_order
    vtt_voices = [
        line[3 : line.index(">")] for line in export("vtt").splitlines() if line.startswith("<v ")
    ]
    assert vtt_voices == speakers_in_order
    txt = export("txt").splitlines()
    assert [line.split(": ")[0] for line in txt] == speakers_in_order


@pytest.mark.django_db(transaction=True)
def test_unnamed_channels_are_speaker_1_and_2(alice, stereo):
    response = post_audio(alice.client, stereo, mode="sync", channels="separate")

    assert response.status_code == 201, response.content
    assert {s["speaker"] for s in response.json()["segments"]} == {"Speaker 1", "Speaker 2"}


def test_a_mono_file_with_channels_separate_is_a_clear_400_and_keeps_nothing(alice, tmp_path):
    mono = write_wav(tmp_path / "mono.wav", decoded(JFK)[np.newaxis, :])  # jfk.flac is stereo
    response = post_audio(alice.client, mono, mode="async", channels="separate")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "not_multichannel" and error["field"] == "channels"
    assert "single channel" in error["message"]
    assert not Audio.objects.exists()


def test_speaker_names_are_checked(alice, stereo):
    without = post_audio(alice.client, stereo, mode="async", speakerNames="Alice, Bob")
    too_many = post_audio(
        alice.client, stereo, mode="async", channels="separate", speakerNames="A, B, C"
    )
    control = post_audio(
        alice.client, stereo, mode="async", channels="separate", speakerNames="A\x07, B"
    )

    assert without.status_code == 400
    assert without.json()["error"]["code"] == "speaker_names_without_channels"
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "too_many_speaker_names"
    assert control.status_code == 400 and control.json()["error"]["field"] == "speakerNames"
    assert not Audio.objects.exists()


@pytest.mark.slow
def test_segments_stream_with_their_speaker_and_progress_covers_every_channel(service, stereo):
    service.start_web()
    service.worker()
    run = service.submit(stereo, channels="separate", speakerNames="Alice,Bob")
    events = service.events(run)

    done = events.wait_for("done", timeout=180)
    events.close()
    updates = [e.data for e in events.events if e.name == "update"]
    streamed = [s for data in updates for s in data.get("newSegments", [])]
    assert {s["speaker"] for s in streamed} == {"Alice", "Bob"}
    progress = [data["progress"] for data in updates if data["status"] == "processing"]
    assert progress == sorted(progress)  # never backwards across the channels
    assert done.data["status"] == "succeeded"


def test_progress_runs_over_every_channel_each_its_share(stereo):
    """Two channels: the first one's segments and windows are reported within 0-50 %, the
    second one's within 50-100 %."""
    reported: list[tuple[str, float]] = []
    windows: list[tuple[float, float]] = []

    result = engine.transcribe_channels(
        stereo,
        engine.Options(model="tiny.en"),
        speakers=["Alice", "Bob"],
        duration_ms=round(decoded(stereo).shape[0] / 16),
        max_duration_ms=60_000,
        on_segment=lambda item, progress: reported.append((item["speaker"], progress)),
        on_window=lambda start, end: windows.append((start, end)),
    )

    assert {speaker for speaker, _ in reported} == {"Alice", "Bob"}
    assert all(p <= 50 for speaker, p in reported if speaker == "Alice")
    assert all(50 < p <= 100 for speaker, p in reported if speaker == "Bob")
    assert windows[0][0] == 0 and windows[-1][0] >= 50
    assert [p for _, p in reported] == sorted(p for _, p in reported)
    assert [s["id"] for s in result.segments] == list(range(len(result.segments)))
