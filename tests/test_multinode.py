"""Several machines on one: deploy/nginx.conf in front of two web processes, and two worker
clusters, each process with a DATA_DIR of its own, sharing only PostgreSQL, Redis and the
object store (the moto S3 server of tests/s3server.py).

One test, as an operator would check a deployment: uploads through nginx reach both web
processes; each run is watched from the web process that did *not* take its upload (a few
also through nginx); a worker cluster is killed with SIGKILL half-way and a new one started;
every run ends once, every watcher gets every event in order within a second of its making
and exactly one `done`; nginx refuses an oversized body with the API's 413; deleting the runs
leaves no object and no row. `pytest -s` prints what it measured (deploy/README.md quotes it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
import wave
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django_eventstream.models import Event as StoredEventRow

from tasks_admin.models import Job, JobStatus, Worker
from tests.conftest import (
    ROOT,
    Processes,
    free_port,
    make_account,
    redis_reachable,
    speech_16k,
    wait_until,
)
from tests.sseclient import Event, EventStream
from transcription.models import Audio, PendingDeletion, TranscriptRun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
SITE = ROOT / "deploy" / "nginx.conf"
RUNS = 100
# Small, so that the 413 needs no big body; every clip is far below it.
MAX_UPLOAD_BYTES = 1_000_000
ENVELOPE_BYTES = 65536  # transcription.uploads.LimitedTemporaryFileUploadHandler.ENVELOPE_BYTES
HOST = "lingoloop.test"
# Through nginx some runs are watched twice: late in the queue, so they see many events over
# many seconds (a buffering proxy would hold them back).
WATCHED_THROUGH_NGINX = (15, 35, 55, 75, 95)
MAX_EVENT_DELAY = 1.0


@pytest.fixture
def prerequisites() -> None:
    """Plain reasons, before anything is started, for a test that cannot run here."""
    if NGINX is None:
        pytest.skip("multi-node test skipped: nginx is not installed (apt-get install nginx)")
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("multi-node test skipped: it needs PostgreSQL (set DATABASE_URL)")
    if not redis_reachable():
        pytest.skip("multi-node test skipped: it needs Redis (set REDIS_URL to a running one)")


# --- The pieces ---------------------------------------------------------------------------


def clips(folder: Path, count: int) -> list[Path]:
    """`count` WAVs of 2-3 s of jfk.flac's speech, each from another offset and of another
    length: no two alike."""
    speech = speech_16k()[: 11 * 16000]
    folder.mkdir()
    made = []
    for i in range(count):
        start = int((i * 0.37) % 8.0 * 16000)
        length = int((2.0 + (i % 5) * 0.25) * 16000)
        path = folder / f"clip-{i:03d}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(speech[start : start + length].tobytes())
        made.append(path)
    return made


def _replace_once(text: str, old: str, new: str, times: int = 1) -> str:
    assert text.count(old) == times, f"deploy/nginx.conf no longer has {old!r} {times} time(s)"
    return text.replace(old, new)


def render_nginx(folder: Path, *, port: int, webs: list[str]) -> Path:
    """deploy/nginx.conf with its CHANGE lines pointed at this test, inside a main
    configuration that plays Debian's /etc/nginx/nginx.conf with every path in `folder`."""
    site = SITE.read_text()
    for number, web in enumerate(webs, start=1):
        site = _replace_once(
            site,
            f"server 10.0.0.1{number}:8000;  # CHANGE: web process {number}",
            f"server {web.removeprefix('http://')};",
        )
    for old, new in (
        ("listen 80;  # CHANGE: and TLS (below)", f"listen 127.0.0.1:{port};"),
        (
            "server_name lingoloop.example.com;  # CHANGE: the name in ALLOWED_HOSTS",
            f"server_name {HOST};",
        ),
        (
            "access_log /var/log/nginx/lingoloop.access.log lingoloop;  # CHANGE: where nginx logs",
            f"access_log {folder / 'nginx-access.log'} lingoloop;",
        ),
    ):
        site = _replace_once(site, old, new)
    # The upload limit: /api/transcribe's and /v1/audio/'s.
    site = _replace_once(
        site,
        "client_max_body_size 524353536;  # CHANGE: MAX_UPLOAD_BYTES + 65536",
        f"client_max_body_size {MAX_UPLOAD_BYTES + ENVELOPE_BYTES};",
        times=2,
    )
    assert "# CHANGE" not in site, "deploy/nginx.conf has a CHANGE line this test does not set"
    (folder / "lingoloop.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else ""
    # As root, nginx's workers would switch to `nobody`, who may not enter pytest's 0700
    # temporary folders (this configuration's temp paths and logs). Only this rendering runs
    # them as root; a real installation keeps Debian's `user www-data;`.
    user = "user root;" if os.geteuid() == 0 else ""
    main = folder / "nginx.conf"
    main.write_text(
        f"""{user}
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "nginx-error.log"} info;
events {{ worker_connections 1024; }}
http {{
    {mime}
    default_type application/octet-stream;
    # As Debian's nginx.conf has them.
    sendfile on;
    tcp_nopush on;
    gzip on;
{temp_paths}
    include {folder / "lingoloop.conf"};
}}
"""
    )
    return main


def start_nginx(processes: Processes, folder: Path, *, webs: list[str]) -> str:
    folder.mkdir()
    port = free_port()
    config = render_nginx(folder, port=port, webs=webs)
    assert NGINX is not None
    command = [NGINX, "-p", str(folder), "-e", str(folder / "nginx-error.log"), "-c", str(config)]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = processes.start("nginx", [*command, "-g", "daemon off;"], dict(os.environ))
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, processes.log_of(process).read_text(errors="replace")
        try:
            return httpx.get(f"{base}/api/health", headers={"Host": HOST}, timeout=1).is_success
        except httpx.HTTPError:
            return False

    wait_until(answers, 30, "nginx to answer")
    return base


def collect_static(processes: Processes, data_dirs: list[Path]) -> None:
    """`manage.py collectstatic` into the first DATA_DIR, copied to the others (as each web
    machine would run it)."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=processes.env(data_dir=data_dirs[0]),
        check=True,
    )
    for other in data_dirs[1:]:
        shutil.copytree(data_dirs[0] / "staticfiles", other / "staticfiles", dirs_exist_ok=True)


def kill_while_running(cluster: subprocess.Popen[bytes]) -> Job:
    """SIGKILL the cluster's whole process group while one of its processes runs a job (as
    a machine that is lost would), and that job. Jobs of 2-3 s clips are short: the cluster is
    frozen (SIGSTOP) while the test looks, so that the job it sees is the one that dies."""
    cluster_id = Worker.objects.get(pid=cluster.pid).id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        os.killpg(cluster.pid, signal.SIGSTOP)
        running = Job.objects.held_by_cluster(cluster_id).first()
        if running is not None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()
            return running
        os.killpg(cluster.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the first cluster ran no job for 60 s")


def web_of_request(logs: dict[str, Path], request_id: str) -> str:
    """Which web process answered the upload with this X-Request-ID (its access log says)."""
    mark = '"POST /api/transcribe" 202 '
    tag = f"[req={uuid.UUID(request_id).hex[:8]}]"

    def find() -> str | None:
        for base, log in logs.items():
            for line in log.read_text(errors="replace").splitlines():
                if mark in line and tag in line:
                    return base
        return None

    return str(wait_until(find, 10, f"the access log line of upload {request_id}"))


def oversize_upload(nginx: str, token: str, *, declared: bool) -> tuple[int, dict[str, Any]]:
    """POST /api/transcribe with a body over the limit, on a bare socket so that nothing
    hides what happens: `declared`, a Content-Length over the limit and no body; else a
    chunked body (no length given) sent until the server answers. The status and JSON body
    of the answer."""
    port = int(nginx.rsplit(":", 1)[1])
    framing = (
        f"Content-Length: {MAX_UPLOAD_BYTES + ENVELOPE_BYTES + 1}"
        if declared
        else "Transfer-Encoding: chunked"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /api/transcribe HTTP/1.1\r\n"
                f"Host: {HOST}\r\n"
                f"Authorization: Bearer {token}\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\n"
                f"{framing}\r\n\r\n"
            ).encode()
        )
        if not declared:
            for piece in _oversize_body():
                if select.select([sock], [], [], 0)[0]:
                    break  # answered already
                try:
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                except OSError:
                    break  # it stopped reading: its answer is waiting
        answer = b""
        while not _complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head, "no answer at all"
    return int(head.split()[1]), json.loads(body)


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return bool(found) and length is not None and len(body) >= int(length.group(1))


def _oversize_body() -> Iterator[bytes]:
    """A multipart body that grows past the limit, in pieces."""
    yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
    for _ in range((MAX_UPLOAD_BYTES + ENVELOPE_BYTES) // 65536 + 4):
        yield b"\0" * 65536
    yield b"\r\n--x--\r\n"


# --- What each watcher must have seen ------------------------------------------------------


def stored_events(run_ids: list[str]) -> dict[str, list[tuple[int, str, float]]]:
    """Every stored event of each run's channel: (id, name, when it was made), in id order."""
    found: dict[str, list[tuple[int, str, float]]] = {run_id: [] for run_id in run_ids}
    rows = StoredEventRow.objects.filter(channel__in=[f"run-{r}" for r in run_ids]).order_by(
        "channel", "eid"
    )
    for channel, eid, name, created in rows.values_list("channel", "eid", "type", "created"):
        found[channel.removeprefix("run-")].append((eid, name, created.timestamp()))
    return found


