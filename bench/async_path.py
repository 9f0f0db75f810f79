"""Benchmark: the async path against faster-whisper alone: one file's wait, many files' total.

On a fresh data directory (SQLite, or the DATABASE_URL / REDIS_URL you give it), in one run:

1. faster-whisper alone (bench/raw.py, the model loaded once, the service's settings) on each
   file, N times;
2. through a real web process and worker: upload -> `done` event, N times per file, one at a
   time (the SSE client connects right after the upload is accepted); the first job also
   loads the model, so the median is the figure;
3. `throughput`: M uploads of jfk.flac sent at once to one worker, from the first upload to
   the last run's finishedAt, against M passes of faster-whisper alone in a loop;
4. the resident memory of the worker's processes after those jobs.

Usage: .venv/bin/python bench/async_path.py [--runs 10] [--audio tests/data/jfk.flac]
   or: .venv/bin/python -m bench async_path | throughput   (the table, with the targets)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    JFK,
    Service,
    finished_span,
    fresh_stack,
    log,
    process_tree,
    speech_file,
    spread,
    status_mib,
    whisper_alone,
)

# "33 s of speech": jfk.flac three times, a second of silence after each.
LONGER_REPEATS = 3


def upload_to_done(service: Service, audio: Path, runs: int) -> list[float]:
    """Seconds from sending the upload to reading `done` on the run's stream, `runs` times."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        service.follow_until_done(service.submit(audio))
        times.append(time.perf_counter() - started)
    return times


def compare(audio: Path, raw: list[float], through: list[float]) -> dict[str, Any]:
    """One file's figures: medians side by side, their ratio and the difference."""
    raw_median = statistics.median(raw)
    through_median = statistics.median(through)
    return {
        "audio": audio.name,
        "runs": len(through),
        "whisper_alone_s": {"median": round(raw_median, 3), "min": round(min(raw), 3)},
        "upload_to_done_s": {
            "median": round(through_median, 3),
            "min": round(min(through), 3),
            "first": round(through[0], 3),
        },
        "overhead_ratio_median": round(through_median / raw_median, 3),
        "overhead_s_median": round(through_median - raw_median, 3),
    }


def cluster_rss(service: Service) -> dict[str, float]:
    """RSS of each process of the worker's tree (the command, sentinel, pusher, monitor,
    workers), by pid."""
    return {
        str(pid): round(status_mib(pid, "VmRSS") or 0.0, 1)
        for pid in process_tree(service.worker.pid)
    }


def files_one_by_one(files: list[Path], runs: int) -> dict[str, Any]:
    """Figures 1, 2 and 4 of the docstring for each file, on one fresh service."""
    with fresh_stack("async") as stack:
        raw = {audio: whisper_alone(audio, runs, stack.env).seconds for audio in files}
        with Service.start(stack) as service:
            through = {audio: upload_to_done(service, audio, runs) for audio in files}
            rss = cluster_rss(service)
        return {
            "database": stack.database,
            "events": stack.events,
            "files": [compare(audio, raw[audio], through[audio]) for audio in files],
            "cluster_processes_rss_mib_after_jobs": rss,
        }


def per_job(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a job's time goes: startedAt -> finishedAt of each run (the engine, the progress
    writes and events, the result), and the gap from one run's finish to the next one's start
    (the claim, the broker's poll, the handler's set-up): each run's own timestamps."""

    def at(run: dict[str, Any], key: str) -> float:
        return datetime.fromisoformat(run[key]).timestamp()

    ordered = sorted(runs, key=lambda run: at(run, "startedAt"))
    inside = [at(run, "finishedAt") - at(run, "startedAt") for run in ordered]
    gaps = [at(b, "startedAt") - at(a, "finishedAt") for a, b in itertools.pairwise(ordered)]
    return {
        "processing_s": spread(inside),
        "between_jobs_ms": spread([1000 * gap for gap in gaps], digits=1),
    }


def throughput(count: int) -> dict[str, Any]:
    """`count` uploads at once through one worker against `count` passes of faster-whisper
    alone. The worker does one job first, so that neither side counts the model's load."""
    with fresh_stack("throughput", MAX_CONCURRENT_JOBS="1") as stack:
        raw = whisper_alone(JFK, count, stack.env)
        with Service.start(stack) as service:
            service.follow_until_done(service.submit(JFK))
            log(f"throughput: {count} uploads at once")
            started = time.time()
            runs = service.submit_many(JFK, count)
            submitted = time.time() - started
            finished = service.wait_finished([r["runId"] for r in runs], timeout=60 + 30 * count)
        span = finished_span(started, finished)
        return {
            "database": stack.database,
            "events": stack.events,
            "files": count,
            "whisper_alone_s": round(sum(raw.seconds), 2),
            "service_s": round(span, 2),
            "ratio": round(span / sum(raw.seconds), 3),
            "per_file_overhead_ms": round(1000 * (span - sum(raw.seconds)) / count, 1),
            "all_uploads_answered_s": round(submitted, 2),
            "succeeded": sum(run["status"] == "succeeded" for run in finished),
            "whisper_alone_pass_s": spread(raw.seconds),
            **per_job(finished),
        }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """The registry's entry (`python -m bench async_path`): jfk.flac (11 s) and 33 s of
    speech, upload -> done against faster-whisper alone."""
    runs = 3 if quick else 10
    return files_one_by_one([JFK, speech_file(LONGER_REPEATS).path], runs)


def measure_throughput(*, quick: bool = False) -> dict[str, Any]:
    """The registry's entry (`python -m bench throughput`): 100 files (--quick: 20)."""
    return throughput(20 if quick else 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--audio", type=Path, default=JFK)
    args = parser.parse_args()
    found = files_one_by_one([args.audio], args.runs)
    figures = found.pop("files")[0]
    print(json.dumps({**figures, **found}, indent=2))


if __name__ == "__main__":
    main()
