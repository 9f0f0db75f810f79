"""Batched against sequential decoding: word error rate, word timing and speed, on real speech.

    .venv/bin/python -m bench.wer [--quick]
    .venv/bin/python -m bench wer

The engine (transcription/engine.py) decodes long async jobs in batches; this checks that the
words do not suffer for it. Each file goes through `engine.transcribe` both ways in the same
process, one after the other, with the model loaded once: sequential (a sync run's path) and
batched (an async job's, whatever its length here). The real speech at hand is jfk.flac (the
only recording with a reference transcript in /work/shared/audio/; no installed package ships
one: the .wav files in site-packages are a plucked string and a test tone), alone and said
again and again with a second of silence between (as the tests' `long_speech` builds it,
lossless). The word error rate is jiwer's, after lower-casing and dropping punctuation.

Word timing: the same sentence is said in every repeat, so each word has a known time: where
sequential decoding puts it in jfk.flac alone, plus the repeat's offset. The mean distance of
the words' starts from those times says how far each path's word timestamps drift.

Speed figures are one run on whatever the machine is doing: compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from bench.harness import JFK, RATE, speech_unit

# /work/shared/audio/README.md
JFK_REFERENCE = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
# Repeats of jfk.flac per file: 11 s, 36 s, 2 min and 6 min of speech (--quick: the first three).
REPEATS = (0, 3, 10, 30)
QUICK_REPEATS = (0, 3, 10)
# Repeats of the file whose word times are checked (two windows of the sequential path).
TIMING_REPEATS = 12
# A word this far from its expected time is counted as missing rather than as late.
TIMING_MATCH_SECONDS = 2.0


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(normalized(reference), normalized(hypothesis)))


def speech_wav(folder: Path, repeats: int) -> Path:
    """jfk.flac alone (0), or said `repeats` times with a second of silence after each."""
    if repeats == 0:
        return JFK
    path = folder / f"jfk-x{repeats}.wav"
    unit = speech_unit().reshape(-1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        for _ in range(repeats):
            out.writeframes(unit.astype("<i2").tobytes())
    return path


def audio_ms(path: Path) -> int:
    """Its decoded length, as the service measures it."""
    from transcription.pcm import SAMPLE_RATE, pcm_chunks

    samples = sum(chunk.shape[0] for chunk in pcm_chunks(path, max_ms=4 * 3600 * 1000))
    return samples * 1000 // SAMPLE_RATE


@dataclass
class Pass:
    seconds: float
    text: str
    segments: list[dict[str, Any]]


def transcribe(path: Path, *, batched: bool, words: bool = False) -> Pass:
    """One pass of the engine: batched whatever the file's length (and with word timestamps
    too), or sequential."""
    from django.test import override_settings

    from transcription import engine

    options = engine.Options(
        model=os.environ.get("WHISPER_MODEL", "tiny.en"), word_timestamps=words
    )
    duration_ms = audio_ms(path)
    # The service sends word timestamps down the sequential path (`batch_size_for`); to
    # measure what batched word timing would be, this pass takes the batched path anyway.
    forced = mock.patch.object(
        engine, "batch_size_for", lambda *_, **__: engine.configured_batch_size()
    )
    with (
        override_settings(WHISPER_BATCHED_MIN_DURATION_MS=0),
        forced if batched else contextlib.nullcontext(),
    ):
        started = time.perf_counter()
        result = engine.transcribe(
            path,
            options,
            duration_ms=duration_ms,
            max_duration_ms=4 * 3600 * 1000,
            allow_batched=batched,
        )
    return Pass(time.perf_counter() - started, result.text, result.segments)


def compare_words(path: Path, repeats: int) -> dict[str, Any]:
    """Word error rates and times of both paths on one file."""
    reference = " ".join([JFK_REFERENCE] * max(repeats, 1))
    sequential = transcribe(path, batched=False)
    batched = transcribe(path, batched=True)
    return {
        "file": path.name,
        "seconds_of_audio": round(max(repeats, 1) * speech_unit().shape[1] / RATE, 1),
        "wer_sequential_pct": round(100 * word_error_rate(reference, sequential.text), 2),
        "wer_batched_pct": round(100 * word_error_rate(reference, batched.text), 2),
        "sequential_s": round(sequential.seconds, 2),
        "batched_s": round(batched.seconds, 2),
        "speedup": round(sequential.seconds / batched.seconds, 2),
    }


def word_starts(segments: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [
        (normalized(word["word"]), float(word["start"]))
        for segment in segments
        for word in segment.get("words", [])
        if normalized(word["word"])
    ]


def timing_error(
    expected: list[tuple[str, float]], found: list[tuple[str, float]], repeats: int, unit: float
) -> dict[str, float]:
    """Mean distance (ms) of each expected word's start from the nearest start of the same
    word in `found`, and the share of expected words found within TIMING_MATCH_SECONDS."""
    distances = []
    for k in range(repeats):
        for word, start in expected:
            target = k * unit + start
            near = [abs(t - target) for w, t in found if w == word]
            if near and min(near) <= TIMING_MATCH_SECONDS:
                distances.append(min(near))
    total = len(expected) * repeats
    return {
        "mean_ms": round(1000 * sum(distances) / max(len(distances), 1), 1),
        "found_pct": round(100 * len(distances) / total, 1),
    }


def compare_timing(folder: Path) -> dict[str, Any]:
    """Word timestamps of both paths on a long file, against jfk.flac decoded alone."""
    expected = word_starts(transcribe(JFK, batched=False, words=True).segments)
    path = speech_wav(folder, TIMING_REPEATS)
    unit = speech_unit().shape[1] / RATE
    sequential = transcribe(path, batched=False, words=True)
    batched = transcribe(path, batched=True, words=True)
    seq = timing_error(expected, word_starts(sequential.segments), TIMING_REPEATS, unit)
    bat = timing_error(expected, word_starts(batched.segments), TIMING_REPEATS, unit)
    return {
        "file": path.name,
        "word_start_error_sequential_ms": seq["mean_ms"],
        "word_start_error_batched_ms": bat["mean_ms"],
        "words_placed_sequential_pct": seq["found_pct"],
        "words_placed_batched_pct": bat["found_pct"],
        "sequential_s": round(sequential.seconds, 2),
        "batched_s": round(batched.seconds, 2),
    }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """The figures: per file, both word error rates and the speed-up; the word timing check;
    and the worst WER difference (batched minus sequential, points; the target is <= 1)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lingoloop.settings")
    import django

    django.setup()
    from transcription import engine

    engine.get_model(os.environ.get("WHISPER_MODEL", "tiny.en"))  # loaded once, not timed
    with tempfile.TemporaryDirectory(prefix="bench-wer-") as folder:
        files = [
            compare_words(speech_wav(Path(folder), repeats), repeats)
            for repeats in (QUICK_REPEATS if quick else REPEATS)
        ]
        timing = compare_timing(Path(folder))
    return {
        "batch_size": engine.configured_batch_size(),
        "files": files,
        "word_timing": timing,
        "worst_wer_gap_points": max(f["wer_batched_pct"] - f["wer_sequential_pct"] for f in files),
    }


def print_report(found: dict[str, Any]) -> None:
    print(f"batched (batch {found['batch_size']}) against sequential, tiny.en unless WHISPER_MODEL")
    print(f"{'file':<16} {'audio s':>8} {'WER seq %':>10} {'WER bat %':>10} "
          f"{'seq s':>8} {'bat s':>8} {'speed-up':>9}")  # fmt: skip
    for f in found["files"]:
        print(
            f"{f['file']:<16} {f['seconds_of_audio']:>8} {f['wer_sequential_pct']:>10} "
            f"{f['wer_batched_pct']:>10} {f['sequential_s']:>8} {f['batched_s']:>8} "
            f"{f['speedup']:>8}x"
        )
    print(f"worst WER gap (batched - sequential): {found['worst_wer_gap_points']:.2f} points")
    print("word timing:", json.dumps(found["word_timing"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="files up to 2 min only")
    args = parser.parse_args()
    print_report(measure(quick=args.quick))


if __name__ == "__main__":
    main()