def check_stream(
    stream: EventStream, stored: list[tuple[int, str, float]], what: str
) -> list[tuple[float, float]]:
    """The stream began with `init`, then had each stored event made after it, once, in
    order, up to one `done`, and nothing else but heartbeats. Returns each event's delay
    (received - made) and when it was made."""
    events: list[Event] = [e for e in stream.events if e.name != "heartbeat"]
    assert stream.status == 200, (what, stream.status, stream.body)
    assert events and events[0].name == "init", (what, stream.names())
    start = int(events[0].id or 0)
    got = [(int(e.id or -1), e.name) for e in events[1:]]
    if events[0].data["status"] in {"succeeded", "failed", "cancelled"}:
        assert got == [(start, "done")], (what, got)  # connected after the end
        return []
    expected = [(eid, name) for eid, name, _ in stored if eid > start and name != "init"]
    done_at = next(i for i, (_, name) in enumerate(expected) if name == "done")
    assert got == expected[: done_at + 1], (what, got, expected)
    made = {eid: when for eid, _, when in stored}
    return [(e.received_at - made[int(e.id or -1)], made[int(e.id or -1)]) for e in events[1:]]


def late(delays: list[tuple[float, float]], since: float) -> list[str]:
    """The events received a second or more after they were made: when (seconds into the
    test) and how late."""
    return [
        f"made at {made - since:.2f} s, received {delay:.2f} s later"
        for delay, made in sorted(delays, key=lambda item: item[1])
        if delay >= MAX_EVENT_DELAY
    ]


