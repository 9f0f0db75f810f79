"""Benchmark: the async path's overhead over faster-whisper alone, and the worker's memory.

Starts a real web server and a real worker on a fresh SQLite data directory (or the
DATABASE_URL / REDIS_URL you give it), then, in one run:

1. times faster-whisper alone on the file (same model and settings as the worker), N times;
2. times upload -> `done` event through the service, N times (the SSE client connects right
   after the upload is accepted);
3. reads the worker process's resident memory after those jobs (and after 10 in total).

Usage: .venv/bin/python bench/async_path.py [--runs 10] [--audio ../shared/audio/jfk.flac]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_process_rss_mib(cluster_pid: int) -> dict[str, float]:
    """Resident memory of each process the django-q2 sentinel runs (workers, pusher, monitor)."""
    out = {}
    tree = subprocess.run(
        ["ps", "-o", "pid=,rss=,args=", "--ppid", str(cluster_pid)], capture_output=True, text=True
    ).stdout
    for line in tree.splitlines():
        pid, rss, *args = line.split(None, 2)
        out[f"{pid} {' '.join(args)[:40]}"] = int(rss) / 1024
    return out


def whisper_alone(audio: Path, runs: int) -> list[float]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lingoloop.settings")
    import django

    django.setup()
    from transcription import engine

    options = engine.Options(model=os.environ.get("WHISPER_MODEL", "tiny.en"))
    engine.get_model(options.model)  # load once, as a worker keeps it loaded
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.transcribe(audio, options)
        times.append(time.perf_counter() - started)
    return times


def sse_until_done(url: str) -> None:
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=120)) as client,
        client.stream("GET", url) as r,
    ):
        for line in r.iter_lines():
            if line == "event: done":
                return
    raise RuntimeError("stream ended without done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--audio", type=Path, default=ROOT / "tests" / "data" / "jfk.flac")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="lingoloop-bench-"))
    env = {**os.environ, "DATA_DIR": str(data_dir), "POLL_INTERVAL": "100", "LOG_LEVEL": "WARNING"}
    os.environ.update({"DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"})
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    token = (
        subprocess.run(
            [
                python,
                "manage.py",
                "shell",
                "-v0",
                "-c",
                "from django.contrib.auth.models import User\n"
                "from rest_framework.authtoken.models import Token\n"
                "u = User.objects.create_user('bench', password='bench-pass-1')\n"
                "print(Token.objects.create(user=u).key)",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )

    alone = whisper_alone(args.audio, args.runs)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = subprocess.Popen(
        [python, "-m", "lingoloop.server", "-b", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(
        [python, "manage.py", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("web server did not start")
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        through = []
        for _ in range(args.runs):
            started = time.perf_counter()
            with args.audio.open("rb") as handle:
                run = httpx.post(
                    f"{base}/api/transcribe",
                    headers=headers,
                    files={"file": (args.audio.name, handle)},
                    data={"mode": "async"},
                    timeout=30,
                ).json()
            sse_until_done(f"{base}{run['links']['events']}?access_token={run['eventsToken']}")
            through.append(time.perf_counter() - started)
        workers = worker_process_rss_mib(
            next(
                int(p)
                for p in subprocess.run(
                    ["pgrep", "-P", str(worker.pid)], capture_output=True, text=True
                ).stdout.split()
            )
        )
    finally:
        for process in (web, worker):
            process.send_signal(signal.SIGTERM)
        for process in (web, worker):
            process.wait(timeout=60)

    alone_median = statistics.median(alone)
    through_median = statistics.median(through)
    print(
        json.dumps(
            {
                "audio": str(args.audio.name),
                "runs": args.runs,
                "whisper_alone_s": {"median": round(alone_median, 3), "min": round(min(alone), 3)},
                "upload_to_done_s": {
                    "median": round(through_median, 3),
                    "min": round(min(through), 3),
                    "first": round(through[0], 3),
                },
                "overhead_ratio_median": round(through_median / alone_median, 2),
                "overhead_s_median": round(through_median - alone_median, 3),
                "cluster_processes_rss_mib_after_jobs": {
                    k: round(v, 1) for k, v in workers.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
