"""One entry point for the benchmarks: every figure of issue 11 beside faster-whisper alone.

    .venv/bin/python -m bench all [--quick] [--json FILE]
    .venv/bin/python -m bench throughput memory
    .venv/bin/python -m bench --list

Each benchmark is a module of bench/ with a function `measure(*, quick: bool) -> dict` that
starts the real processes it needs on a fresh DATA_DIR (SQLite; PostgreSQL and Redis when
DATABASE_URL / REDIS_URL are set), measures the service and faster-whisper alone in the same
run, and returns its figures. An entry of REGISTRY below is the small adapter around one such
function: its name, where the function is, and how its figures become rows of the table
(figure | service | faster-whisper alone | ratio | target | met). A module not written yet is
listed and skipped; one whose figures have no adapter is shown with the generic rendering.

Timings are noisy on a shared machine: compare the ratios of one run, on a quiet machine.
Exits 1 when a benchmark failed to run, 0 otherwise (a missed target is a figure, not a crash).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """One figure. `limit` bounds the ratio (`on="ratio"`) or the service's value
    (`on="service"`); without it the row has no target."""

    figure: str
    service: float | None
    raw: float | None = None
    unit: str = "s"
    limit: float | None = None
    on: str = "ratio"

    @property
    def ratio(self) -> float | None:
        if self.service is None or not self.raw:
            return None
        return self.service / self.raw

    @property
    def met(self) -> bool | None:
        value = self.ratio if self.on == "ratio" else self.service
        if self.limit is None or value is None:
            return None
        return value <= self.limit

    @property
    def target(self) -> str:
        if self.limit is None:
            return ""
        return f"≤ {self.limit:g}x" if self.on == "ratio" else f"≤ {self.limit:g} {self.unit}"


Render = Callable[[dict[str, Any]], list[Row]]


@dataclass(frozen=True)
class Entry:
    name: str
    module: str  # under bench/
    function: str
    render: Render
    about: str
    in_all: bool = True

    @property
    def missing(self) -> str | None:
        """Why this benchmark cannot run yet (its module, or its function, is not written)."""
        if importlib.util.find_spec(f"bench.{self.module}") is None:
            return f"bench/{self.module}.py is not there yet"
        if not hasattr(importlib.import_module(f"bench.{self.module}"), self.function):
            return f"bench/{self.module}.py has no {self.function}(*, quick) yet"
        return None

    def measure(self, quick: bool) -> dict[str, Any]:
        module = importlib.import_module(f"bench.{self.module}")
        return dict(getattr(module, self.function)(quick=quick))


# --- Adapters: a module's figures as rows ----------------------------------------------------


def numbers(found: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every number in `found`, nested keys joined by dots."""
    for key, value in found.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            yield name, float(value)
        elif isinstance(value, dict):
            yield from numbers(value, f"{name}.")


def generic_rows(found: dict[str, Any]) -> list[Row]:
    """For a module without an adapter yet: each number a row of its own."""
    return [Row(figure=name, service=value, unit="") for name, value in numbers(found)]


def bound(figure: str, value: float | None, unit: str, limit: float | None = None) -> Row:
    """A figure of the service alone (no faster-whisper counterpart), with an upper bound."""
    return Row(figure, value, None, unit, limit, "service")


def async_path_rows(found: dict[str, Any]) -> list[Row]:
    return [
        Row(
            figure=f"{f['audio']}: upload → done (median of {f['runs']})",
            service=f["upload_to_done_s"]["median"],
            raw=f["whisper_alone_s"]["median"],
        )
        for f in found["files"]
    ]


def throughput_rows(found: dict[str, Any]) -> list[Row]:
    return [
        Row(
            figure=f"{found['files']} x jfk.flac at once, one worker: all done",
            service=found["service_s"],
            raw=found["whisper_alone_s"],
            limit=1.15,
        )
    ]


def memory_rows(found: dict[str, Any]) -> list[Row]:
    web = found["web_rss_mib"]
    raw = found["whisper_alone_rss_mib"]
    first, total = found["worker_jobs"]
    before, after = found["worker_rss_mib"]
    growth = found["worker_growth_percent"]
    web_before, web_after = web["before_transcribing"], web["after_transcribing"]
    return [
        bound("web RSS before it first transcribes", web_before, "MiB", 150),
        Row("web RSS after a sync transcription", web_after, raw, "MiB", 300, "service"),
        Row(f"worker RSS after {first} jobs", before, raw, "MiB"),
        Row(f"worker RSS after {total} jobs", after, raw, "MiB"),
        bound(f"worker RSS growth, {first} -> {total} jobs", growth, "%", 10),
    ]


