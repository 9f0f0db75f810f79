"""Decoding in windows (transcription/pcm.py): what the model hears, a little at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import JFK, long_speech
from transcription import engine
from transcription.pcm import SAMPLE_RATE, AudioTooLong, Windows, pcm_chunks


def test_the_model_hears_exactly_what_faster_whisper_decodes(tmp_path):
    """Bit for bit, so that transcripts did not change when decoding moved here."""
    from faster_whisper import decode_audio

    for path in (JFK, long_speech(tmp_path / "long.wav", repeats=3)):
        ours = np.concatenate(list(pcm_chunks(path, max_ms=10**9)))
        try:
            theirs = decode_audio(str(path))
        except TypeError as exc:  # a PyAV faster-whisper does not support (see pyproject)
            pytest.skip(f"faster_whisper.decode_audio fails here: {exc}")
        assert np.array_equal(ours, theirs)


def test_decoding_stops_past_the_limit_whatever_the_file_says(tmp_path):
    chunks = pcm_chunks(long_speech(tmp_path / "long.wav", repeats=3), max_ms=20_000)

    with pytest.raises(AudioTooLong):
        for _ in chunks:
            pass


def test_windows_hold_at_most_their_size_and_restart_where_they_are_told():
    second = np.ones(SAMPLE_RATE, dtype=np.float32)
    chunks = iter([second * i for i in range(10)])  # ten one-second chunks, valued 0…9
    windows = Windows(chunks, seconds=4)

    first, final = windows.current()
    assert (first.shape[0], final) == (4 * SAMPLE_RATE, False)
    windows.advance(2.5)  # the next window starts inside the third second

    second_window, final = windows.current()
    assert windows.offset_seconds == 2.5
    assert second_window.shape[0] == 4 * SAMPLE_RATE
    assert second_window[0] == 2 and second_window[-1] == 6
    windows.advance(4)

    last, final = windows.current()
    assert final and windows.offset_seconds == 6.5
    assert last.shape[0] == int(3.5 * SAMPLE_RATE) and last[-1] == 9


def test_a_first_window_may_be_shorter_than_the_rest():
    second = np.ones(SAMPLE_RATE, dtype=np.float32)
    windows = Windows(iter([second * i for i in range(10)]), seconds=4, first_seconds=2)

    first, _ = windows.current()
    assert first.shape[0] == 2 * SAMPLE_RATE
    windows.advance(2)
    then, _ = windows.current()
    assert then.shape[0] == 4 * SAMPLE_RATE and then[0] == 2


def test_the_engine_refuses_audio_past_its_limit_as_a_permanent_error(tmp_path):
    path = long_speech(tmp_path / "long.wav", repeats=15)  # 180 s: the first window is 120 s

    with pytest.raises(engine.EngineError) as refused:
        engine.transcribe(
            path, engine.Options(model="tiny.en"), duration_ms=60_000, max_duration_ms=60_000
        )

    assert (refused.value.code, refused.value.permanent) == ("audio_too_long", True)
    assert str(Path(path).parent) not in refused.value.message
