"""Long audio at batched speed (transcription/engine.py): which runs are decoded in batches,
what WHISPER_BATCH_SIZE=auto picks, and that a batched transcript keeps its words, its order
and its progress callbacks."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from tasks_admin.runner import run_job
from tests.conftest import JFK, flac_speech, post_audio, queued_run, words
from transcription import engine

GIB = 1024**3


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """The batch size each window of audio is decoded with (0: sequentially); no model runs."""
    batches: list[int] = []

    def decode(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        batches.append(args[-1])
        return iter(()), SimpleNamespace(language="en", language_probability=1.0)

    monkeypatch.setattr(engine, "_window_segments", decode)
    monkeypatch.setattr(engine, "get_model", lambda name: None)
    return batches


# --- Which runs are batched ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "min_duration_ms", "expected"),
    [
        pytest.param(3, 10_000, [3], id="at-least-the-threshold-long:batched"),  # jfk.flac: 11 s
        pytest.param(3, 12_000, [0], id="shorter-than-the-threshold:sequential"),
        pytest.param(0, 0, [0], id="batch-size-0:sequential"),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_an_async_job_is_decoded_in_batches_when_long_enough_and_allowed(
    alice, settings, decoded, batch_size, min_duration_ms, expected
):
    settings.WHISPER_BATCH_SIZE = batch_size
    settings.WHISPER_BATCHED_MIN_DURATION_MS = min_duration_ms

    run_job(queued_run(alice.client, JFK)["jobs"][0]["id"])

    assert decoded == expected


@pytest.mark.django_db(transaction=True)
def test_an_async_job_with_word_timestamps_stays_sequential(alice, settings, decoded):
    """Batched word times were measured worse (bench/wer.py)."""
    settings.WHISPER_BATCH_SIZE = 3
    settings.WHISPER_BATCHED_MIN_DURATION_MS = 0

    run_job(queued_run(alice.client, JFK, wordTimestamps="true")["jobs"][0]["id"])

    assert decoded == [0]


@pytest.mark.django_db(transaction=True)
def test_a_sync_run_stays_sequential_whatever_its_length(alice, settings, decoded):
    """In the web process: its memory stays that of sequential decoding."""
    settings.WHISPER_BATCH_SIZE = 3
    settings.WHISPER_BATCHED_MIN_DURATION_MS = 0

    response = post_audio(alice.client, JFK, mode="sync")

    assert response.status_code == 201, response.content
    assert decoded == [0]


# --- What "auto" picks -----------------------------------------------------------------------


def auto(*, threads: int, memory: int = 16 * GIB, processes: int = 1, gpu: bool = False) -> int:
    return engine.auto_batch_size(
        threads=threads, available_bytes=memory, processes=processes, gpu=gpu
    )


def test_auto_takes_two_batch_items_per_thread_up_to_16():
    assert auto(threads=2) == 4
    assert auto(threads=1) == 2
    assert auto(threads=32, memory=64 * GIB) == 16
    assert auto(threads=2, gpu=True) == 16  # a GPU fills the batch


def test_auto_spends_at_most_half_the_available_memory_on_batches():
    item = engine.BATCH_ITEM_BYTES
    # Four items fit in half of 8 items' worth; two worker processes share it.
    assert auto(threads=8, memory=8 * item) == 4
    assert auto(threads=8, memory=8 * item, processes=2) == 2
    # Never less than one item: a batched job still runs on a small machine.
    assert auto(threads=8, memory=item, processes=4) == 1


def test_auto_resolves_to_a_sane_size_on_this_machine(settings):
    settings.WHISPER_BATCH_SIZE = "auto"

    assert 1 <= engine.configured_batch_size() <= engine.MAX_AUTO_BATCH


def test_a_number_forces_the_batch_size(settings):
    settings.WHISPER_BATCH_SIZE = 7

    assert engine.configured_batch_size() == 7


# --- The batched path on real speech ---------------------------------------------------------


def recording(batches: list[int]) -> Callable[..., Any]:
    """The engine's own window decoder, noting the batch size it is called with."""
    real = engine._window_segments

    def decode(*args: Any, **kwargs: Any) -> Any:
        batches.append(args[-1])
        return real(*args, **kwargs)

    return decode