def pickup_rows(found: dict[str, Any]) -> list[Row]:
    limit = 50 if found["database"].startswith("postgresql") else 150
    spread = found["queued_to_processing_ms"]
    return [
        bound("queued → processing, idle worker: median", spread["median"], "ms", limit),
        bound("queued → processing, idle worker: p99", spread["p99"], "ms"),
    ]


def web_latency_rows(found: dict[str, Any]) -> list[Row]:
    rows = []
    for key, path in (("runs", "/api/runs"), ("progress", "/api/runs/{id}/progress")):
        rows.append(bound(f"GET {path} alone: p99", found[f"{key}_alone_ms"]["p99"], "ms"))
        busy = found[f"{key}_busy_ms"]["p99"]
        rows.append(bound(f"GET {path}, long job, 20 watchers, 10 queued: p99", busy, "ms", 50))
    return rows


def progress_rows(found: dict[str, Any]) -> list[Row]:
    about = f"{found['audioMinutes']:g} min of speech"
    return [
        bound(f"{about}: longest gap between updates", found["longestGapSeconds"], "s", 2),
        bound(f"{about}: worst ETA error, 20-90 %", found["worstEtaErrorPercent20To90"], "%", 25),
        bound(f"{about}: ETA null for", found["etaNullForSeconds"], "s"),
    ]


def wer_rows(found: dict[str, Any]) -> list[Row]:
    """Batched against sequential decoding: the table's second column is the batched path,
    its third the sequential one (both through the engine)."""
    rows = [
        Row(
            f"{f['seconds_of_audio']:g} s: batched (vs sequential)",
            f["batched_s"],
            f["sequential_s"],
        )
        for f in found["files"]
    ]
    gap = found["worst_wer_gap_points"]
    return [*rows, bound("worst WER gap, batched - sequential", gap, "points", 1)]


def chunked_rows(found: dict[str, Any]) -> list[Row]:
    """One cluster against two on a split run: here the third column is one cluster (not
    faster-whisper alone), so the ratio is the speed-up's inverse; then the split against
    the unsplit run on one cluster (the split's cost), and their word error rates."""
    minutes = f"{found['audio_minutes']:g} min in {found['pieces']} pieces"
    return [
        Row(
            f"{minutes}: two 1-thread clusters (vs one)",
            found["two_clusters_s"],
            found["one_cluster_s"],
            limit=0.6,
        ),
        Row(
            f"{minutes}: one 1-thread cluster, split (vs unsplit)",
            found["one_cluster_s"],
            found["unsplit_one_cluster_s"],
        ),
        bound("split WER - unsplit WER", found["wer_gap_points"], "points", 1),
        Row(
            "this machine: 2 pieces on two 1-thread faster-whisper processes (vs on one)",
            found["machine_ceiling"]["two_processes_s"],
            2 * found["machine_ceiling"]["one_process_s"],
        ),
    ]


def peaks_rows(found: dict[str, Any]) -> list[Row]:
    sizes = found["sizes"]
    span = f"{sizes[0]['minutes']:g} → {sizes[-1]['minutes']:g} min"
    return [
        bound(f"worker peak growth, {span}", found["worker_growth_mib"], "MiB", 100),
        bound(f"web peak growth, {span}", found["web_growth_mib"], "MiB", 100),
    ]


def soak_rows(found: dict[str, Any]) -> list[Row]:
    return [
        bound("soak: invariants breached", len(found["problems"]), "", 0),
        Row("soak: submit → all finished", found["submit_to_all_finished_s"]),
    ]


REGISTRY: list[Entry] = [
    Entry("async_path", "async_path", "measure", async_path_rows,
          "11 s and 33 s of speech, upload → done"),
    Entry("throughput", "async_path", "measure_throughput", throughput_rows,
          "100 small files at once through one worker (--quick: 20)"),
    Entry("memory", "memory", "measure", memory_rows,
          "web RSS before/after it transcribes; worker RSS after 10 and 100 jobs"),
    Entry("wer", "wer", "measure", wer_rows,
          "batched against sequential: word error rate and speed"),
    Entry("progress", "progress", "measure", progress_rows,
          "ETA error over time, gaps between updates"),
    Entry("pickup", "pickup", "measure", pickup_rows,
          "queued → processing on an idle worker"),
    Entry("web_latency", "web_latency", "measure", web_latency_rows,
          "GET /api/runs and /progress while a long job runs"),
    Entry("sse_fanout", "sse_fanout", "measure", generic_rows,
          "1,000 watchers of one run: connect time, delivery p99"),
    Entry("chunked", "chunked", "measure", chunked_rows,
          "20 min split across one, then two 1-thread worker clusters"),
    Entry("peaks", "memory", "measure_peaks", peaks_rows,
          "peak memory for 1, 30 and 120 min of audio", in_all=False),
    Entry("soak", "soak", "measure", soak_rows,
          "kill workers while jobs run; check every invariant", in_all=False),
]  # fmt: skip
BY_NAME = {entry.name: entry for entry in REGISTRY}


