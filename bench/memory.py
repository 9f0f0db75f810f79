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

Usage:
  .venv/bin/python bench/memory.py [--sizes 1,30,120] [--batch N] [--keep]
  WHISPER_BATCH_SIZE=8 .venv/bin/python bench/memory.py --sizes 1,30
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
JFK = ROOT / "tests" / "data" / "jfk.flac"
CACHE = ROOT / "bench" / ".cache"
PHRASE = "ask not what your country"
RATE = 16000
OPUS_BIT_RATE = 24000
SAMPLE_SECONDS = 0.2
TARGET_MIB = 100
TERMINAL = ("succeeded", "failed", "cancelled")


# --- Audio ---------------------------------------------------------------------------------


def speech_unit() -> Any:
    """jfk.flac as 16 kHz mono s16 samples, followed by one second of silence: shape (1, n)."""
    import av
    import numpy as np

    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    chunks: list[Any] = []
    with av.open(str(JFK)) as source:
        for frame in source.decode(audio=0):
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    chunks.append(np.zeros((1, RATE), dtype=np.int16))
    return np.concatenate(chunks, axis=1)


@dataclass
class AudioFile:
    minutes: float
    path: Path
    repeats: int
    seconds: float


def build_audio(minutes: float) -> AudioFile:
    """The speech unit repeated to last `minutes`, as Ogg Opus, encoded one unit at a time."""
    import av

    unit = speech_unit()
    unit_seconds = unit.shape[1] / RATE
    repeats = math.ceil(minutes * 60 / unit_seconds)
    path = CACHE / f"jfk-{minutes:g}min-opus{OPUS_BIT_RATE // 1000}k.ogg"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with av.open(str(partial), "w", format="ogg") as out:
            stream = out.add_stream("libopus", rate=RATE, layout="mono")
            stream.bit_rate = OPUS_BIT_RATE
            for i in range(repeats):
                frame = av.AudioFrame.from_ndarray(unit, format="s16", layout="mono")
                frame.sample_rate = RATE
                frame.pts = i * unit.shape[1]
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        partial.rename(path)
    return AudioFile(minutes, path, repeats, repeats * unit_seconds)


# --- Memory, from /proc ---------------------------------------------------------------------


