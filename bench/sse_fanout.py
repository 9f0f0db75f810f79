"""Benchmark: SSE fan-out on one web process (issues 4 and 11): connect time, latency, memory
and database connections.

Issue 11's figures per round (`figures`, printed last): connect time in total and per client
(and the web process's CPU per connect), delivery p50/p99, and the most database connections
the web process held while the clients connected, idled and received. `measure(quick=...)`
is what `python -m bench sse_fanout` calls: 1,000 clients (100 with `quick`) in the mode the
environment sets.

For each delivery mode and each N in --clients, on a fresh temporary DATA_DIR:

1. starts ONE web process (`python -m lingoloop.server`, as users run it), warms it up
   (health check, one stream opened and closed) and reads its resident memory (VmRSS);
2. opens N concurrent SSE clients (asyncio sockets in this process, class SseReader) on
   `/api/runs/{id}/events?access_token=<eventsToken>`: all on one shared run (`--watch shared`)
   or each on its own run (`--watch own`), waits for every `init`, lets the streams sit idle
   and reads the web process's VmRSS again, its threads, and the database connections it
   holds (PostgreSQL: rows of pg_stat_activity with the web process's application_name;
   SQLite: its open descriptors on db.sqlite3 / -wal / -shm in /proc/PID/fd);
3. starts a publisher subprocess that does what a worker does when progress moves
   (transcription.jobs.ProgressWriter.flush): in a transaction, UPDATE the run's progress,
   then `publish(run, "update", ...)`, which stores the event rows and (after commit) sends
   them through django-eventstream, over Redis pub/sub when REDIS_URL is set. The event
   carries `benchSeq` and `benchSentAt` (time.time() taken just before that transaction), so
   the latency a client sees covers commit + event storage + transport (Redis, or the web
   process's database poll every EVENTS_DB_POLL_MS) + the web process's fan-out + the socket.
   A real worker is not used because its events cannot carry a send time and whisper would
   compete for the same 2 cores; the publisher runs the same code path the worker runs;
4. each client stamps time.time() when an event's `data:` line reaches it: latency per event
   per client (p50, p99, max), plus per event the first and the last client to get it (the
   fan-out spread), lost / duplicated / out-of-order events and client errors; meanwhile the
   web process's database connections are sampled every 100 ms (a stream's reads open and
   close a connection, so an idle one shows 0 and a busy one a few) and, on PostgreSQL, the
   sessions opened on the database are counted (pg_stat_database.sessions).

Caveats on the figures: the N clients share one asyncio loop in this process, on the same
cores as the web process; a client's receive stamp includes its wait for this loop. The
CPU seconds used during delivery by the web process, by the clients and by everything else
on the machine are reported, so that share (and a busy shared machine) can be judged.
The steps between events are jittered around --interval, so that they do not lock onto
the web process's poll period.

Modes (--modes): `sqlite` (embedded: no Redis, the web process polls stored events),
`sqlite+redis`, `postgres`, `postgres+redis`. Default: `sqlite`, plus `sqlite+redis` when
REDIS_URL is set, plus `postgres+redis` (or `postgres`) when DATABASE_URL is set. The
PostgreSQL database is created when missing; its name must contain `bench` (bench/harness.py).

Usage:
  REDIS_URL=redis://127.0.0.1:6379/0 \\
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/lingoloop_bench \\
  .venv/bin/python bench/sse_fanout.py [--clients 100,500,1000] [--events 20]
      [--interval 0.5] [--watch shared,own] [--modes sqlite,sqlite+redis,postgres+redis]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse, urlunparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    FORBIDDEN_DATABASES,
    create_token,
    database_name,
    ensure_postgres_database,
    free_port,
    log,
    manage,
)

WEB_APP_NAME = "lingoloop-bench-web"
PUBLISHER_APP_NAME = "lingoloop-bench-publisher"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 1)}


# --- The web process, seen from /proc ------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine: other work on it skews every figure."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sqlite_fds(pid: int, db_file: Path) -> dict[str, int]:
    """The web process's open descriptors on the SQLite files (one connection: db, wal, shm)."""
    counts = {"db": 0, "wal": 0, "shm": 0}
    wanted = {str(db_file): "db", f"{db_file}-wal": "wal", f"{db_file}-shm": "shm"}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target in wanted:
            counts[wanted[target]] += 1
    return counts


