from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import av
import httpx
import jiwer
import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.sseclient import EventStream
from transcription.models import TranscriptRun

# The browser tests' fixtures (`ui` and what it needs) and the local S3 store (`s3_store`).
pytest_plugins = ["tests.browser", "tests.s3server"]

ROOT = Path(__file__).resolve().parent.parent
# A copy of ../shared/audio/jfk.flac (public domain), tracked so the suite runs anywhere.
JFK = ROOT / "tests" / "data" / "jfk.flac"
JFK_REFERENCE = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def _own_redis_database() -> None:
    """Under pytest-xdist each pytest worker has a test database of its own, in which user
    ids (and so users' event channels) repeat: each gets a Redis database of its own too
    (REDIS_URL's plus one plus its number), so no worker's listeners hear another's events.
    The processes tests start inherit it through the environment."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    url = os.environ.get("REDIS_URL")
    if not (url and worker.startswith("gw")):
        return
    parsed = urlparse(url)
    db = int(parsed.path.lstrip("/") or 0) + 1 + int(worker[2:])
    os.environ["REDIS_URL"] = settings.REDIS_URL = parsed._replace(path=f"/{db}").geturl()
    if getattr(settings, "EVENTS_REDIS", None):
        settings.EVENTS_REDIS = {**settings.EVENTS_REDIS, "db": db}
        settings.EVENTS_REDIS_CHANNEL = f"lingoloop-events-db{db}"  # as the settings name it


_own_redis_database()


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: how transcripts are compared."""
    return re.findall(r"[a-z0-9']+", text.lower())


def reference_wer(text: str, repeats: int = 1) -> float:
    """The word error rate of `text` against jfk.flac's words said `repeats` times.

    Sequential decoding falls back to sampling at a higher temperature where a window's text
    fails faster-whisper's checks, and repeated speech does (it compresses well): the same
    audio then comes back with a word or two changed ("America asks" for "Americans ask") or
    dropped from one run to the next. A test that means "every repetition, none twice" bounds
    this rate rather than counting a word: one repetition lost or doubled is 1/`repeats`."""
    reference = " ".join(words(JFK_REFERENCE) * repeats)
    return float(jiwer.wer(reference, " ".join(words(text))))


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _first_lapse(predicate: Callable[[], object], for_seconds: float) -> float | None:
    """Check `predicate` again and again for `for_seconds`: the time at which it was first
    false, or None if it held throughout."""
    started = time.monotonic()
    while True:
        if not predicate():
            return time.monotonic() - started
        if time.monotonic() - started >= for_seconds:
            return None
        time.sleep(0.05)


def stays_true(predicate: Callable[[], object], for_seconds: float, what: str) -> None:
    """Fail the first time `predicate` is false within `for_seconds`.

    How a test shows that something does *not* happen: a bare sleep followed by one assert
    looks once, at the end, and says nothing of what the time was for."""
    lapse = _first_lapse(predicate, for_seconds)
    if lapse is not None:
        raise AssertionError(f"{what} stopped holding after {lapse:.2f}s of {for_seconds}s")


def never_happens(predicate: Callable[[], object], for_seconds: float, what: str) -> None:
    """Fail as soon as `predicate` is true within `for_seconds` (see `stays_true`)."""
    lapse = _first_lapse(lambda: not predicate(), for_seconds)
    if lapse is not None:
        raise AssertionError(f"{what} happened after {lapse:.2f}s (watched for {for_seconds}s)")


def redis_reachable() -> bool:
    url = os.environ.get("REDIS_URL")
    if not url:
        return False
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture(scope="session", autouse=True)
def _event_hub_connections_closed(django_db_setup) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The event hub's database threads keep their connections for a second after their last
    read (in-process stream requests use them); close them before the test database is
    dropped, which PostgreSQL refuses while a session is open. Set up after the database, so
    torn down before it."""
    yield
    from lingoloop import eventhub

    eventhub.close_connections()


@pytest.fixture(autouse=True)
def _isolated_upload_dirs(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each test stores uploads under its own temporary DATA_DIR."""
    settings.DATA_DIR = tmp_path
    settings.UPLOAD_DIR = tmp_path / "uploads"
    settings.UPLOAD_TEMP_DIR = tmp_path / "tmp"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "tmp")
    settings.UPLOAD_DIR.mkdir()
    settings.UPLOAD_TEMP_DIR.mkdir()
    cache.clear()  # upload throttles count per user id, and ids repeat across tests