@pytest.mark.slow
def test_batched_long_audio_keeps_its_words_in_order_with_progress_in_order(
    tmp_path, settings, monkeypatch
):
    settings.WHISPER_BATCH_SIZE = 4  # a first window of 30 s, then windows of 120 s
    batches: list[int] = []
    monkeypatch.setattr(engine, "_window_segments", recording(batches))
    speech = flac_speech(tmp_path / "talk.flac", repeats=24)  # 288 s
    calls: list[tuple[str, float]] = []

    result = engine.transcribe(
        speech,
        engine.Options(model=settings.WHISPER_MODEL),
        duration_ms=288_000,
        max_duration_ms=600_000,
        on_segment=lambda item, progress: calls.append(("segment", progress)),
        on_window=lambda start, end: calls.append(("window", start)),
        allow_batched=True,
    )

    assert len(batches) >= 3 and set(batches) == {4}
    segments = result.segments
    assert [s["id"] for s in segments] == list(range(len(segments)))
    # In order, none overlapping the one before, none past the audio's end...
    assert all(s["start"] <= s["end"] for s in segments)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(segments))
    assert segments[-1]["end"] <= 288.0
    # ...and no sentence lost: there is speech in every stretch of 8 s (jfk.flac is 11 s, with
    # a second of silence after it), so each has a segment...
    edges = [0.0] + [edge for s in segments for edge in (s["start"], s["end"])] + [288.0]
    holes = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a > 8]
    assert holes == []
    # ...and the words are there (their count varies a little from run to run: a floor).
    assert len(words(result.text)) >= 0.9 * 24 * 23
    # Progress: each window announced before its segments; both only ever move forward.
    assert calls[0] == ("window", 0.0)
    windows = [value for name, value in calls if name == "window"]
    progress = [value for name, value in calls if name == "segment"]
    assert len(windows) == len(batches)
    assert windows == sorted(windows) and progress == sorted(progress)
    # The first window is short, so progress has a real point (and a pace) early.
    assert 0 < windows[1] <= 100 * engine.FIRST_BATCHED_WINDOW_SECONDS / 288
    assert 0 < progress[-1] < 100


# --- Keeping the words: the engine's own chunks, and speech left out decoded again ----------


def test_clips_cover_all_speech_in_chunks_of_at_most_30_s_cut_in_the_widest_pause():
    # Sayings of 5 s with pauses of 0.5 s, and one of 3 s after 22 s of speech.
    speech = [(0.0, 5.0), (5.5, 10.5), (11.0, 16.0), (16.5, 22.0), (25.0, 30.0), (30.5, 35.5)]

    clips = engine.speech_clips(speech, duration=36.0)

    assert clips == [(0.0, 23.0), (24.0, 36.0)]  # 1 s of the pause kept either side


def test_clips_cut_long_speech_at_30_s_and_never_overlap():
    speech = [(float(k), k + 0.8) for k in range(100)]  # a word a second for 100 s

    clips = engine.speech_clips(speech, duration=100.0)

    assert all(0 < end - start <= engine.CLIP_SECONDS for start, end in clips)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(clips))
    assert all(any(c[0] <= a and b <= c[1] for c in clips) for a, b in speech)
    assert clips[-1][1] == 100.0  # not past the audio's end


def test_speech_no_segment_covers_is_found_inside_and_after_the_segments():
    speech = [(0.0, 10.0), (12.0, 20.0), (22.0, 29.0)]
    segments = [(0.0, 4.0), (4.1, 10.2), (17.0, 20.0)]  # 12-17 s and 22-29 s left out

    gaps = engine.speech_gaps(segments, speech, end=30.0)

    assert gaps == [(10.2, 17.0), (20.0, 30.0)]


def test_pauses_and_a_word_or_so_left_between_segments_are_not_gaps():
    speech = [(0.0, 10.0), (12.0, 20.0)]
    # A pause (10-12 s) without segment, 1 s of speech (14-15 s) and 0.5 s at the end.
    segments = [(0.0, 9.9), (12.2, 14.0), (15.0, 19.5)]

    assert engine.speech_gaps(segments, speech, end=25.0) == []