# --- Modes and processes -------------------------------------------------------------------


@dataclass
class Mode:
    name: str
    database_url: str | None  # None: SQLite in DATA_DIR
    redis_url: str | None


def with_application_name(url: str, name: str) -> str:
    """DATABASE_URL with `?application_name=` (dj-database-url passes it to psycopg), so the
    web process's connections can be told apart in pg_stat_activity."""
    parts = urlparse(url)
    query = "&".join(q for q in [parts.query, urlencode({"application_name": name})] if q)
    return urlunparse(parts._replace(query=query))


def mode_env(mode: Mode, data_dir: Path, app_name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "LOG_LEVEL": "WARNING",
            # Heartbeats would be extra traffic on every idle stream: keep them out.
            "SSE_HEARTBEAT_INTERVAL_MS": str(3_600_000),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if mode.database_url:
        env["DATABASE_URL"] = with_application_name(mode.database_url, app_name)
    if mode.redis_url:
        env["REDIS_URL"] = mode.redis_url
    return env


def stop(process: subprocess.Popen[Any] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def start_web(env: dict[str, str], port: int, log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as out:
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lingoloop.server",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2, trust_env=False)
            if r.status_code == 200:
                return web
        except httpx.HTTPError:
            pass
        if web.poll() is not None or time.monotonic() > deadline:
            stop(web)
            raise RuntimeError(f"web server did not start; see {log_file}")
        time.sleep(0.1)


def this_script(env: dict[str, str], *args: str, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, __file__, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class Fixture:
    """What a mode's rounds share: the data directory, a user's events token and the runs."""

    data_dir: Path
    events_token: str
    run_ids: list[str]


def prepare(mode: Mode, audio: Path, own_runs: int) -> Fixture:
    """Migrate, create a user and token, upload one file (mode=async) through the API, and
    clone that run `own_runs` times for `--watch own`. No worker runs: the run stays put."""
    data_dir = Path(tempfile.mkdtemp(prefix="lingoloop-bench-sse-"))
    try:
        return _prepare(mode, audio, own_runs, data_dir)
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise


def _prepare(mode: Mode, audio: Path, own_runs: int, data_dir: Path) -> Fixture:
    env = mode_env(mode, data_dir, "lingoloop-bench-setup")
    manage(env, "migrate", "--noinput", "-v0")
    token = create_token(env)
    port = free_port()
    web = None
    try:
        web = start_web(mode_env(mode, data_dir, WEB_APP_NAME), port, data_dir / "setup-web.log")
        with audio.open("rb") as handle:
            r = httpx.post(
                f"http://127.0.0.1:{port}/api/transcribe",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": (audio.name, handle)},
                data={"mode": "async"},
                timeout=60,
                trust_env=False,
            )
        if r.status_code != 202:
            raise RuntimeError(f"upload answered {r.status_code}: {r.text[:500]}")
        run = r.json()
    finally:
        stop(web)
    run_ids = [run["runId"]]
    if own_runs > 1:
        out = this_script(
            env, "_clone", "--source", run["runId"], "--count", str(own_runs - 1), timeout=300
        )
        run_ids += json.loads(out.strip().splitlines()[-1])
    return Fixture(data_dir, run["eventsToken"], run_ids)


# --- The clients ---------------------------------------------------------------------------


@dataclass
class ClientState:
    latencies_ms: dict[int, float] = field(default_factory=dict)  # benchSeq -> latency
    received_at: dict[int, float] = field(default_factory=dict)  # benchSeq -> time.time()
    duplicates: int = 0
    out_of_order: int = 0
    last_id: int = -1
    connect_s: float | None = None
    error: str | None = None
    ended: bool = False


class SseReader(asyncio.Protocol):
    """One SSE client at the socket level: HTTP/1.0 (no chunked framing), events split on
    blank lines, each stamped with time.time() when its bytes arrive. An httpx client per
    stream cost this process as much CPU per event as the web process spent sending it, on
    the same cores; this costs a fraction, so the latencies are the server's."""

    def __init__(self, request: bytes, state: ClientState, on_init: Any) -> None:
        self.request = request
        self.state = state
        self.on_init = on_init
        self.buffer = b""
        self.headers_done = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started = time.monotonic()

    def connection_made(self, transport: Any) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        self.buffer += data
        if not self.headers_done:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            status = head.split(b" ", 2)[1]
            if status != b"200":
                self.state.error = f"HTTP {status.decode()}"
                self.on_init()
                return
            self.headers_done, self.buffer = True, rest
        *blocks, self.buffer = self.buffer.split(b"\n\n")
        for block in blocks:
            self.event(block, arrived)

    def event(self, block: bytes, arrived: float) -> None:
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        name, data = fields.get(b"event"), fields.get(b"data", b"")
        if b"id" in fields:
            event_id = int(fields[b"id"])
            if event_id <= self.state.last_id and name != b"init":
                self.state.out_of_order += 1
            self.state.last_id = max(self.state.last_id, event_id)
        if name == b"init":
            self.state.connect_s = time.monotonic() - self.started
            self.on_init()
        elif name == b"update" and b'"benchSeq"' in data:
            payload = json.loads(data)
            seq = int(payload["benchSeq"])
            if seq in self.state.latencies_ms:
                self.state.duplicates += 1
            else:
                self.state.latencies_ms[seq] = (arrived - payload["benchSentAt"]) * 1000
                self.state.received_at[seq] = arrived

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.ended = True
        self.on_init()
        if not self.closed.done():
            self.closed.set_result(None)


async def follow(url: str, state: ClientState, gate: asyncio.Semaphore) -> None:
    """One SSE client: hold the gate until `init` arrives (limits connects in flight), then
    read events until cancelled."""
    await gate.acquire()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            gate.release()

    parts = urlparse(url)
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    transport = None
    try:
        transport, reader = await loop.create_connection(
            lambda: SseReader(request, state, release),
            parts.hostname or "127.0.0.1",
            parts.port or 80,
        )
        await reader.closed
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        state.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        release()
        if transport is not None:
            transport.close()


class ConnectionSampler:
    """Samples the database connections the web process holds, in a thread."""

    def __init__(self, mode: Mode, pid: int, db_file: Path) -> None:
        self.mode = mode
        self.pid = pid
        self.db_file = db_file
        self.conn: Any = None
        if mode.database_url:
            import psycopg

            self.conn = psycopg.connect(mode.database_url, autocommit=True, connect_timeout=5)

    def sample(self) -> dict[str, int]:
        if self.conn is None:
            return sqlite_fds(self.pid, self.db_file)
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE application_name = %s), count(*)"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [WEB_APP_NAME, database_name(self.mode.database_url or "")],
        ).fetchone()
        return {"web": int(row[0]), "database_total": int(row[1])}

    async def sample_for(
        self, seconds: float, every: float = 0.1, stop: asyncio.Event | None = None
    ) -> list[dict[str, int]]:
        samples = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            samples.append(await asyncio.to_thread(self.sample))
            await asyncio.sleep(every)
        return samples

    def sessions_opened(self) -> int | None:
        """PostgreSQL's count of sessions ever opened on the database (None for SQLite): the
        web process opens one per database read, as its reads do not keep connections."""
        if self.conn is None:
            return None
        row = self.conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s",
            [database_name(self.mode.database_url or "")],
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def summarize_samples(samples: list[dict[str, int]]) -> dict[str, dict[str, float]]:
    keys = samples[0].keys() if samples else []
    return {
        k: {
            "median": statistics.median(s[k] for s in samples),
            "max": max(s[k] for s in samples),
        }
        for k in keys
    }


async def one_round(
    mode: Mode,
    fixture: Fixture,
    clients: int,
    watch: str,
    events: int,
    interval: float,
    connect_concurrency: int,
) -> dict[str, Any]:
    data_dir = fixture.data_dir
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runs = fixture.run_ids[:1] if watch == "shared" else fixture.run_ids[:clients]
    if len(runs) < (1 if watch == "shared" else clients):
        raise RuntimeError("not enough runs prepared for --watch own")
    query = urlencode({"access_token": fixture.events_token})
    urls = [f"{base}/api/runs/{runs[i % len(runs)]}/events?{query}" for i in range(clients)]
    web_log = data_dir / f"web-{watch}-{clients}.log"
    result: dict[str, Any] = {"mode": mode.name, "watch": watch, "clients": clients}
    web = publisher = None
    sampler: ConnectionSampler | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        web = start_web(mode_env(mode, data_dir, WEB_APP_NAME), port, web_log)
        pid = web.pid
        sampler = ConnectionSampler(mode, pid, data_dir / "db.sqlite3")
        # Warm-up: one stream opened and closed, so code paths and the thread pool exist
        # before the baseline is read.
        warm = ClientState()
        warm_task = asyncio.create_task(follow(urls[0], warm, asyncio.Semaphore(1)))
        await wait_until(lambda: warm.connect_s is not None or warm_task.done(), 30)
        warm_task.cancel()
        await asyncio.gather(warm_task, return_exceptions=True)
        await asyncio.sleep(1.5)
        rss_idle_none = proc_status(pid, "VmRSS")
        db_none = summarize_samples(await sampler.sample_for(1.0))

        log(f"{mode.name} {watch} N={clients}: connecting")
        states = [ClientState() for _ in range(clients)]
        gate = asyncio.Semaphore(connect_concurrency)
        stop_connect_sampling = asyncio.Event()
        connect_sampling = asyncio.create_task(
            sampler.sample_for(3600, every=0.1, stop=stop_connect_sampling)
        )
        connect_started, connect_cpu0 = time.monotonic(), cpu_seconds(pid)
        tasks = [
            asyncio.create_task(follow(url, s, gate)) for url, s in zip(urls, states, strict=True)
        ]
        all_in = await wait_until(
            lambda: all(s.connect_s is not None or s.error or s.ended for s in states),
            60 + clients * 0.1,
        )
        connect_wall = time.monotonic() - connect_started
        connect_cpu = cpu_seconds(pid) - connect_cpu0
        stop_connect_sampling.set()
        connect_samples = await asyncio.wait_for(connect_sampling, 30)
        connected = sum(1 for s in states if s.connect_s is not None)
        await asyncio.sleep(2.0)  # let the streams settle into their idle wait
        rss_idle_n = proc_status(pid, "VmRSS")
        db_idle = summarize_samples(await sampler.sample_for(2.0))
        result.update(
            {
                "connect": {
                    "connected": connected,
                    "all_connected_before_deadline": all_in,
                    "wall_s": round(connect_wall, 2),
                    "wall_ms_per_client": round(connect_wall * 1000 / clients, 2),
                    "web_cpu_s": round(connect_cpu, 2),
                    "web_cpu_ms_per_client": round(connect_cpu * 1000 / clients, 2),
                    "db_connections": summarize_samples(connect_samples),
                    "time_to_init_ms": percentiles(
                        [s.connect_s * 1000 for s in states if s.connect_s is not None]
                    ),
                    "concurrency": connect_concurrency,
                },
                "web_idle": {
                    "rss_kib_no_streams": rss_idle_none,
                    "rss_kib_with_streams": rss_idle_n,
                    "rss_kib_per_stream": round(
                        (rss_idle_n - rss_idle_none) / max(connected, 1), 1
                    ),
                    "threads": proc_status(pid, "Threads"),
                    "open_fds": open_fds(pid),
                    "db_connections_no_streams": db_none,
                    "db_connections_with_streams": db_idle,
                },
            }
        )

        log(f"{mode.name} {watch} N={clients}: publishing {events} events")
        runs_file = data_dir / "publish-runs.json"
        runs_file.write_text(json.dumps(runs))
        web_cpu0, client_cpu0 = cpu_seconds(pid), time.process_time()
        sessions0 = sampler.sessions_opened()
        busy0, total0 = machine_busy_jiffies()
        delivery_started = time.monotonic()
        publisher = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_publish",
                "--runs-file",
                str(runs_file),
                "--count",
                str(events),
                "--interval",
                str(interval),
            ],
            cwd=ROOT,
            env=mode_env(mode, data_dir, PUBLISHER_APP_NAME),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(sampler.sample_for(3600, every=0.1, stop=stop_sampling))
        # A shared run gets one event per step; `own` publishes one per run per step.
        publish_budget = 60 + events * max(interval, 0.05 * len(runs))
        expected = {i for i, s in enumerate(states) if s.connect_s is not None and s.error is None}

        def complete() -> bool:
            return publisher is not None and (
                publisher.poll() is not None
                and all(len(states[i].latencies_ms) >= events for i in expected)
            )

        await wait_until(
            lambda: publisher is not None and publisher.poll() is not None, publish_budget
        )
        await wait_until(complete, 15)  # delivery grace after the last publish
        web_cpu, client_cpu = cpu_seconds(pid) - web_cpu0, time.process_time() - client_cpu0
        delivery_wall = time.monotonic() - delivery_started
        busy1, total1 = machine_busy_jiffies()
        machine_busy = (busy1 - busy0) / max(1, total1 - total0)
        stop_sampling.set()
        busy_samples = await asyncio.wait_for(sampling, 30)
        if publisher.poll() is None:
            stop(publisher)
        out, err = publisher.communicate(timeout=10)
        published = json.loads(out.strip().splitlines()[-1]) if publisher.returncode == 0 else {}
        if publisher.returncode != 0:
            result["publisher_error"] = err[-2000:]

        latencies = [v for s in states for v in s.latencies_ms.values()]
        # Fan-out spread, for one shared run: per event, when its first and its last client
        # got it (each client's send time is the same benchSentAt).
        first_last = []
        for seq in range(events if watch == "shared" else 0):
            got = [
                (s.received_at[seq], s.received_at[seq] - s.latencies_ms[seq] / 1000)
                for s in states
                if seq in s.received_at
            ]
            if got:
                sent = got[0][1]
                first_last.append(
                    ((min(g for g, _ in got) - sent) * 1000, (max(g for g, _ in got) - sent) * 1000)
                )
        errors = [s.error for s in states if s.error]
        received = sum(len(s.latencies_ms) for s in states)
        result.update(
            {
                "delivery": {
                    "events_published": published.get("published"),
                    "expected": len(expected) * events,
                    "received": received,
                    "missing": sum(max(0, events - len(states[i].latencies_ms)) for i in expected),
                    "duplicates": sum(s.duplicates for s in states),
                    "out_of_order": sum(s.out_of_order for s in states),
                    "streams_ended_early": sum(1 for s in states if s.ended),
                    "client_errors": len(errors),
                    "client_error_examples": sorted(set(errors))[:5],
                },
                "latency_ms": percentiles(latencies),
                "first_client_ms": percentiles([f for f, _ in first_last]),
                "last_client_ms": percentiles([last for _, last in first_last]),
                "publisher_commit_and_send_ms": published.get("publish_ms"),
                "cpu_s_during_delivery": {
                    "web": round(web_cpu, 2),
                    "clients": round(client_cpu, 2),
                    "wall": round(delivery_wall, 2),
                    # Busy share of all cores, whoever used them, and the load average.
                    "machine_busy": round(machine_busy, 2),
                    # CPU seconds the rest of the machine (publisher included) used meanwhile.
                    "others": round((busy1 - busy0) / CLOCK_TICKS - web_cpu - client_cpu, 2),
                    "loadavg_1m": round(os.getloadavg()[0], 2),
                },
            }
        )
        result["db_connections_during_delivery"] = summarize_samples(busy_samples)
        if sessions0 is not None:
            await asyncio.sleep(1.0)  # PostgreSQL counts a session when it ends
            opened = sampler.sessions_opened()
            # Web process and publisher (which keeps one connection) together.
            result["db_connections_during_delivery"]["sessions_opened"] = (opened or 0) - sessions0

        for task in tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        tasks = []
        await asyncio.sleep(2.0)
        result["web_after_close"] = {
            "rss_kib": proc_status(pid, "VmRSS"),
            "open_fds": open_fds(pid),
            "threads": proc_status(pid, "Threads"),
        }
        if web.poll() is not None:
            result["web_exited"] = web.returncode
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        stop(publisher)
        stop(web)
        if sampler is not None:
            sampler.close()
    text = web_log.read_text(errors="replace") if web_log.exists() else ""
    result["web_log"] = {
        "tracebacks": text.count("Traceback"),
        "error_lines": sum(1 for line in text.splitlines() if " ERROR " in line),
        # The last lines that are not access-log lines ("GET /api/... 200").
        "tail": [line for line in text.splitlines() if '"GET ' not in line][-5:],
    }
    return result


async def wait_until(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def connections_held(samples: dict[str, dict[str, float]]) -> float | None:
    """The most database connections the web process held: PostgreSQL backends, or for
    SQLite its descriptors on the database file (one per connection)."""
    found = samples.get("web", samples.get("db"))
    return None if found is None else found["max"]


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """The figures issue 11 asks for, from one round: connect time in total and per client,
    delivery p50/p99, and the most database connections held meanwhile."""
    if "latency_ms" not in r:
        return {"mode": r["mode"], "clients": r["clients"], "error": r.get("error")}
    held = [
        connections_held(r["connect"]["db_connections"]),
        connections_held(r["web_idle"]["db_connections_with_streams"]),
        connections_held(r["db_connections_during_delivery"]),
    ]
    return {
        "mode": r["mode"],
        "clients": r["clients"],
        "connected": r["connect"]["connected"],
        "connect_total_s": r["connect"]["wall_s"],
        "connect_ms_per_client": r["connect"]["wall_ms_per_client"],
        "connect_web_cpu_ms_per_client": r["connect"]["web_cpu_ms_per_client"],
        "delivery_p50_ms": r["latency_ms"]["p50"],
        "delivery_p99_ms": r["latency_ms"]["p99"],
        "db_connections_max": max((h for h in held if h is not None), default=None),
        "missing_events": r["delivery"]["missing"],
        "client_errors": r["delivery"]["client_errors"],
        "machine_busy": r["cpu_s_during_delivery"]["machine_busy"],
    }


def summary_line(r: dict[str, Any]) -> str:
    if "latency_ms" not in r:
        return f"{r['mode']:>15} {r['watch']:>6} N={r['clients']:>5}: failed: {r.get('error')}"
    f, lat = figures(r), r["latency_ms"]
    return (
        f"{r['mode']:>15} {r['watch']:>6} N={r['clients']:>5}: "
        f"{f['connected']} connected in {f['connect_total_s']} s "
        f"({f['connect_ms_per_client']} ms/client, web CPU "
        f"{f['connect_web_cpu_ms_per_client']} ms/client); latency p50 {lat['p50']} ms, "
        f"p99 {lat['p99']} ms, max {lat['max']} ms; {r['web_idle']['rss_kib_per_stream']} KiB "
        f"RSS/stream; DB connections max {f['db_connections_max']}; "
        f"missing {f['missing_events']}, errors {f['client_errors']}; "
        f"machine busy {f['machine_busy']:.0%}"
    )


# --- Subprocess roles ----------------------------------------------------------------------


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lingoloop.settings")
    import django

    django.setup()


def role_publish(argv: list[str]) -> None:
    """Publish `count` progress updates to each run, every `interval` s, as a worker does."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-file", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    args = parser.parse_args(argv)
    django_setup()
    from django.db import transaction
    from django.utils import timezone

    from transcription.events import publish
    from transcription.models import RunStatus, TranscriptRun

    run_ids = json.loads(args.runs_file.read_text())
    TranscriptRun.objects.filter(pk__in=run_ids).update(
        status=RunStatus.PROCESSING, started_at=timezone.now(), progress=0.0
    )
    runs = list(TranscriptRun.objects.select_related("audio").filter(pk__in=run_ids))
    # A worker announces `processing` before any progress, with its database and Redis
    # connections already open: do the same, so the first timed event is not a cold start.
    for run in runs:
        with transaction.atomic():
            publish(run, "update", newSegments=[])
    time.sleep(1.0)
    took = []
    next_at = time.monotonic()
    # Jittered steps: a fixed 0.5 s would lock onto the web process's poll period and give
    # the same delay every time; a worker's updates come at no particular phase either.
    jitter = random.Random(4)
    for seq in range(args.count):
        next_at += args.interval * jitter.uniform(0.5, 1.5)
        time.sleep(max(0.0, next_at - time.monotonic()))
        progress = round(100 * (seq + 1) / (args.count + 1), 1)
        for run in runs:
            sent_at = time.time()
            with transaction.atomic():
                TranscriptRun.objects.filter(pk=run.pk).update(progress=progress)
                run.progress = progress
                publish(run, "update", newSegments=[], benchSeq=seq, benchSentAt=sent_at)
            took.append((time.time() - sent_at) * 1000)
    print(json.dumps({"published": len(took), "publish_ms": percentiles(took)}))


def role_clone(argv: list[str]) -> None:
    """Copy a run `count` times (same owner and audio) for `--watch own`; print the ids."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    django_setup()
    import uuid

    from transcription.models import RunStatus, TranscriptRun

    source = TranscriptRun.objects.get(pk=args.source)
    clones = []
    for _ in range(args.count):
        clone = TranscriptRun.objects.get(pk=source.pk)
        clone.pk = uuid.uuid4()
        clone.status = RunStatus.PROCESSING  # no job: a run a worker would be transcribing
        clone.idempotency_key = None
        clones.append(clone)
    TranscriptRun.objects.bulk_create(clones, batch_size=500)
    print(json.dumps([str(c.pk) for c in clones]))


# --- Main ----------------------------------------------------------------------------------


def default_modes() -> list[str]:
    modes = ["sqlite"]
    if os.environ.get("REDIS_URL"):
        modes.append("sqlite+redis")
    if os.environ.get("DATABASE_URL"):
        modes.append("postgres+redis" if os.environ.get("REDIS_URL") else "postgres")
    return modes


def parse_mode(name: str) -> Mode:
    store, _, transport = name.partition("+")
    if store not in {"sqlite", "postgres"} or transport not in {"", "redis"}:
        raise SystemExit(f"unknown mode {name!r}")
    database_url = None
    if store == "postgres":
        database_url = os.environ.get("DATABASE_URL")
        if not database_url or not database_url.startswith(("postgres://", "postgresql://")):
            raise SystemExit(f"mode {name} needs DATABASE_URL=postgres://...")
    redis_url = None
    if transport == "redis":
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            raise SystemExit(f"mode {name} needs REDIS_URL")
    return Mode(name, database_url, redis_url)


def raise_fd_limit(clients: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = clients * 2 + 256
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


@dataclass
class Plan:
    """What to measure: the rounds are every mode x watch x client count."""

    modes: list[Mode]
    counts: list[int]
    watches: list[str] = field(default_factory=lambda: ["shared"])
    events: int = 20
    interval: float = 0.5
    connect_concurrency: int = 100
    audio: Path = ROOT / "tests" / "data" / "jfk.flac"
    keep: bool = False


def run(plan: Plan) -> dict[str, Any]:
    """Every round of the plan, each on a fresh web process; the JSON document."""
    raise_fd_limit(max(plan.counts))
    for mode in plan.modes:
        if mode.database_url:
            ensure_postgres_database(
                mode.database_url, marker="bench", forbidden=FORBIDDEN_DATABASES
            )
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for mode in plan.modes:
        log(f"{mode.name}: preparing")
        own = max(plan.counts) if "own" in plan.watches else 1
        fixture = prepare(mode, plan.audio, own)
        try:
            for watch in plan.watches:
                for n in plan.counts:
                    results.append(run_round(plan, mode, fixture, watch, n))
                    log(summary_line(results[-1]))
        finally:
            if not plan.keep:
                shutil.rmtree(fixture.data_dir, ignore_errors=True)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "events_per_round": plan.events,
        "interval_s": plan.interval,
        "heartbeat_ms": 3_600_000,
        "wall_s": round(time.monotonic() - started, 1),
        "results": results,
    }


def run_round(plan: Plan, mode: Mode, fixture: Fixture, watch: str, n: int) -> dict[str, Any]:
    try:
        return asyncio.run(
            one_round(mode, fixture, n, watch, plan.events, plan.interval, plan.connect_concurrency)
        )
    except Exception as exc:
        log(f"{mode.name} {watch} N={n} failed: {exc!r}")
        return {"mode": mode.name, "watch": watch, "clients": n, "error": repr(exc)}


def measure(
    *, quick: bool = False, clients: int | None = None, events: int | None = None
) -> dict[str, Any]:
    """Issue 11's figures for `python -m bench`: N watchers of one run on one web process, in
    the environment's setting (SQLite, or DATABASE_URL; Redis when REDIS_URL is set). N is
    1,000, or 100 with `quick`."""
    n = clients or (100 if quick else 1000)
    plan = Plan([parse_mode(default_modes()[-1])], [n], events=events or (5 if quick else 20))
    document = run(plan)
    return {**figures(document["results"][0]), "machine": document["machine"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_publish":
        return role_publish(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_clone":
        return role_clone(sys.argv[2:])

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", default="100,500,1000")
    parser.add_argument("--modes", default=",".join(default_modes()))
    parser.add_argument("--watch", default="shared", help="shared, own, or shared,own")
    parser.add_argument("--events", type=int, default=20, help="progress events per round")
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between events (a worker: 0.5)"
    )
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--audio", type=Path, default=ROOT / "tests" / "data" / "jfk.flac")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    parser.add_argument("--output", type=Path, help="also write the JSON document here")
    args = parser.parse_args()

    plan = Plan(
        modes=[parse_mode(m.strip()) for m in args.modes.split(",") if m.strip()],
        counts=[int(c) for c in args.clients.split(",") if c.strip()],
        watches=[w.strip() for w in args.watch.split(",") if w.strip()],
        events=args.events,
        interval=args.interval,
        connect_concurrency=args.connect_concurrency,
        audio=args.audio,
        keep=args.keep,
    )
    document = run(plan)
    text = json.dumps(document, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    for r in document["results"]:
        print(summary_line(r))
    print(json.dumps([figures(r) for r in document["results"]], indent=2))


if __name__ == "__main__":
    main()