def spread(stored: list[tuple[int, str, float]], after_id: int) -> float:
    """Seconds between the first and the last event a watcher connected at `after_id` got."""
    times = [when for eid, _, when in stored if eid > after_id]
    return max(times) - min(times) if times else 0.0


# --- The test ------------------------------------------------------------------------------


def test_two_web_processes_and_two_clusters_behind_nginx(
    prerequisites, processes, s3_store, tmp_path, caplog
):
    began = time.monotonic()
    # Not a line per request of the S3 server and of this test's own client.
    caplog.set_level(logging.WARNING, logger="werkzeug")
    caplog.set_level(logging.WARNING, logger="httpx")
    alice = make_account("alice")
    shared = {
        **s3_store.env(),
        "ALLOWED_HOSTS": f"{HOST},127.0.0.1",
        "TRUSTED_PROXY_COUNT": "1",
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "USER_MAX_ACTIVE_RUNS": str(RUNS * 2),
        "UPLOADS_PER_MINUTE": str(RUNS * 5),
        # An event that the killed cluster stored but had no time to publish on Redis reaches
        # the web processes by their read of the database: every 5 s by default, with which
        # this test saw such events 1.9 s late. deploy/lingoloop.env.example sets it too.
        "REDIS_SAFETY_POLL_MS": "500",
    }
    worker_env = {
        **shared,
        # One engine thread a cluster: two clusters fill the two cores.
        "WHISPER_CPU_THREADS": "1",
        "MAX_CONCURRENT_JOBS": "1",
        # A killed cluster's job is taken back within seconds, and retried at once.
        "JOB_LEASE_SECONDS": "6",
        "JOB_PICK_HOLD_SECONDS": "3",
        "WORKER_RETRY_DELAYS": "100",
    }
    web_dirs = [tmp_path / "web-1", tmp_path / "web-2"]
    collect_static(processes, web_dirs)
    webs: list[str] = []
    web_logs: dict[str, Path] = {}  # each web process's log, its access log among it
    for data_dir in web_dirs:
        webs.append(processes.web(data_dir=data_dir, **shared))
        web_logs[webs[-1]] = processes.started[-1][1]
    clusters = [processes.worker(data_dir=tmp_path / f"worker-{n}", **worker_env) for n in (1, 2)]
    nginx = start_nginx(processes, tmp_path / "nginx", webs=webs)
    started = time.monotonic() - began
    files = clips(tmp_path / "clips", RUNS)

    proxy = httpx.Client(
        base_url=nginx, headers={"Host": HOST, "Authorization": f"Bearer {alice.token}"}, timeout=60
    )
    # Static files come through (from the web processes' collectstatic folders).
    style = proxy.get("/static/css/app.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert style.text == (ROOT / "lingoloop" / "static" / "css" / "app.css").read_text()

    runs: list[dict[str, Any]] = []
    took: list[str] = []
    watchers: list[EventStream] = []
    through_nginx: dict[int, EventStream] = {}
    doomed, killed_job = clusters[0], None
    uploads_began, began_at = time.monotonic(), time.time()
    try:
        for i, path in enumerate(files):
            request_id = str(uuid.uuid4())
            with path.open("rb") as handle:
                answer = proxy.post(
                    "/api/transcribe",
                    files={"file": (path.name, handle, "audio/wav")},
                    data={"mode": "async"},
                    headers={"X-Request-ID": request_id},
                )
            assert answer.status_code == 202, answer.text
            run = answer.json()
            runs.append(run)
            web = web_of_request(web_logs, request_id)
            took.append(web)
            other = next(base for base in webs if base != web)
            query = f"?access_token={run['eventsToken']}"
            watchers.append(EventStream(f"{other}{run['links']['events']}{query}"))
            if i in WATCHED_THROUGH_NGINX:
                # As a browser asks: compressed if the proxy will (it must not: a compressor
                # holds events back until its block fills).
                through_nginx[i] = EventStream(
                    f"{nginx}{run['links']['events']}{query}",
                    headers={"Host": HOST, "Accept-Encoding": "gzip, deflate, br"},
                )
            if i == RUNS // 2:
                # Mid-way: the first cluster dies whole (as with a lost machine) while it
                # runs a job, and a new one takes its place.
                killed_job = kill_while_running(doomed)
                killed_at = time.time()
                clusters.append(processes.worker(data_dir=tmp_path / "worker-3", **worker_env))
        uploaded = time.monotonic() - uploads_began

        run_ids = [run["runId"] for run in runs]
        wait_until(
            lambda: (
                TranscriptRun.objects.filter(pk__in=run_ids, status="succeeded").count() == RUNS
            ),
            240,
            "every run to succeed",
        )
        finished = time.monotonic() - uploads_began
        for stream in [*watchers, *through_nginx.values()]:
            assert stream.ended.wait(10), f"a stream did not end after its done: {stream.names()}"
    finally:
        for stream in [*watchers, *through_nginx.values()]:
            stream.close()

    # Both web processes took uploads (nginx spread them), and each was watched from the other.
    per_web = Counter(took)
    assert set(per_web) == set(webs) and min(per_web.values()) >= RUNS // 10, per_web

    # Every run ended once: one job, succeeded; one stored `done`; text from its speech.
    jobs = list(Job.objects.filter(run_id__in=run_ids))
    assert Counter(str(job.run_id) for job in jobs) == Counter(run_ids)
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}
    assert killed_job is not None
    killed_job.refresh_from_db()
    assert (killed_job.attempts, killed_job.last_error) == (
        2,
        "The worker running it stopped unexpectedly.",
    )
    assert sum(job.attempts for job in jobs) == RUNS + 1
    stored = stored_events(run_ids)
    assert all([name for _, name, _ in events].count("done") == 1 for events in stored.values())
    assert all(run.text.strip() for run in TranscriptRun.objects.filter(pk__in=run_ids))

    # Every watcher: its events in order, none missing, none twice, one `done`, each within a
    # second of its making; through nginx as directly.
    direct: list[tuple[float, float]] = []
    for run, stream in zip(runs, watchers, strict=True):
        direct += check_stream(stream, stored[run["runId"]], f"run {run['runId']}")
    proxied: list[tuple[float, float]] = []
    for i, stream in through_nginx.items():
        run_id = runs[i]["runId"]
        proxied += check_stream(stream, stored[run_id], f"run {run_id} through nginx")
        assert "content-encoding" not in stream.response_headers, stream.response_headers
        # It lasted long enough for a buffering proxy to show.
        assert spread(stored[run_id], int(stream.events[0].id or 0)) > 2
    killed_run = str(killed_job.run_id)
    recovered = TranscriptRun.objects.get(pk=killed_run).finished_at.timestamp() - killed_at
    killed_watcher = watchers[run_ids.index(killed_run)]
    assert any(e.name == "error" and e.data["willRetry"] for e in killed_watcher.events)
    kill_note = f"(the kill at {killed_at - began_at:.2f} s)"
    assert not late(direct, began_at), (kill_note, late(direct, began_at)[:20])
    assert not late(proxied, began_at), (kill_note, late(proxied, began_at)[:20])
    direct_delays = [delay for delay, _ in direct]
    proxied_delays = [delay for delay, _ in proxied]

    # The 413 through nginx, in the API's error shape: a declared size over the limit is
    # refused by nginx itself (no web process sees it), a body of unknown length that grows
    # past it by whichever counts first.
    def web_413s() -> int:
        return sum(log.read_text().count('" 413 ') for log in web_logs.values())

    before = web_413s()
    status, body = oversize_upload(nginx, alice.token, declared=True)
    assert (status, body["error"]["code"], body["error"]["field"]) == (
        413,
        "file_too_large",
        "file",
    )
    assert web_413s() == before  # nginx answered it
    status, body = oversize_upload(nginx, alice.token, declared=False)
    assert (status, body["error"]["code"], body["error"]["field"]) == (
        413,
        "file_too_large",
        "file",
    )
    streamed_413_by = "a web process" if web_413s() > before else "nginx"
    assert Audio.objects.filter(owner=alice.user).count() == RUNS

    # Deleting the runs (through nginx) leaves no object in the bucket and no row.
    assert len(s3_store.objects()) == RUNS
    for run_id in run_ids:
        assert proxy.delete(f"/api/runs/{run_id}").status_code == 204
    wait_until(lambda: not s3_store.objects(), 10, "the bucket to be empty")
    assert not TranscriptRun.objects.filter(owner=alice.user).exists()
    assert not Audio.objects.filter(owner=alice.user).exists()
    assert not Job.objects.filter(run_id__in=run_ids).exists()
    assert not PendingDeletion.objects.exists()

    def quantile(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q * 100) - 1]

    print(
        f"\nmulti-node: {RUNS} runs of 2-3 s through nginx to 2 web processes "
        f"({', '.join(str(n) for n in per_web.values())} uploads), 2 worker clusters "
        f"(one killed -9 after upload {RUNS // 2}, its job retried once; a new one started)\n"
        f"  start-up (collectstatic, 2 webs, 2 clusters, nginx): {started:.1f} s\n"
        f"  uploads: {uploaded:.1f} s; first upload to last run done: {finished:.1f} s; "
        f"the killed cluster's run done {recovered:.1f} s after the kill\n"
        f"  events checked: {len(direct_delays)} on the other web process, "
        f"{len(proxied_delays)} through nginx\n"
        f"  event delay (made to received), other web process: median "
        f"{statistics.median(direct_delays) * 1000:.0f} ms, p99 "
        f"{quantile(direct_delays, 0.99) * 1000:.0f} ms, max {max(direct_delays) * 1000:.0f} ms\n"
        f"  event delay through nginx: median {statistics.median(proxied_delays) * 1000:.0f} ms, "
        f"max {max(proxied_delays) * 1000:.0f} ms\n"
        f"  413 through nginx: a declared oversize body by nginx, a chunked one by "
        f"{streamed_413_by}\n"
        f"  whole test: {time.monotonic() - began:.1f} s"
    )