def test_a_sentence_the_batch_drops_is_decoded_again(tmp_path, settings, monkeypatch):
    """As a batch item that stops early: its chunk's segments lost, the words come back."""
    from faster_whisper import BatchedInferencePipeline

    real = BatchedInferencePipeline.transcribe

    def dropping(self: Any, *args: Any, **kwargs: Any) -> Any:
        segments, info = real(self, *args, **kwargs)
        return (s for s in segments if not 12 <= s.start < 24), info  # the second saying

    monkeypatch.setattr(BatchedInferencePipeline, "transcribe", dropping)
    settings.WHISPER_BATCH_SIZE = 2
    settings.WHISPER_BATCHED_MIN_DURATION_MS = 0
    speech = flac_speech(tmp_path / "talk.flac", repeats=3)  # 36 s

    result = engine.transcribe(
        speech,
        engine.Options(model=settings.WHISPER_MODEL),
        duration_ms=36_000,
        max_duration_ms=60_000,
        allow_batched=True,
    )

    assert len(words(result.text)) >= 0.9 * 3 * 23
    assert [s["start"] for s in result.segments] == sorted(s["start"] for s in result.segments)


def test_a_gap_decoded_again_has_its_words_in_the_windows_time(tmp_path, settings):
    from faster_whisper import decode_audio

    audio = decode_audio(str(flac_speech(tmp_path / "talk.flac", repeats=3)))  # 36 s
    kwargs = {
        "language": "en",
        "task": "transcribe",
        "beam_size": 5,
        "word_timestamps": True,
        "vad_filter": False,
        "initial_prompt": None,
    }

    segments = engine._decode_gap(
        engine.get_model(settings.WHISPER_MODEL), audio, (12.0, 24.0), kwargs, ""
    )

    found = [word for segment in segments for word in segment.words]
    assert found and all(12.0 <= word.start <= word.end <= 24.5 for word in found)
    assert all(12.0 <= segment.start <= segment.end <= 24.0 for segment in segments)


def test_a_gap_in_the_tail_the_next_window_redoes_is_not_decoded_twice(tmp_path, monkeypatch):
    """Speech left undecoded where the next window starts again is left to that window: its
    segments would all be thrown away (a first window's tail had such a gap in most pieces
    of a split run, up to 3.6 s of sequential decoding each)."""
    from faster_whisper import BatchedInferencePipeline, decode_audio

    audio = decode_audio(str(flac_speech(tmp_path / "talk.flac", repeats=3)))  # 36 s
    speech = engine.speech_spans(audio)
    # Two clips: the first two sayings, and the third, which its batch item drops. (Cut at a
    # fixed 24 s, the third was kept on some machines: its segment may start where its clip
    # does, at 23.49 s, half a second before its speech.)
    *_, (last_clip, _) = engine.speech_clips(speech, audio.shape[0] / engine.SAMPLE_RATE)
    real = BatchedInferencePipeline.transcribe

    def dropping(self: Any, *args: Any, **kwargs: Any) -> Any:
        segments, info = real(self, *args, **kwargs)
        return (s for s in segments if s.start < last_clip), info

    monkeypatch.setattr(BatchedInferencePipeline, "transcribe", dropping)
    decoded_again: list[tuple[float, float]] = []
    real_gap = engine._decode_gap

    def gap(model: Any, audio: Any, span: tuple[float, float], *args: Any) -> Any:
        decoded_again.append(span)
        return real_gap(model, audio, span, *args)

    monkeypatch.setattr(engine, "_decode_gap", gap)
    model = engine.get_model("tiny.en")
    kwargs = {"language": "en", "task": "transcribe", "beam_size": 5, "word_timestamps": False,
              "vad_filter": False, "initial_prompt": None}  # fmt: skip

    def gaps_decoded(kept_until: float | None) -> list[tuple[float, float]]:
        decoded_again.clear()
        engine._batched_window(model, audio, kwargs, 2, speech, kept_until=kept_until)
        return list(decoded_again)

    tail = gaps_decoded(None)  # the last window: its tail is decoded again
    assert len(tail) == 1 and tail[0][1] == pytest.approx(36, abs=0.1)
    start = tail[0][0]
    assert gaps_decoded(start + 0.5) == tail  # it starts within what the window keeps
    assert gaps_decoded(start - 0.5) == []  # it starts where the next window redoes everything