def status_mib(pid: int, key: str) -> float | None:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status in MiB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc/<pid>/task/*/children."""
    found = [pid]
    for parent in found:  # grows while we walk it
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found.extend(int(child) for child in children.read_text().split())
    return found


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> str:
    """`manage.py <args>`; its last line of output."""
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.splitlines()[-1] if out else ""


def create_token(env: dict[str, str]) -> str:
    username = f"bench-memory-{uuid.uuid4().hex[:8]}"
    return manage(
        env,
        "shell",
        "-v0",
        "-c",
        "from django.contrib.auth.models import User\n"
        "from rest_framework.authtoken.models import Token\n"
        f"u = User.objects.create_user({username!r}, password='bench-pass-1')\n"
        "print(Token.objects.create(user=u).key)",
    )


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


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Service:
    """One web process and one worker cluster, with their logs in the data directory."""

    def __init__(self, env: dict[str, str], logs: Path, label: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.web = self._start(
            env,
            logs / f"web-{label}.log",
            ["-m", "lingoloop.server", "-b", "127.0.0.1", "-p", str(self.port)],
        )
        worker_log = logs / f"worker-{label}.log"
        self.worker = self._start(env, worker_log, ["manage.py", "worker"])
        wait_for(self._healthy, 60, "the web server to answer")
        wait_for(lambda: "running." in worker_log.read_text(errors="replace"), 60, "the worker")

    @staticmethod
    def _start(env: dict[str, str], log: Path, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _healthy(self) -> bool:
        if self.web.poll() is not None:
            raise RuntimeError("the web process exited; see its log in the data directory")
        try:
            return httpx.get(f"{self.base}/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to whatever is left of each process group."""
        for process in (self.worker, self.web):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.worker, self.web):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def transcribe(base: str, token: str, audio: AudioFile) -> dict[str, Any]:
    """Upload with mode=async and poll the run until it ends (deadline: half real time)."""
    headers = {"Authorization": f"Bearer {token}"}
    with audio.path.open("rb") as handle:
        answer = httpx.post(
            f"{base}/api/transcribe",
            headers=headers,
            files={"file": (audio.path.name, handle, "audio/ogg")},
            data={"mode": "async"},
            timeout=300,
        )
    if answer.status_code != 202:
        raise RuntimeError(f"upload answered {answer.status_code}: {answer.text[:300]}")
    url = f"{base}/api/runs/{answer.json()['runId']}"
    deadline = time.monotonic() + 120 + audio.seconds / 2
    while True:
        run: dict[str, Any] = httpx.get(url, headers=headers, timeout=30).json()
        if run["status"] in TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run['runId']} still {run['status']} at the deadline")
        time.sleep(1)


# --- One size -------------------------------------------------------------------------------


@dataclass
class Result:
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


def measure(audio: AudioFile, env: dict[str, str], token: str, data_dir: Path) -> Result:
    label = f"{audio.minutes:g}min"
    service = Service(env, data_dir / "logs", label)
    try:
        sampler = Sampler(service.web.pid, service.worker.pid)
        sampler.start()
        started = time.monotonic()
        try:
            run = transcribe(service.base, token, audio)
        finally:
            wall = time.monotonic() - started
            sampler.stop()
        pid = job_pid(env, run["runId"])
        worker_hwm = status_mib(pid, "VmHWM") if pid else None
        web_hwm = status_mib(service.web.pid, "VmHWM")
    finally:
        service.stop()
    sampler.write_csv(data_dir / f"rss-{label}.csv", pid)

    worker_sampled, peak_at = sampler.peak_of(pid) if pid else (0.0, 0.0)
    segments = run.get("segments") or []
    text = " ".join(re.findall(r"[a-z']+", (run.get("text") or "").lower()))
    result = Result(
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
            f"{r.audio.minutes:>5g}m {r.audio.seconds / 60:>7.1f}m {r.wall_seconds:>8.1f} "
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
            f"{name}: {large.audio.minutes:g} min - {small.audio.minutes:g} min peak: "
            f"{grow:+.0f} MiB ({grow / hours:+.0f} MiB per hour of audio); "
            f"target <= {TARGET_MIB} MiB: {verdict}"
        )
    if not all(r.transcript_ok for r in results):
        print("WARNING: a transcript did not look real (see the ok column): figures are suspect.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,30,120", help="minutes, comma-separated")
    parser.add_argument("--batch", type=int, help="WHISPER_BATCH_SIZE (default: environment, 0)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(","))
    batch = str(args.batch) if args.batch is not None else os.environ.get("WHISPER_BATCH_SIZE", "0")

    data_dir = Path(tempfile.mkdtemp(prefix="lingoloop-membench-"))
    (data_dir / "logs").mkdir()
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "POLL_INTERVAL": "100",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "MAX_CONCURRENT_JOBS": "1",
        "WHISPER_CPU_THREADS": "2",
        "WHISPER_BATCH_SIZE": batch,
        # The default 1800 s per attempt is too short for 2 h of audio on a busy machine.
        "JOB_TIMEOUT": "7200",
    }
    results = []
    try:
        manage(env, "migrate", "-v0")
        token = create_token(env)
        for minutes in sizes:
            print(f"building {minutes:g} min of speech...", file=sys.stderr, flush=True)
            audio = build_audio(minutes)
            size_mib = audio.path.stat().st_size / 2**20
            print(
                f"transcribing {audio.path.name} ({size_mib:.1f} MiB)...",
                file=sys.stderr,
                flush=True,
            )
            results.append(measure(audio, env, token, data_dir))
    finally:
        if args.keep:
            print(f"data directory kept: {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    print_report(results, batch)


if __name__ == "__main__":
    main()
