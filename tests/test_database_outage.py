"""PostgreSQL stopped while a long job runs, and started again (issue 18).

The test runs its own PostgreSQL server in a temporary folder (initdb and pg_ctl of the
installed PostgreSQL) so that it can stop it; web and worker processes use that server, and
the test reads it over HTTP and with psycopg. What must hold: while the database is away,
requests are answered 503 in the API's error shape, quickly; an open event stream ends cleanly
or stays open, and a client that reconnects with its Last-Event-ID gets what it missed, once;
the job's attempt survives an outage shorter than its lease (JOB_LEASE_SECONDS); nothing is
lost or doubled once the database is back, and no process is restarted.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import (
    JFK,
    ROOT,
    Processes,
    free_port,
    long_speech,
    reference_wer,
    wait_until,
)
from tests.sseclient import EventStream

pytestmark = pytest.mark.slow


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    return found


class PrivatePostgres:
    """A PostgreSQL server of the test's own, on a free port, as the OS user `postgres` when
    this runs as root (initdb refuses root)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True)

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        initdb = _postgres_bin("initdb")
        assert initdb
        self._run(initdb, "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off"
        )
        pg_ctl = _postgres_bin("pg_ctl")
        assert pg_ctl
        # -l: the server must not hold our output pipe, or `run` waits for it for ever.
        self._run(pg_ctl, "-D", str(self.folder / "data"), "-o", options, "-l",
                  str(self.folder / "server.log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        pg_ctl = _postgres_bin("pg_ctl")
        assert pg_ctl
        self._run(pg_ctl, "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    if _postgres_bin("initdb") is None or _postgres_bin("pg_ctl") is None:
        pytest.skip("no initdb/pg_ctl: PostgreSQL's server is not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses root")
    server = PrivatePostgres(Path("/tmp") / f"lingoloop-pg-{tmp_path.name}-{os.getpid()}")
    server.init()
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            [*server.as_user, _postgres_bin("pg_ctl") or "pg_ctl", "-D",
             str(server.folder / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(server.folder, ignore_errors=True)


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


TOKEN_FOR_ALICE = (
    "from django.contrib.auth.models import User; from rest_framework.authtoken.models import "
    "Token; u = User.objects.create_user('alice', password='alice-password-1'); "
    "print(Token.objects.create(user=u).key)"
)


def test_postgres_stopped_while_a_long_job_runs_costs_a_503_and_nothing_else(
    postgres: PrivatePostgres, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    logs = ROOT / "test-artifacts" / "logs" / request.node.name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    procs = Processes(tmp_path, logs)
    own = {
        "DATABASE_URL": postgres.url,
        "REDIS_URL": "",  # events through the database: the path that needs it most
        "JOB_LEASE_SECONDS": "40",
        "WHISPER_BATCH_SIZE": "0",  # sequential: segments, and so writes, all along
        "CHUNK_LONGER_THAN_SECONDS": "0",
    }
    env = procs.env(**own)
    manage(env, "migrate", "--noinput", "-v0")
    token = manage(env, "shell", "-c", TOKEN_FOR_ALICE).split()[-1]
    auth = {"Authorization": f"Bearer {token}"}
    try:
        base = procs.web(**own)
        procs.worker(**own)
        audio = long_speech(tmp_path / "long.wav", 6)  # about 70 s of speech
        with audio.open("rb") as handle:
            submitted = httpx.post(
                f"{base}/api/transcribe",
                headers=auth,
                files={"file": (audio.name, handle)},
                data={"mode": "async"},
                timeout=60,
            )
        assert submitted.status_code == 202, submitted.text
        run = submitted.json()
        run_id = run["runId"]
        events_url = f"{base}{run['links']['events']}?access_token={run['eventsToken']}"
        stream = EventStream(events_url)

        def progressing() -> bool:
            return any(e.name == "update" and e.data.get("progress", 0) > 0 for e in stream.events)

        wait_until(progressing, 90, "the job to make progress")

        postgres.stop()
        down_at = time.monotonic()
        # Requests meanwhile: a 503 in the error shape, quickly, never a hang or a 500.
        for path in (f"/api/runs/{run_id}", "/api/runs", "/api/health"):
            began = time.monotonic()
            answer = httpx.get(f"{base}{path}", headers=auth, timeout=30)
            took = time.monotonic() - began
            assert answer.status_code == 503, (path, answer.status_code, answer.text)
            assert took < 3, f"{path} took {took:.1f} s to answer"
            if path != "/api/health":
                assert answer.json()["error"]["code"] == "database_unavailable"
                assert answer.headers["Retry-After"]
        # OpenAI's API answers in OpenAI's shape, which its SDK reads (and retries a 503).
        with JFK.open("rb") as handle:
            for method, path, files in [
                ("GET", "/v1/models", None),
                ("POST", "/v1/audio/transcriptions", {"file": ("jfk.flac", handle)}),
            ]:
                answer = httpx.request(
                    method, f"{base}{path}", headers=auth, files=files, timeout=30
                )
                assert answer.status_code == 503, (path, answer.status_code, answer.text)
                error = answer.json()["error"]
                assert (error["type"], error["code"]) == ("server_error", "database_unavailable")
        time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # a 10 s outage in all
        postgres.start()

        # The stream ended cleanly or stayed open; either way, a reconnect from its last id
        # brings everything else, once, in order, up to `done`.
        seen = [e for e in stream.events if e.id]
        stream.close()
        last_id = seen[-1].id

        def reconnected() -> EventStream | None:
            """As EventSource does: again, until the stream opens (503 while the web
            process's pool connects anew)."""
            attempt = EventStream(events_url, headers={"Last-Event-ID": str(last_id)})
            if attempt.status == 200:
                return attempt
            assert attempt.status == 503, attempt.body
            time.sleep(0.5)
            return None

        rest = wait_until(reconnected, 30, "the stream to open again")
        assert isinstance(rest, EventStream)
        rest.wait_for("done", timeout=180)
        rest.close()
        after = [e for e in rest.events if e.id and e.name != "init"]
        ids = [int(e.id) for e in seen] + [int(e.id) for e in after if e.id]
        assert ids == sorted(set(ids)), "an event was repeated or came out of order"
        assert [e.name for e in after].count("done") == 1

        status, attempts, text = postgres.query(
            "SELECT r.status, j.attempts, r.text FROM transcript_run r "
            "JOIN job j ON j.run_id = r.id WHERE r.id = %s",
            run_id,
        )[0]
        assert status == "succeeded"
        assert attempts == 1, "the outage cost the job its attempt"
        # Every repetition, none twice: one lost or doubled is a sixth of the words. (Not a
        # count of one word: this sequential decoding samples where its text fails its checks,
        # and "Americans" comes back as "America" in some runs, outage or not.)
        assert reference_wer(str(text), 6) < 0.1, text
        segments = postgres.query("SELECT segments FROM transcript_run WHERE id = %s", run_id)[0][0]
        assert isinstance(segments, list)
        assert [s["id"] for s in segments] == list(range(len(segments)))
        ends = [(s["start"], s["end"]) for s in segments]
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ends)), (
            "segments overlap: one was written twice"
        )
        assert " ".join(s["text"] for s in segments if s["text"]) == text
        streamed = sum(len(e.data.get("newSegments") or []) for e in seen + after)
        assert streamed == len(segments), "a segment was lost or sent twice on the way"

        # The same processes answer again.
        assert httpx.get(f"{base}/api/runs/{run_id}", headers=auth, timeout=10).status_code == 200
        for process, _log in procs.started:
            assert process.poll() is None
    finally:
        procs.stop_all()
