"""Benchmark: peak memory of the worker and of the web process, by length of audio.

The issue "Bounded memory, whatever the length": transcribing a long file must not hold the
whole decoded audio in memory (DESIGN.md, Known behaviour 11). The target is a worker whose peak
RSS for a 2 h file is within 100 MiB of its peak for a 1 min file; the web process never
transcribes long audio, so its peak must stay flat too.

What it does, for each size (default 1, 30 and 120 minutes):

1. builds real speech of that length: tests/data/jfk.flac (11 s) said again and again with a
   second of silence between, 16 kHz mono, encoded as Opus in Ogg (24 kbit/s, ~11 MB an hour)
   frame by frame, so the benchmark never holds the long audio itself; the files are cached in
   bench/.cache/;
2. starts a fresh web process (`python -m lingoloop.server`) and a fresh worker cluster
   (`manage.py worker`, MAX_CONCURRENT_JOBS=1, WHISPER_CPU_THREADS=2) on one temporary
   DATA_DIR (SQLite, or the DATABASE_URL / REDIS_URL of the environment), so that each size's
   peaks are its own;
3. uploads the file with `mode=async` and polls `GET /api/runs/{id}` until the run ends,
   sampling every 0.2 s the RSS of the web process and of every process of the worker's tree
   (the `worker` command, django-q2's sentinel, pusher, monitor and worker processes);
4. reads VmHWM (the kernel's peak RSS) of the web process and of the worker process that ran
   the job (the pid in the job's `locked_by`), checks the transcript is real ("ask not what
   your country" about once per repetition, the last segment ending near the end of the
   audio), then stops both processes.

It prints a table and the verdict: largest minus smallest size's worker peak against the 100 MiB
target (and the same for the web process). It exits 0 whatever the verdict: it is a benchmark,
not a test. Peaks are VmHWM; "tree" is the highest sampled sum of RSS over the worker's
processes (shared pages counted once per process, so it overstates, but it shows growth
anywhere in the cluster). Per-size RSS timelines (CSV) are written to the data directory, which
--keep keeps.

Time: tiny.en runs at roughly 15-20x real time on 2 cores, so 2 h of audio takes 6-10 minutes.

Issue 11's memory figures are `python -m bench memory` (`service_memory` below): the web
process's RSS before it first transcribes (target <= 150 MiB) and after a sync transcription
(<= 300 MiB), and a worker's RSS after 100 jobs against after 10 (within 10 %).

Usage:
  .venv/bin/python bench/memory.py [--sizes 1,30,120] [--batch N] [--keep]
  WHISPER_BATCH_SIZE=8 .venv/bin/python bench/memory.py --sizes 1,30
  .venv/bin/python -m bench memory [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    JFK,
    AudioFile,
    Service,
    Stack,
    fresh_stack,
    log,
    manage,
    process_tree,
    repeats_for,
    speech_file,
    status_mib,
    whisper_alone,
)

PHRASE = "ask not what your country"
SAMPLE_SECONDS = 0.2
TARGET_MIB = 100


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS, the RSS of the web process and of the worker's process tree."""

    def __init__(self, web_pid: int, worker_pid: int) -> None:
        super().__init__(daemon=True)
        self.web_pid = web_pid
        self.worker_pid = worker_pid
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.rows: list[tuple[float, float, float, dict[int, float]]] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            web = status_mib(self.web_pid, "VmRSS") or 0.0
            tree = {pid: status_mib(pid, "VmRSS") or 0.0 for pid in process_tree(self.worker_pid)}
            self.rows.append((time.monotonic() - self.started, web, sum(tree.values()), tree))
            self.stopped.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def peak_web(self) -> float:
        return max(row[1] for row in self.rows)

    def peak_tree(self) -> float:
        return max(row[2] for row in self.rows)

    def peak_of(self, pid: int) -> tuple[float, float]:
        """(peak sampled RSS of `pid`, seconds after the upload when it was reached)."""
        return max(((row[3].get(pid, 0.0), row[0]) for row in self.rows), default=(0.0, 0.0))

    def write_csv(self, path: Path, job_pid: int | None) -> None:
        with path.open("w") as out:
            out.write("seconds,web_rss_mib,worker_tree_rss_mib,job_process_rss_mib\n")
            for seconds, web, tree, by_pid in self.rows:
                job = by_pid.get(job_pid, 0.0) if job_pid else 0.0
                out.write(f"{seconds:.1f},{web:.1f},{tree:.1f},{job:.1f}\n")


# --- The service ----------------------------------------------------------------------------


def job_pid(env: dict[str, str], run_id: str) -> int | None:
    """The pid of the worker process that ran the run's job (`locked_by` = cluster:host:pid)."""
    holder = manage(
        env,
        "shell",
        "-v0",
        "-c",
        "from tasks_admin.models import Job\n"
        f"print(Job.objects.filter(run_id={run_id!r}).values_list('locked_by', flat=True)"
        ".first() or '')",
    )
    pid = holder.rsplit(":", 1)[-1]
    return int(pid) if pid.isdigit() else None


