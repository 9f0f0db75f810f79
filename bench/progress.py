"""Benchmark: progress people can trust. How often a long run's `update` events come, and how
far its ETA is from the truth as it goes.

Starts a real web server and worker (bench/harness.py: a fresh SQLite data directory, or the
DATABASE_URL / REDIS_URL you give it), uploads a long file of real speech, reads the run's
event stream as a browser would and notes when each event arrives. Once `done` has come, the
real remaining time at each event is known: the script prints every `update` while processing
(its progress, the ETA it said, the real time left and the error), which of them was furthest
off between 20 and 90 %, and the longest gap between two events while processing.

The worst error is over every update, not a sample: the ETA was once right at each 10 % mark
and 80 % off at the one update in between that came as a batched window's segments arrived.

Usage: .venv/bin/python -m bench.progress [--quick | --minutes 10] [--batch N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from bench.harness import Service, fresh_stack, log, repeats_for, speech_file


@dataclass(frozen=True)
class Seen:
    """One event of the run's stream, and when it arrived (time.monotonic())."""

    at: float
    name: str
    data: dict[str, Any]


def stream(url: str, timeout: float) -> Iterator[Seen]:
    """The events of an SSE stream as they arrive, until it ends."""
    name, data = "message", ""
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=timeout)) as client,
        client.stream("GET", url) as answer,
    ):
        for line in answer.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data += line.split(":", 1)[1].strip()
            elif not line and data:
                yield Seen(time.monotonic(), name, json.loads(data))
                name, data = "message", ""


def follow(service: Service, run: dict[str, Any], timeout: float) -> list[Seen]:
    """Every `update` and the `done` of the run, as they arrived."""
    seen = []
    for event in stream(service.events_url(run), timeout):
        if event.name in ("update", "done"):
            seen.append(event)
        if event.name == "done":
            return seen
    raise RuntimeError("the event stream ended without done")


def figures(seen: list[Seen]) -> dict[str, Any]:
    """From the events of one run: every `update` while processing with the ETA's error
    (`timeline`), the worst error from 20 % to 90 % and where it was (past 90 % the ETA is a
    second or two, in whole seconds, and half a second off is many percent of what remains),
    the longest gap between events while processing, and how long the ETA stayed null after
    processing began (the model load, when the worker had not loaded it yet, and the first
    window)."""
    done = seen[-1]
    processing = [e for e in seen if e.name == "update" and e.data["status"] == "processing"]
    began = processing[0].at
    timeline = [error_row(e, done.at, began) for e in processing]
    judged = [
        row for row in timeline if 20 <= row["progress"] <= 90 and row["errorPercent"] is not None
    ]
    worst = max(judged, key=lambda row: abs(row["errorPercent"]), default=None)
    moments = [e.at for e in processing] + [done.at]
    first_eta = next(
        (e.at for e in processing if e.data["estimatedTimeRemaining"] is not None), None
    )
    return {
        "seconds": round(done.at - began, 2),
        "updates": len(processing),
        "longestGapSeconds": round(max(b - a for a, b in itertools.pairwise(moments)), 2),
        "etaNullForSeconds": None if first_eta is None else round(first_eta - began, 2),
        "worstEtaErrorPercent20To90": None if worst is None else abs(worst["errorPercent"]),
        "worstEtaError20To90": worst,
        "timeline": timeline,
    }


def error_row(event: Seen, done_at: float, began: float) -> dict[str, Any]:
    real = done_at - event.at
    eta = event.data["estimatedTimeRemaining"]
    return {
        "progress": event.data["progress"],
        "elapsed": round(event.at - began, 2),
        "eta": eta,
        "real": round(real, 2),
        "errorPercent": None if eta is None or real <= 0 else round(100 * (eta - real) / real, 1),
    }


# Long enough for several windows of the engine (each 120 s of audio, or 30 s per batch item).
MINUTES = 10.0
QUICK_MINUTES = 3.0


def measure(
    *, quick: bool = False, minutes: float | None = None, batch: int | None = None
) -> dict[str, Any]:
    """One long run through a fresh service; its figures. `batch`: WHISPER_BATCH_SIZE for the
    worker (the service's default when None)."""
    audio = speech_file(repeats_for(minutes or (QUICK_MINUTES if quick else MINUTES)))
    env = {} if batch is None else {"WHISPER_BATCH_SIZE": str(batch)}
    with fresh_stack("progress") as stack, Service.start(stack, **env) as service:
        log(f"{audio.minutes:.1f} min of speech, batch {batch if batch is not None else 'default'}")
        run = service.submit(audio.path)
        found = figures(follow(service, run, timeout=3600))
    return {"audioMinutes": round(audio.minutes, 1), "batch": batch, **found}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MINUTES} min of speech")
    parser.add_argument("--minutes", type=float, help=f"length of the speech ({MINUTES})")
    parser.add_argument("--batch", type=int, default=None, help="WHISPER_BATCH_SIZE")
    args = parser.parse_args(argv)
    found = measure(quick=args.quick, minutes=args.minutes, batch=args.batch)
    print(f"{found['audioMinutes']} min of speech, done {found['seconds']} s after it began")
    worst = found["worstEtaError20To90"]
    print(
        f"updates: {found['updates']}, longest gap {found['longestGapSeconds']} s; "
        f"ETA null for the first {found['etaNullForSeconds']} s; "
        f"worst ETA error from 20 to 90 %: {found['worstEtaErrorPercent20To90']} %"
        + ("" if worst is None else f" (at {worst['progress']} %, {worst['elapsed']} s)")
    )
    print(f"{'progress':>9} {'elapsed':>8} {'eta':>6} {'real':>7} {'error %':>8}")
    for row in found["timeline"]:
        print(
            f"{row['progress']:>9} {row['elapsed']:>8} {row['eta']!s:>6} "
            f"{row['real']:>7} {row['errorPercent']!s:>8}" + ("  <- worst" if row == worst else "")
        )
    print(json.dumps(found))


if __name__ == "__main__":
    main()
