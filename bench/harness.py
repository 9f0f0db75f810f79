"""What every benchmark script needs: a fresh service, a user, uploads, events, memory readings.

A benchmark here starts the real processes (`python -m lingoloop.server`, `manage.py worker`)
on a fresh DATA_DIR, with SQLite by default or the DATABASE_URL / REDIS_URL of the
environment, talks to them over HTTP as a client would, and compares what it sees with
faster-whisper alone (bench/raw.py) run in the same session on the same file and settings.
Nothing here asserts a timing: the scripts print figures, the reader judges them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
JFK = ROOT / "tests" / "data" / "jfk.flac"
CACHE = ROOT / "bench" / ".cache"
TERMINAL = ("succeeded", "failed", "cancelled")
# Databases other people use: a benchmark empties its database, so it refuses these.
FORBIDDEN_DATABASES = {"lingoloop", "test_lingoloop"}
RATE = 16000
OPUS_BIT_RATE = 24000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until it is true, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def spread(values: list[float], digits: int = 3) -> dict[str, float] | None:
    """median, p90, p99, min and max of `values` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], digits)

    return {
        "median": round(statistics.median(ordered), digits),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
    }


# --- The database and the data directory ----------------------------------------------------


def database_name(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def ensure_postgres_database(url: str, *, marker: str, forbidden: set[str]) -> None:
    """Create DATABASE_URL's database when missing; refuse one whose name lacks `marker`
    (the scripts empty it) or is one that others use."""
    import psycopg

    name = database_name(url)
    if name in forbidden or marker not in name:
        raise SystemExit(
            f"DATABASE_URL names {name!r}: this script empties its database, so the name must "
            f"contain {marker!r} (lingoloop_{marker}) and not be one of {sorted(forbidden)}"
        )
    admin = urlunparse(urlparse(url)._replace(path="/postgres", query=""))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            log(f"creating database {name}")
            conn.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """`manage.py <args>` in a process of its own; the last line it printed."""
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.splitlines()[-1] if out else ""


def create_token(env: dict[str, str], prefix: str = "bench") -> str:
    """A new user and its API token, made by a `manage.py shell` of its own."""
    username = f"{prefix}-{uuid.uuid4().hex[:8]}"
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


@dataclass
class Stack:
    """A fresh, migrated DATA_DIR (and database), the environment its processes get, a user."""

    data_dir: Path
    env: dict[str, str]
    token: str = ""

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def database(self) -> str:
        url = self.env.get("DATABASE_URL", "")
        return f"postgresql/{database_name(url)}" if url else "sqlite"

    @property
    def events(self) -> str:
        return "redis" if self.env.get("REDIS_URL") else "database"

    def remove(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def prepare(prefix: str, *, marker: str = "bench", **env: str) -> Stack:
    """A fresh DATA_DIR, migrated, with a user; on PostgreSQL the database is emptied first.

    The per-user limits are lifted: a benchmark submits a hundred files at once as one user.
    """
    data_dir = Path(tempfile.mkdtemp(prefix=f"lingoloop-{prefix}-"))
    (data_dir / "logs").mkdir()
    full = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "USER_MAX_ACTIVE_RUNS": "100000",
        "UPLOADS_PER_MINUTE": "100000",
        **env,
    }
    database_url = full.get("DATABASE_URL", "")
    if database_url:
        ensure_postgres_database(database_url, marker=marker, forbidden=FORBIDDEN_DATABASES)
    manage(full, "migrate", "-v0")
    if database_url:
        manage(full, "flush", "--noinput", "-v0")
    return Stack(data_dir=data_dir, env=full, token=create_token(full, prefix))


@contextlib.contextmanager
def fresh_stack(prefix: str, *, keep: bool = False, **env: str) -> Iterator[Stack]:
    """`prepare`, and the data directory removed afterwards unless `keep`."""
    stack = prepare(prefix, **env)
    try:
        yield stack
    finally:
        if keep:
            log(f"data directory kept: {stack.data_dir}")
        else:
            stack.remove()


# --- Processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float
    sigterm_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    """Start a process in its own session (so its group is its pid) logging to a file."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name=name, popen=popen, log_path=log_path, started=time.monotonic())


def kill_group(proc: Proc, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process(proc: Proc, timeout: float) -> tuple[int | None, bool]:
    """SIGTERM to the master, wait up to `timeout`, then SIGKILL the whole group (leftovers too).

    Returns (exit code, stopped by itself within the timeout).
    """
    graceful = True
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            graceful = False
    kill_group(proc)  # forked children that outlived their master, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=10)
    return proc.popen.returncode, graceful


def start_web(env: dict[str, str], log_dir: Path, name: str = "web") -> tuple[Proc, str]:
    """The web process (`python -m lingoloop.server`) on a free port, once it answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "lingoloop.server", "-b", "127.0.0.1", "-p", str(port)]
    web = spawn(name, argv, env, log_dir)

    def healthy() -> bool:
        if web.popen.poll() is not None:
            raise RuntimeError(f"the web process exited; see {web.log_path}")
        try:
            return httpx.get(f"{base}/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 120, "the web server to answer")
    except BaseException:
        stop_process(web, 5)
        raise
    return web, base


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> Proc:
    """A worker cluster (`manage.py worker`), once it says it is running."""
    worker = spawn(name, [sys.executable, "manage.py", "worker"], env, log_dir)

    def running() -> bool:
        if worker.popen.poll() is not None:
            raise RuntimeError(f"the worker exited; see {worker.log_path}")
        return "running." in worker.log_text()

    try:
        wait_for(running, 120, "the worker cluster to start")
    except BaseException:
        stop_process(worker, 5)
        raise
    return worker


@dataclass
class Service:
    """One web process and one worker cluster on a stack; `with Service.start(...)`."""

    stack: Stack
    web: Proc
    worker: Proc
    base: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self.stack.token}"},
            timeout=httpx.Timeout(300, connect=10),
        )

    @classmethod
    @contextlib.contextmanager
    def start(cls, stack: Stack, label: str = "", **env: str) -> Iterator[Service]:
        """Web and worker with the stack's environment plus `env`; both stopped afterwards."""
        full = {**stack.env, **env}
        suffix = f"-{label}" if label else ""
        web, base = start_web(full, stack.logs, f"web{suffix}")
        try:
            worker = start_worker(full, stack.logs, f"worker{suffix}")
        except BaseException:
            stop_process(web, 15)
            raise
        service = cls(stack=stack, web=web, worker=worker, base=base)
        try:
            yield service
        finally:
            service.client.close()
            stop_process(worker, 90)
            stop_process(web, 15)

    # --- HTTP, as a client ---

    def submit(self, audio: Path, expect: int = 202, **fields: str) -> dict[str, Any]:
        """POST /api/transcribe (mode=async unless `fields` say otherwise); the run's JSON."""
        with audio.open("rb") as handle:
            answer = self.client.post(
                "/api/transcribe",
                files={"file": (audio.name, handle)},
                data={"mode": "async", **fields},
            )
        if answer.status_code != expect:
            raise RuntimeError(f"upload answered {answer.status_code}: {answer.text[:300]}")
        return dict(answer.json())

    def submit_many(self, audio: Path, count: int, concurrency: int = 8) -> list[dict[str, Any]]:
        """`count` async uploads sent at once (`concurrency` at a time), in answer order."""
        with ThreadPoolExecutor(concurrency, thread_name_prefix="submit") as pool:
            return list(pool.map(lambda _: self.submit(audio), range(count)))

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/runs/{run_id}").json())

    def wait_finished(
        self, run_ids: list[str], timeout: float, every: float = 0.5
    ) -> list[dict[str, Any]]:
        """Poll until every run is terminal; their JSON, in the order given."""
        finished: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while True:
            for run_id in run_ids:
                if run_id not in finished:
                    run = self.run(run_id)
                    if run["status"] not in TERMINAL:
                        break  # the queue runs in order: later ones are not done either
                    finished[run_id] = run
            if len(finished) == len(run_ids):
                return [finished[run_id] for run_id in run_ids]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(run_ids) - len(finished)} run(s) unfinished at deadline")
            time.sleep(every)

    def events_url(self, run: dict[str, Any]) -> str:
        return f"{self.base}{run['links']['events']}?access_token={run['eventsToken']}"

    def follow_until_done(self, run: dict[str, Any], timeout: float = 600) -> None:
        """Read the run's SSE stream until its `done` event, as a browser would."""
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=timeout)) as client,
            client.stream("GET", self.events_url(run)) as stream,
        ):
            for line in stream.iter_lines():
                if line == "event: done":
                    return
        raise RuntimeError("the event stream ended without done")

    # --- Memory ---

    def web_rss(self) -> float:
        return status_mib(self.web.pid, "VmRSS") or 0.0

    def job_process_rss(self) -> float:
        """RSS of the largest process of the worker's tree: the one that loaded the model
        (with MAX_CONCURRENT_JOBS=1 the only one that runs jobs)."""
        return max(status_mib(pid, "VmRSS") or 0.0 for pid in process_tree(self.worker.pid))