@pytest.fixture
def jfk() -> Path:
    return JFK


@dataclass
class Account:
    user: object
    token: str
    client: APIClient


def make_account(username: str, *, staff: bool = False) -> Account:
    user = get_user_model().objects.create_user(
        username=username, password=f"{username}-password-1", is_staff=staff
    )
    token = Token.objects.create(user=user).key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return Account(user=user, token=token, client=client)


@pytest.fixture
def alice(db) -> Account:  # type: ignore[no-untyped-def]
    return make_account("alice")


@pytest.fixture
def root(db) -> Account:  # type: ignore[no-untyped-def]
    """A superuser: every admin page and action."""
    account = make_account("root", staff=True)
    account.user.is_superuser = True  # type: ignore[attr-defined]
    account.user.save()  # type: ignore[attr-defined]
    return account


@pytest.fixture
def bob(db) -> Account:  # type: ignore[no-untyped-def]
    return make_account("bob")


def stored_path(audio: Any) -> Path:
    """Where the local audio storage keeps an Audio row's file."""
    return Path(settings.UPLOAD_DIR) / audio.stored_name


def stored_files() -> list[Path]:
    return sorted(p for p in Path(settings.UPLOAD_DIR).iterdir())


# --- Uploads through the test client --------------------------------------------------------


def post_audio(
    client: Client,
    audio: Path | bytes,
    name: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **fields: object,
) -> Any:
    """POST /api/transcribe with one file (a path, or bytes under `name`) and the form
    `fields`, as a multipart form: exactly what is given, nothing added."""
    content = audio.read_bytes() if isinstance(audio, Path) else audio
    filename = name or (audio.name if isinstance(audio, Path) else "upload.bin")
    data = {"file": SimpleUploadedFile(filename, content), **fields}
    return client.post("/api/transcribe", data, headers=headers)


def queued_run(client: Client, audio: Path = JFK, **fields: Any) -> dict[str, Any]:
    """A run queued through the API in async mode (no transcription in the request)."""
    response = post_audio(client, audio, mode="async", **fields)
    assert response.status_code == 202, response.content
    return dict(response.json())


# --- Real processes -----------------------------------------------------------------------


def _database_url() -> str:
    """The URL of the test database, for processes the tests start."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Starts web and worker processes against the test database; stops them all after."""

    def __init__(self, data_dir: Path, logs: Path) -> None:
        self.data_dir = data_dir
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self, *, data_dir: Path | None = None, **extra: str) -> dict[str, str]:
        """The environment of a started process: the test database and secret key, and
        `data_dir` (the test's own DATA_DIR unless given: a process "on another machine")."""
        data_dir = data_dir or self.data_dir
        env = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "DATA_DIR": str(data_dir),
            # Not this test process's folder (the settings put it in os.environ).
            "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "metrics"),
            "SECRET_KEY": settings.SECRET_KEY,
            "POLL_INTERVAL": "100",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(extra)
        return env

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Any command (nginx…), in its own process group, logged and stopped like the rest."""
        return self._start(name, args, env)

    def log_of(self, process: subprocess.Popen[bytes]) -> Path:
        return next(log for started, log in self.started if started is process)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}-{len(self.started)}.log"
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((process, log))
        return process

    def worker(self, *, data_dir: Path | None = None, **extra_env: str) -> subprocess.Popen[bytes]:
        process = self._start(
            "worker",
            [sys.executable, "manage.py", "worker"],
            self.env(data_dir=data_dir, **extra_env),
        )
        log = self.started[-1][1]
        wait_until(
            lambda: "running." in log.read_text(errors="replace") or process.poll() is not None,
            60,
            "the worker cluster to start",
        )
        assert process.poll() is None, log.read_text(errors="replace")
        return process

    def web(self, *, data_dir: Path | None = None, **extra_env: str) -> str:
        port = free_port()
        process = self._start(
            "web",
            [sys.executable, "-m", "lingoloop.server", "-b", "127.0.0.1", "-p", str(port)],
            self.env(data_dir=data_dir, **extra_env),
        )
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert process.poll() is None, self.started[-1][1].read_text(errors="replace")
            try:
                return httpx.get(f"{base}/api/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the web server to answer")
        return base

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 30) -> int:
        """SIGTERM to the process (as `kill` would), then SIGKILL to what is left of it."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()

    def stop_all(self) -> None:
        for process, _log in self.started:
            self.stop(process)


