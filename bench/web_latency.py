"""Benchmark: does the web wait for the engine? (issue 11: p99 ≤ 50 ms)

Starts a web process and a worker cluster (one worker process, as by default) on a fresh stack,
submits a long file (jfk.flac x150, ~30 min of speech: batched, it still processes for about
a minute, longer than the timing takes) and waits until it processes, opens 20
SSE watchers on it, queues 10 more runs behind it, then times `GET /api/runs` and
`GET /api/runs/{id}/progress` (of a queued run) one request at a time, as one client would.
The same requests are first timed on the idle service ("alone") for the ratio. Everything is
cancelled at the end so that the run stays short.

Usage: .venv/bin/python -m bench.web_latency [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench.harness import JFK, Service, fresh_stack, log, speech_file, spread, wait_for

WATCHERS = 20
QUEUED = 10
# Long enough that the run still processes when the timing ends (`long_run_still_processing`):
# batched decoding does 6 min of speech in about 11 s on the 2-core reference machine.
LONG_REPEATS = 150


def timed_gets(service: Service, paths: list[str], count: int) -> dict[str, Any]:
    """p50/p99 (ms) of each path, requested `count` times in turn."""
    timings: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(count):
        for path in paths:
            started = time.perf_counter()
            answer = service.client.get(path)
            timings[path].append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    return {path: spread(values, digits=1) for path, values in timings.items()}


@contextlib.contextmanager
def watchers(service: Service, run: dict[str, Any], count: int) -> Iterator[list[int]]:
    """`count` SSE clients reading the run's stream, as browsers; how many lines each read."""
    stop = threading.Event()
    lines = [0] * count

    def watch(index: int) -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", service.events_url(run)) as stream,
        ):
            for _ in stream.iter_lines():
                lines[index] += 1
                if stop.is_set():
                    return

    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    wait_for(lambda: all(lines), 60, "every watcher to get its first event")
    try:
        yield lines
    finally:
        stop.set()


def measure(*, quick: bool = False, requests: int | None = None) -> dict[str, Any]:
    count = requests or (50 if quick else 300)
    long_audio = speech_file(LONG_REPEATS)
    with fresh_stack("web-latency") as stack, Service.start(stack) as service:
        warm = service.submit(JFK)  # loads the model in the worker, so the long run computes
        service.wait_finished([warm["runId"]], 300)
        alone = timed_gets(service, ["/api/runs", f"/api/runs/{warm['runId']}/progress"], count)

        long_run = service.submit(long_audio.path)
        wait_for(
            lambda: service.run(long_run["runId"])["status"] == "processing", 60, "the long run"
        )
        queued = [service.submit(JFK) for _ in range(QUEUED)]
        with watchers(service, long_run, WATCHERS):
            log(f"timing {count} requests with {WATCHERS} watchers and {QUEUED} queued runs")
            busy = timed_gets(
                service, ["/api/runs", f"/api/runs/{queued[-1]['runId']}/progress"], count
            )
            still_processing = service.run(long_run["runId"])["status"] == "processing"
        for run in [long_run, *queued]:
            service.client.post(f"/api/runs/{run['runId']}/cancel")
        runs_path, progress_path = list(busy)
        return {
            "database": stack.database,
            "requests": count,
            "long_run_still_processing": still_processing,
            "runs_alone_ms": alone["/api/runs"],
            "runs_busy_ms": busy[runs_path],
            "progress_alone_ms": alone[f"/api/runs/{warm['runId']}/progress"],
            "progress_busy_ms": busy[progress_path],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(quick=args.quick, requests=args.requests), indent=2))


if __name__ == "__main__":
    main()