def finished_span(started_at: float, runs: list[dict[str, Any]]) -> float:
    """Seconds from `started_at` (time.time()) to the last run's finishedAt, by the server's
    clock (the same machine): free of the client's polling period."""
    last = max(datetime.fromisoformat(run["finishedAt"]).timestamp() for run in runs)
    return last - started_at


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


# --- Audio ----------------------------------------------------------------------------------


@dataclass
class AudioFile:
    path: Path
    repeats: int
    seconds: float

    @property
    def minutes(self) -> float:
        return self.seconds / 60


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


def speech_file(repeats: int) -> AudioFile:
    """Real speech: jfk.flac said `repeats` times with a second of silence after each, as Ogg
    Opus (24 kbit/s, ~11 MB an hour), encoded one unit at a time so that long audio is never
    held whole; cached in bench/.cache/."""
    import av

    unit = speech_unit()
    path = CACHE / f"jfk-x{repeats}-opus{OPUS_BIT_RATE // 1000}k.ogg"
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
    return AudioFile(path, repeats, repeats * unit.shape[1] / RATE)


def repeats_for(minutes: float) -> int:
    """How many speech units last at least `minutes`."""
    return math.ceil(minutes * 60 / (speech_unit().shape[1] / RATE))


# --- faster-whisper alone -------------------------------------------------------------------


