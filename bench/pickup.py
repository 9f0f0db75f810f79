"""Benchmark: queued → processing on an idle worker (issue 11: ≤ 50 ms median on PostgreSQL,
≤ 150 ms on SQLite).

Starts a web process and a worker cluster on a fresh stack (SQLite; the database in
DATABASE_URL when set), then submits jfk.flac one run at a time, each once the worker is idle
again, after a random pause (so that submissions fall anywhere in the worker's poll cycle).
The figure is the service's own record of each run: `startedAt - createdAt`, i.e. from the
row's creation in the upload's transaction (before its commit) to the worker marking it
processing. Each run is cancelled as soon as it processes: only its pickup matters here.
The first run is a warm-up (the worker process's first job) and is not counted.

Usage: .venv/bin/python -m bench.pickup [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import datetime
from typing import Any

from bench.harness import JFK, Service, fresh_stack, log, spread, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


def seconds_to_processing(run: dict[str, Any]) -> float:
    created = datetime.fromisoformat(run["createdAt"])
    started = datetime.fromisoformat(run["startedAt"])
    return (started - created).total_seconds()


def one_pickup(service: Service) -> float:
    """Submit once to the idle worker; the run's queued → processing time, in ms."""
    run_id = service.submit(JFK)["runId"]
    wait_for(lambda: service.run(run_id)["status"] != "queued", 60, f"run {run_id} to start")
    service.client.post(f"/api/runs/{run_id}/cancel")
    wait_for(lambda: service.run(run_id)["status"] in TERMINAL, 120, f"run {run_id} to end")
    return seconds_to_processing(service.run(run_id)) * 1000


def measure(*, quick: bool = False, runs: int | None = None) -> dict[str, Any]:
    """Median and p99 (ms) of queued → processing over `runs` submissions to an idle worker."""
    count = runs or (8 if quick else 30)
    with fresh_stack("pickup") as stack, Service.start(stack) as service:
        one_pickup(service)  # warm-up: not counted
        samples = []
        for index in range(count):
            time.sleep(random.uniform(0.05, 0.6))
            samples.append(one_pickup(service))
            log(f"pickup {index + 1}/{count}: {samples[-1]:.1f} ms")
        return {
            "database": stack.database,
            "runs": count,
            "queued_to_processing_ms": spread(samples, digits=1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(quick=args.quick, runs=args.runs), indent=2))


if __name__ == "__main__":
    main()