# --- One size -------------------------------------------------------------------------------


@dataclass
class Result:
    minutes: float  # the size asked for
    audio: AudioFile
    status: str
    wall_seconds: float  # upload sent -> run seen finished
    job_seconds: float  # the run's startedAt -> finishedAt
    worker_hwm: float | None  # VmHWM of the job's worker process
    worker_sampled: float  # highest sampled RSS of that process
    peak_at: float  # seconds after the upload when that was reached
    tree_peak: float
    web_hwm: float | None
    web_sampled: float
    phrase_count: int
    last_end: float
    notes: list[str] = field(default_factory=list)

    @property
    def worker_peak(self) -> float:
        return self.worker_hwm if self.worker_hwm is not None else self.worker_sampled

    @property
    def web_peak(self) -> float:
        return self.web_hwm if self.web_hwm is not None else self.web_sampled

    @property
    def transcript_ok(self) -> bool:
        near_end = self.last_end >= self.audio.seconds - 15
        often = self.phrase_count >= self.audio.repeats / 2
        return self.status == "succeeded" and near_end and often


def run_seconds(run: dict[str, Any]) -> float:
    if not run.get("startedAt") or not run.get("finishedAt"):
        return 0.0
    started = datetime.fromisoformat(run["startedAt"])
    return (datetime.fromisoformat(run["finishedAt"]) - started).total_seconds()


def measure_size(stack: Stack, minutes: float) -> Result:
    """One size on a fresh web process and worker, sampled from upload to the run's end."""
    audio = speech_file(repeats_for(minutes))
    log(f"transcribing {audio.path.name} ({audio.path.stat().st_size / 2**20:.1f} MiB)...")
    label = f"{minutes:g}min"
    with Service.start(stack, label) as service:
        sampler = Sampler(service.web.pid, service.worker.pid)
        sampler.start()
        started = time.monotonic()
        try:
            run_id = service.submit(audio.path)["runId"]
            run = service.wait_finished([run_id], timeout=120 + audio.seconds / 2, every=1)[0]
        finally:
            wall = time.monotonic() - started
            sampler.stop()
        pid = job_pid(stack.env, run["runId"])
        worker_hwm = status_mib(pid, "VmHWM") if pid else None
        web_hwm = status_mib(service.web.pid, "VmHWM")
    sampler.write_csv(stack.data_dir / f"rss-{label}.csv", pid)

    worker_sampled, peak_at = sampler.peak_of(pid) if pid else (0.0, 0.0)
    segments = run.get("segments") or []
    text = " ".join(re.findall(r"[a-z']+", (run.get("text") or "").lower()))
    result = Result(
        minutes=minutes,
        audio=audio,
        status=run["status"],
        wall_seconds=wall,
        job_seconds=run_seconds(run),
        worker_hwm=worker_hwm,
        worker_sampled=worker_sampled,
        peak_at=peak_at,
        tree_peak=sampler.peak_tree(),
        web_hwm=web_hwm,
        web_sampled=sampler.peak_web(),
        phrase_count=text.count(PHRASE),
        last_end=float(segments[-1]["end"]) if segments else 0.0,
    )
    if pid is None:
        result.notes.append("job process not identified: worker peak is the tree's sampled peak")
        result.worker_sampled = result.tree_peak
    if run["status"] != "succeeded":
        result.notes.append(f"run ended {run['status']}: {run.get('error')}")
    return result


# --- Issue 11: the web process before and after it transcribes, a worker over many jobs ----


def service_memory(first: int, total: int) -> dict[str, Any]:
    """RSS of the web process before it first transcribes (it has probed `total` async
    uploads by then) and after one sync transcription; RSS of the worker's job process after
    `first` jobs and after `total`; faster-whisper alone's RSS after one pass, for scale."""
    with fresh_stack("memory", MAX_CONCURRENT_JOBS="1") as stack:
        raw = whisper_alone(JFK, 1, stack.env)
        with Service.start(stack) as service:
            web_started = service.web_rss()
            ids = [run["runId"] for run in service.submit_many(JFK, first)]
            service.wait_finished(ids, timeout=60 + 30 * first)
            worker_first = service.job_process_rss()
            ids = [run["runId"] for run in service.submit_many(JFK, total - first)]
            service.wait_finished(ids, timeout=60 + 30 * total)
            worker_total = service.job_process_rss()
            web_before = service.web_rss()
            sync = service.submit(JFK, expect=201, mode="sync")
            web_after = service.web_rss()
            web_peak = status_mib(service.web.pid, "VmHWM")
        return {
            "database": stack.database,
            "events": stack.events,
            "whisper_alone_rss_mib": raw.rss_mib,
            "web_rss_mib": {
                "started": round(web_started, 1),
                "before_transcribing": round(web_before, 1),
                "after_transcribing": round(web_after, 1),
                "peak": round(web_peak or 0.0, 1),
            },
            "sync_status": sync["status"],
            "worker_jobs": [first, total],
            "worker_rss_mib": [round(worker_first, 1), round(worker_total, 1)],
            "worker_growth_percent": round(100 * (worker_total - worker_first) / worker_first, 1),
        }