@dataclass
class Raw:
    seconds: list[float]
    text: str
    batch: int  # 0: sequential
    rss_mib: float
    hwm_mib: float


def whisper_alone(audio: Path, times: int, env: dict[str, str], batch: str = "service") -> Raw:
    """faster-whisper alone on `audio`, `times` passes with the model loaded once, in a process
    of its own with the service's environment (so the same model and settings), decoding
    sequentially or batched as a worker's job would (see bench/raw.py)."""
    argv = ["-m", "bench.raw", str(audio), "--times", str(times), "--batch", batch]
    out = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    return Raw(found["seconds"], found["text"], found["batch"], found["rssMib"], found["hwmMib"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (/proc/<pid>/stat); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(procs: list[Proc]) -> dict[str, float]:
    """CPU seconds used so far by each process of each tree in `procs`, keyed by the tree's
    name and the pid (`worker-two/1234`): subtract two readings to see what a measurement
    cost each process, the work itself and what ran beside it."""
    return {
        f"{proc.name}/{pid}": cpu_seconds(pid) for proc in procs for pid in process_tree(proc.pid)
    }


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each process used between two `tree_cpu_seconds` readings (those that used
    at least 0.05 s)."""
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    return {key: round(value, 2) for key, value in used.items() if value >= 0.05}