@pytest.fixture
def processes(transactional_db, settings, tmp_path: Path, request) -> Iterator[Processes]:  # type: ignore[no-untyped-def]
    logs = ROOT / "test-artifacts" / "logs" / request.node.name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    procs = Processes(Path(settings.DATA_DIR), logs)
    yield procs
    procs.stop_all()


class Service:
    """The product as a client meets it over HTTP: a web process, the worker clusters a test
    starts, and Alice, who submits through the API with her token."""

    def __init__(self, processes: Processes, account: Account) -> None:
        self.processes = processes
        self.account = account
        self.web_url = ""

    def start_web(self, **env: str) -> str:
        self.web_url = self.processes.web(**env)
        return self.web_url

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.processes.worker(**env)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the web process with Alice's token (read when sent: tests change it)."""
        headers = {"Authorization": f"Bearer {self.account.token}"}
        return httpx.request(method, self.web_url + path, headers=headers, timeout=120, **kwargs)

    def post(self, path: Path, **fields: str) -> httpx.Response:
        """POST `path` to /api/transcribe with exactly these form fields."""
        with path.open("rb") as handle:
            return self.api(
                "POST", "/api/transcribe", files={"file": (path.name, handle)}, data=fields
            )

    def submit(self, path: Path = JFK, **fields: str) -> dict[str, Any]:
        """A run queued in async mode with these options, as its JSON."""
        response = self.post(path, **{"mode": "async", **fields})
        assert response.status_code == 202, response.text
        return dict(response.json())

    def events_url(self, run: dict[str, Any]) -> str:
        """The run's event stream with its read-only events token, as a browser opens it."""
        return f"{self.web_url}{run['links']['events']}?access_token={run['eventsToken']}"

    def events(self, run: dict[str, Any]) -> EventStream:
        return EventStream(self.events_url(run))

    def wait_for_status(self, run_id: str, status: str, timeout: float = 120) -> TranscriptRun:
        wait_until(
            lambda: TranscriptRun.objects.get(pk=run_id).status == status,
            timeout,
            f"run {run_id} to be {status}",
        )
        return TranscriptRun.objects.get(pk=run_id)


@pytest.fixture
def service(processes: Processes) -> Service:
    """Real processes and Alice; the test starts the web process and workers it needs."""
    return Service(processes, make_account("alice"))


def speech_16k(repeats: int = 1) -> np.ndarray:
    """jfk.flac said `repeats` times with a second of silence after each, as 16 kHz mono
    16-bit samples (decoded with PyAV here, as the service does)."""
    with av.open(str(JFK)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        frames = [*container.decode(audio=0), None]
        parts = [out.to_ndarray().reshape(-1) for f in frames for out in resampler.resample(f)]
    unit = np.concatenate([*parts, np.zeros(16000, dtype=np.int16)])
    return np.tile(unit, repeats)


def long_speech(path: Path, repeats: int) -> Path:
    """A WAV of jfk.flac said `repeats` times with a second of silence between: long audio
    built in the test rather than committed."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(speech_16k(repeats).astype("<i2").tobytes())
    return path


def flac_speech(path: Path, repeats: int, *, claimed_seconds: float | None = None) -> Path:
    """Real speech as a 16 kHz FLAC; with `claimed_seconds`, its STREAMINFO lies about its
    length (as a hostile upload's would)."""
    samples = speech_16k(repeats)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    if claimed_seconds is not None:
        data = bytearray(path.read_bytes())
        start = 8 + 10  # 'fLaC', block header, block and frame sizes; then rate/channels/total
        packed = int.from_bytes(data[start : start + 8], "big")
        packed = (packed & ~((1 << 36) - 1)) | int(claimed_seconds * 16000)
        data[start : start + 8] = packed.to_bytes(8, "big")
        path.write_bytes(bytes(data))
    return path