def measure(*, quick: bool = False) -> dict[str, Any]:
    """The registry's entry (`python -m bench memory`): after 10 and 100 jobs (--quick: 30)."""
    return service_memory(10, 30 if quick else 100)


# --- Report ---------------------------------------------------------------------------------


def print_report(results: list[Result], batch: str) -> None:
    print()
    print(
        f"LingoLoop memory benchmark ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}), "
        f"tiny.en, WHISPER_CPU_THREADS=2, WHISPER_BATCH_SIZE={batch}"
    )
    header = (
        f"{'size':>6} {'audio':>8} {'wall s':>8} {'job s':>7} {'x RT':>6} {'worker MiB':>11} "
        f"{'peak at s':>10} {'tree MiB':>9} {'web MiB':>8} {'phrase':>9} {'last end':>9}  ok"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.minutes:>5g}m {r.audio.seconds / 60:>7.1f}m {r.wall_seconds:>8.1f} "
            f"{r.job_seconds:>7.1f} {r.audio.seconds / r.wall_seconds:>6.1f} "
            f"{r.worker_peak:>11.0f} {r.peak_at:>10.1f} "
            f"{r.tree_peak:>9.0f} {r.web_peak:>8.0f} "
            f"{r.phrase_count:>4}/{r.audio.repeats:<4} {r.last_end:>8.0f}s  "
            f"{'yes' if r.transcript_ok else 'NO'}"
        )
        for note in r.notes:
            print(f"       note: {note}")
    print(
        "wall s = upload to run seen finished; job s = the run's startedAt to finishedAt; "
        "x RT = audio length / wall.\n"
        "worker MiB = VmHWM of the worker process that ran the job; tree MiB = highest sampled "
        "sum of RSS over the worker's process tree; web MiB = VmHWM of the web process."
    )
    if len(results) < 2:
        return
    small, large = results[0], results[-1]
    hours = (large.audio.seconds - small.audio.seconds) / 3600
    for name, grow in (
        ("worker", large.worker_peak - small.worker_peak),
        ("web", large.web_peak - small.web_peak),
    ):
        verdict = "PASS" if grow <= TARGET_MIB else "FAIL"
        print(
            f"{name}: {large.minutes:g} min - {small.minutes:g} min peak: "
            f"{grow:+.0f} MiB ({grow / hours:+.0f} MiB per hour of audio); "
            f"target <= {TARGET_MIB} MiB: {verdict}"
        )
    if not all(r.transcript_ok for r in results):
        print("WARNING: a transcript did not look real (see the ok column): figures are suspect.")


def peaks(sizes: list[float], batch: str, *, keep: bool = False) -> list[Result]:
    """Each size through its own fresh web process and worker, on one data directory."""
    env = {
        "POLL_INTERVAL": "100",
        "MAX_CONCURRENT_JOBS": "1",
        "WHISPER_CPU_THREADS": "2",
        "WHISPER_BATCH_SIZE": batch,
        # The default 1800 s per attempt is too short for 2 h of audio on a busy machine.
        "JOB_TIMEOUT": "7200",
    }
    with fresh_stack("membench", keep=keep, **env) as stack:
        return [measure_size(stack, minutes) for minutes in sorted(sizes)]


def measure_peaks(*, quick: bool = False) -> dict[str, Any]:
    """The registry's entry (`python -m bench peaks`): 1, 30 and 120 min (--quick: 1 and 5)."""
    batch = os.environ.get("WHISPER_BATCH_SIZE", "0")
    results = peaks([1, 5] if quick else [1, 30, 120], batch)
    return {
        "sizes": [
            {
                "minutes": r.minutes,
                "worker_peak_mib": round(r.worker_peak, 1),
                "web_peak_mib": round(r.web_peak, 1),
                "transcript_ok": r.transcript_ok,
            }
            for r in results
        ],
        "worker_growth_mib": round(results[-1].worker_peak - results[0].worker_peak, 1),
        "web_growth_mib": round(results[-1].web_peak - results[0].web_peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,30,120", help="minutes, comma-separated")
    parser.add_argument("--batch", type=int, help="WHISPER_BATCH_SIZE (default: environment, 0)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(","))
    batch = str(args.batch) if args.batch is not None else os.environ.get("WHISPER_BATCH_SIZE", "0")
    print_report(peaks(sizes, batch, keep=args.keep), batch)


if __name__ == "__main__":
    main()