# --- The run ---------------------------------------------------------------------------------

# What sets the speed; shown with every table.
SPEED_SETTINGS = (
    "WHISPER_MODEL",
    "WHISPER_DEVICE",
    "WHISPER_COMPUTE_TYPE",
    "WHISPER_CPU_THREADS",
    "WHISPER_BATCH_SIZE",
    "MAX_CONCURRENT_JOBS",
    "POLL_INTERVAL",
    "SQLITE_POLL_INTERVAL",
    "EVENTS_DB_POLL_MS",
    "WORKER_NICE",
    "TRANSCRIBE_SYNC_MAX_DURATION_MS",
    "TRANSCRIBE_SYNC_CONCURRENCY",
)


def effective_settings() -> dict[str, Any]:
    """The speed settings as the service reads them (defaults included), from a process
    with the same environment."""
    code = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{k: getattr(settings, k, None) for k in {list(SPEED_SETTINGS)!r}}}))"
    )
    with tempfile.TemporaryDirectory(prefix="lingoloop-bench-settings-") as data_dir:
        env = {**os.environ, "DATA_DIR": data_dir, "DJANGO_SETTINGS_MODULE": "lingoloop.settings"}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(out.stdout))


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "database": "postgresql" if os.environ.get("DATABASE_URL") else "sqlite",
        "events": "redis" if os.environ.get("REDIS_URL") else "database",
    }


@dataclass
class Outcome:
    entry: Entry
    figures: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0

    def rows(self) -> list[Row]:
        if self.figures is None:
            return []
        try:
            return self.entry.render(self.figures)
        except (KeyError, TypeError, IndexError, ValueError):  # the module's dict changed
            return generic_rows(self.figures)


def run(entry: Entry, quick: bool) -> Outcome:
    """One benchmark; a failure is recorded, not raised, so that the others still run."""
    if entry.missing:
        return Outcome(entry, error=entry.missing)
    print(f"== {entry.name}: {entry.about}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        figures = entry.measure(quick)
    except Exception as exc:
        traceback.print_exc()
        return Outcome(entry, error=f"{type(exc).__name__}: {exc}", seconds=_since(started))
    return Outcome(entry, figures=figures, seconds=_since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


def cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def table(outcomes: list[Outcome]) -> str:
    """The figures as one Markdown table (pasted as is into the README)."""
    lines = [
        "| figure | service | faster-whisper alone | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        if outcome.error:
            lines.append(f"| {outcome.entry.name}: not measured ({outcome.error}) | | | | | |")
        for row in outcome.rows():
            met = {True: "yes", False: "**no**", None: ""}[row.met]
            lines.append(
                f"| {row.figure} | {cell(row.service, row.unit)} | {cell(row.raw, row.unit)} "
                f"| {cell(row.ratio, 'x')} | {row.target} | {met} |"
            )
    return "\n".join(lines)


def report(outcomes: list[Outcome], quick: bool) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "machine": machine(),
        "settings": effective_settings(),
        "benchmarks": {
            o.entry.name: {
                "figures": o.figures,
                "error": o.error,
                "seconds": o.seconds,
                "rows": [{**asdict(r), "ratio": r.ratio, "target": r.target, "met": r.met}
                         for r in o.rows()],
            }
            for o in outcomes
        },
    }  # fmt: skip


def parser() -> argparse.ArgumentParser:
    names = "\n".join(
        f"  {e.name:<12} {e.about}{'' if e.in_all else ' (not in all)'}" for e in REGISTRY
    )
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        epilog=f"benchmarks:\n{names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="'all' or benchmark names")
    p.add_argument("--quick", action="store_true", help="short runs (for trying it out)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every figure here")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return p


def chosen(names: list[str], p: argparse.ArgumentParser) -> list[Entry]:
    if names == ["all"]:
        return [entry for entry in REGISTRY if entry.in_all]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown or not names:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}" if unknown else "name a benchmark")
    return [BY_NAME[name] for name in names]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.list:
        print(p.epilog)
        return 0
    entries = chosen(args.names, p)
    outcomes = [run(entry, args.quick) for entry in entries]
    found = report(outcomes, args.quick)
    print(f"\nLingoLoop benchmarks, {found['when']}{' (quick)' if args.quick else ''}")
    print(f"machine: {json.dumps(found['machine'])}")
    print(f"settings: {json.dumps(found['settings'])}\n")
    print(table(outcomes))
    if args.json:
        args.json.write_text(json.dumps(found, indent=2))
    return 1 if any(o.error for o in outcomes if not o.entry.missing) else 0


if __name__ == "__main__":
    sys.exit(main())
