"""`lingoloop`, the command-line client, run as a user runs it (a subprocess) against real web
and worker processes: transcripts written, streams cut and resumed, Ctrl-C, a server that is
down or refuses, and what it does with bad input before it sends anything."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lingoloop.client import config
from lingoloop.client.api import Api
from lingoloop.client.cli import safe_stem
from lingoloop.client.follow import RunState, follow
from tests.conftest import (
    JFK,
    JFK_REFERENCE,
    ROOT,
    Service,
    free_port,
    long_speech,
    wait_until,
    words,
)
from tests.proxy import TcpProxy

# The web process transcribes nothing in the request: every run goes through the queue and
# its event stream, which is what the client follows.
ASYNC_ONLY = {"TRANSCRIBE_SYNC_MAX_DURATION_MS": "0"}


def cli_env(tmp_path: Path, url: str | None, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINGOLOOP_")}
    env["LINGOLOOP_CONFIG_DIR"] = str(tmp_path / "config")
    if url:
        env["LINGOLOOP_URL"] = url
    if token:
        env["LINGOLOOP_TOKEN"] = token
    return env


def lingoloop(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lingoloop.client", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def started(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lingoloop.client", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background (`make test &`) hands its children SIGINT
        # ignored, and Python keeps it so: the client must hear Ctrl-C as a terminal sends it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


# --- Without a server ------------------------------------------------------------------------


def test_the_client_does_not_import_django():
    probe = (
        "import sys; from lingoloop.client import cli;"
        "code = cli.main(['--help']) if False else 0; cli.parser().format_help();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    shown = subprocess.run(
        [sys.executable, "-m", "lingoloop.client", "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "transcribe" in shown.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["transcribe", "no-such-file.wav"], "no-such-file.wav: no such file"),
        (["transcribe", "tests"], "tests: not a file"),
        (["show", "../admin"], "is not a run id"),
        (["transcribe", str(JFK), "--format", "doc"], "invalid choice"),
        (["transcribe", str(JFK), "--json", "--output", "-"], "choose one"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_before_anything_is_sent(tmp_path, args, says):
    # The URL is a port nothing listens on: a usage error must be found without the server.
    done = lingoloop(*args, env=cli_env(tmp_path, f"http://127.0.0.1:{free_port()}", "t"))
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_two_inputs_that_would_write_one_transcript_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "talk.flac", tmp_path / "b" / "talk.flac"
    shutil.copy(JFK, first)
    shutil.copy(JFK, second)
    env = cli_env(tmp_path, f"http://127.0.0.1:{free_port()}", "t")
    done = lingoloop("transcribe", str(first), str(second), "--output", str(tmp_path), env=env)
    assert done.returncode == 2
    assert "both be written" in done.stderr


def test_a_server_that_is_down_exits_3(tmp_path):
    env = cli_env(tmp_path, f"http://127.0.0.1:{free_port()}", "some-token")
    for args in (["runs"], ["transcribe", str(JFK)]):
        done = lingoloop(*args, env=env)
        assert done.returncode == 3, done.stderr
        assert "Cannot reach http://127.0.0.1:" in done.stderr
        assert "Traceback" not in done.stderr


def test_not_logged_in_exits_3_and_says_how(tmp_path):
    done = lingoloop("runs", env=cli_env(tmp_path, None, None))
    assert done.returncode == 3
    assert "lingoloop login" in done.stderr


@pytest.fixture
def html_server() -> Iterator[str]:
    """A web server that is not LingoLoop: a proxy's error page for everything."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_answer_that_is_not_the_api_is_shown_as_such(tmp_path, html_server):
    done = lingoloop("runs", env=cli_env(tmp_path, html_server, "t"))
    assert done.returncode == 1
    assert "502 Bad Gateway with text/html, not LingoLoop's API" in done.stderr
    assert "<html>" not in done.stderr and "Traceback" not in done.stderr


def test_a_saved_login_that_others_can_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LINGOLOOP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LINGOLOOP_URL", raising=False)
    monkeypatch.delenv("LINGOLOOP_TOKEN", raising=False)
    path = config.save(config.Login("http://127.0.0.1:8000", "secret"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config.load() == config.Login("http://127.0.0.1:8000", "secret")

    # LINGOLOOP_URL naming another server: the saved token is not sent there.
    monkeypatch.setenv("LINGOLOOP_URL", "https://elsewhere.example.com")
    with pytest.raises(config.ConfigError, match="Not logged in"):
        config.load()
    monkeypatch.setenv("LINGOLOOP_URL", "127.0.0.1:8000")
    assert config.load().token == "secret"
    monkeypatch.delenv("LINGOLOOP_URL")

    path.chmod(0o644)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        config.load()
    done = lingoloop("runs", env=cli_env(tmp_path, None, None))
    assert done.returncode == 2 and "chmod 600" in done.stderr


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("localhost:8000/", "http://localhost:8000"),
        ("lingoloop.example.com", "https://lingoloop.example.com"),
        ("https://example.com/lingoloop/", "https://example.com/lingoloop"),
    ],
)
def test_a_server_url_without_a_scheme_gets_one(typed, url):
    assert config.server_url(typed) == url


@pytest.mark.parametrize(
    "typed", ["", "ftp://example.com", "http://u:p@example.com", "http://x/?a=1"]
)
def test_a_server_url_that_is_not_one_is_refused(typed):
    with pytest.raises(config.ConfigError):
        config.server_url(typed)


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("talk.mp3", "talk"),
        ("../../etc/passwd.mp3", "passwd"),
        ("C:\\Users\\x\\talk.wav", "talk"),
        ("..", "fallback"),
        (".hidden.wav", "hidden"),
        ("bell\x07\x1b[31m.wav", "bell_[31m"),
    ],
)
def test_a_name_from_the_server_never_leaves_the_output_folder(name, stem):
    assert safe_stem(name, "fallback") == stem


def test_segments_sent_twice_are_taken_once_and_in_order():
    state = RunState("r")
    assert state.apply({"status": "processing", "newSegments": [{"id": 1}, {"id": 0}]}) == [
        {"id": 0},
        {"id": 1},
    ]
    assert state.apply({"status": "processing", "newSegments": [{"id": 1}, {"id": 2}]}) == [
        {"id": 2}
    ]
    assert state.apply({"newSegments": [{"id": "3"}, "junk", None]}) == []


# --- Against real processes ------------------------------------------------------------------


@pytest.mark.slow
def test_transcribe_two_files_to_srt_side_by_side(service: Service, tmp_path):
    service.start_web(**ASYNC_ONLY)
    service.worker()
    second = tmp_path / "inputs" / "again.flac"
    second.parent.mkdir()
    shutil.copy(JFK, second)
    out = tmp_path / "out"
    env = cli_env(tmp_path, service.web_url, service.account.token)

    done = lingoloop(
        "transcribe", str(JFK), str(second), "--format", "srt", "--output", str(out), "--json",
        env=env,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    assert [r["output"] for r in results] == [str(out / "jfk.srt"), str(out / "again.srt")]
    for result in results:
        srt = Path(result["output"]).read_text()
        assert "-->" in srt
        text = " ".join(
            line for line in srt.splitlines() if line and "-->" not in line and not line.isdigit()
        )
        assert words(text) == words(JFK_REFERENCE)


@pytest.mark.slow
def test_transcribe_to_standard_output_in_a_pipe(service: Service, tmp_path):
    service.start_web(**ASYNC_ONLY)
    service.worker()
    env = cli_env(tmp_path, service.web_url, service.account.token)

    done = lingoloop("transcribe", str(JFK), "--output", "-", env=env)

    assert done.returncode == 0, done.stderr
    assert words(done.stdout) == words(JFK_REFERENCE)  # stdout: the transcript, nothing else
    assert "jfk.flac: succeeded" in done.stderr
    assert "\x1b[" not in done.stdout + done.stderr  # no bars, no colours in a pipe


@pytest.mark.slow
def test_a_cut_stream_is_resumed_without_losing_or_repeating_a_segment(service: Service, tmp_path):
    service.start_web(**ASYNC_ONLY)
    proxy = TcpProxy(("127.0.0.1", int(service.web_url.rsplit(":", 1)[1])))
    run = service.submit(long_speech(tmp_path / "lecture.wav", repeats=8))
    # Decoded window after window (not batched): segments arrive over many seconds.
    service.worker(WHISPER_BATCH_SIZE="0")
    api = Api(proxy.url, service.account.token)
    state = RunState(run["runId"])
    seen: list[dict[str, Any]] = []
    cuts = 0

    def on_change(current: RunState, fresh: list[dict[str, Any]]) -> None:
        nonlocal cuts
        seen.extend(fresh)
        # Twice, each time a few segments after the last cut: the stream breaks mid-run.
        if cuts < 2 and len(seen) >= 3 * (cuts + 1):
            cuts += 1
            threading.Thread(target=proxy.cut).start()

    try:
        follow(api, state, on_change)
    finally:
        api.close()
        proxy.close()

    assert state.status == "succeeded"
    assert cuts == 2
    assert state.live, "it fell back to polling: the stream was not resumed"
    resumed = [r for r in proxy.requests if b"/events" in r and b"last-event-id" in r.lower()]
    assert len(resumed) >= 2
    final = service.api("GET", f"/api/runs/{run['runId']}").json()["segments"]
    assert [s["id"] for s in seen] == [s["id"] for s in final]  # none lost, none twice
    assert [s["text"] for s in seen] == [s["text"] for s in final]


@pytest.mark.slow
def test_without_a_stream_it_follows_by_polling(service: Service, tmp_path, monkeypatch):
    from lingoloop.client import follow as following
    from lingoloop.client.api import StreamUnavailable

    def no_stream(*args: Any, **kwargs: Any) -> None:
        raise StreamUnavailable("a proxy in the way")

    monkeypatch.setattr(following, "_read_stream", no_stream)
    monkeypatch.setattr(following, "POLL_SECONDS", 0.2)
    service.start_web(**ASYNC_ONLY)
    service.worker()
    run = service.submit()
    api = Api(service.web_url, service.account.token)
    statuses: list[str] = []
    try:
        state = follow(api, RunState(run["runId"]), lambda s, fresh: statuses.append(s.status))
    finally:
        api.close()
    assert state.status == "succeeded" and not state.live
    assert words(" ".join(s["text"] for s in state.segments.values())) == words(JFK_REFERENCE)
    assert statuses[-1] == "succeeded"


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """Read the process's stderr until a line holds `text`; what was read."""
    assert process.stderr is not None
    read: list[str] = []

    def reader() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            read.append(line)
            if text in line:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    assert any(text in line for line in read), "".join(read)
    return "".join(read)


@pytest.mark.slow
def test_ctrl_c_leaves_the_run_going_or_cancels_it_when_asked(service: Service, tmp_path):
    service.start_web(**ASYNC_ONLY)  # no worker: the runs wait in the queue
    env = cli_env(tmp_path, service.web_url, service.account.token)

    following = started("transcribe", str(JFK), env=env)
    wait_for_line(following, "jfk.flac: queued")
    following.send_signal(signal.SIGINT)
    _, rest = following.communicate(timeout=30)
    assert following.returncode == 130
    assert "keeps going on the server" in rest and "lingoloop watch " in rest
    run_id = rest.split("lingoloop watch ")[1].split()[0]
    assert service.api("GET", f"/api/runs/{run_id}").json()["status"] == "queued"

    cancelling = started("transcribe", str(JFK), "--cancel-on-interrupt", env=env)
    wait_for_line(cancelling, "jfk.flac: queued")
    cancelling.send_signal(signal.SIGINT)
    _, rest = cancelling.communicate(timeout=30)
    assert cancelling.returncode == 130
    assert "cancelled" in rest
    runs = service.api("GET", "/api/runs").json()["results"]
    assert sorted(r["status"] for r in runs) == ["cancelled", "queued"]

    # The command it printed follows the run again; a worker finishes it.
    watching = started("watch", run_id, "--json", env=env)
    service.worker()
    out, err = watching.communicate(timeout=120)
    assert watching.returncode == 0, err
    assert json.loads(out)[0]["status"] == "succeeded"


@pytest.mark.slow
def test_runs_show_get_cancel_retry_delete(service: Service, tmp_path):
    service.start_web(**ASYNC_ONLY)
    env = cli_env(tmp_path, service.web_url, service.account.token)
    run_id = service.submit()["runId"]

    listed = lingoloop("runs", "--status", "queued", env=env)
    assert listed.returncode == 0 and run_id in listed.stdout and "jfk.flac" in listed.stdout
    shown = lingoloop("show", run_id, env=env)
    assert "queued · 1st in line" in shown.stdout

    early = lingoloop("get", run_id, "--format", "srt", env=env)
    assert early.returncode == 1 and "Traceback" not in early.stderr
    assert early.stderr.startswith("lingoloop: ")  # the server's message, as it said it

    refused = lingoloop("delete", run_id, env=env)
    assert refused.returncode == 1 and "could not delete" in refused.stderr
    assert lingoloop("cancel", run_id, env=env).returncode == 0
    assert lingoloop("retry", run_id, "--json", env=env).returncode == 0
    assert service.api("GET", f"/api/runs/{run_id}").json()["status"] == "queued"
    assert lingoloop("cancel", run_id, env=env).returncode == 0
    assert lingoloop("delete", run_id, env=env).returncode == 0
    assert service.api("GET", f"/api/runs/{run_id}").status_code == 404

    service.worker()
    finished = service.submit()["runId"]
    wait_until(
        lambda: service.api("GET", f"/api/runs/{finished}").json()["status"] == "succeeded",
        120,
        "the run to finish",
    )
    got = lingoloop("get", finished, "--format", "vtt", "--output", str(tmp_path / "out"), env=env)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out" / "jfk.vtt").read_text().startswith("WEBVTT")


@pytest.mark.slow
def test_login_keeps_the_token_for_its_owner_only_and_bad_credentials_exit_3(
    service: Service, tmp_path
):
    service.start_web()
    env = cli_env(tmp_path, None, None)
    host = service.web_url.removeprefix("http://")
    username = service.account.user.get_username()  # type: ignore[attr-defined]

    wrong = lingoloop(
        "login", host, "--username", username, "--password-stdin", env=env, stdin="nope\n"
    )
    assert wrong.returncode == 3 and "lingoloop login" in wrong.stderr

    done = lingoloop(
        "login", host, "--username", username, "--password-stdin",
        env=env, stdin=f"{username}-password-1\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "config" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {"url": service.web_url, "token": service.account.token}
    assert lingoloop("runs", env=env).returncode == 0

    # A token the server does not know: refused, exit 3, the server's message shown.
    refused = lingoloop("runs", env={**env, "LINGOLOOP_TOKEN": "not-a-token"})
    assert refused.returncode == 3
    assert "lingoloop login" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_watch_without_ids_shows_every_change_of_my_runs_until_ctrl_c(service: Service, tmp_path):
    service.start_web(**ASYNC_ONLY)
    env = cli_env(tmp_path, service.web_url, service.account.token)
    first = service.submit()["runId"]
    watching = started("watch", "--json", env=env)
    assert watching.stdout is not None
    lines: list[dict[str, Any]] = []

    def reader() -> None:
        for line in watching.stdout:  # type: ignore[union-attr]
            lines.append(json.loads(line))

    def seen(event: str, run: str, status: str) -> bool:
        return any(
            (line["event"], line.get("runId"), line.get("status")) == (event, run, status)
            for line in lines
        )

    threading.Thread(target=reader, daemon=True).start()
    wait_until(lambda: seen("snapshot", first, "queued"), 30, "the snapshot of the queued run")
    second = service.submit()["runId"]
    wait_until(lambda: seen("update", second, "queued"), 30, "the new run")
    service.api("POST", f"/api/runs/{first}/cancel")
    wait_until(lambda: seen("done", first, "cancelled"), 30, "the first run's end")
    watching.send_signal(signal.SIGINT)
    assert watching.wait(timeout=30) == 0
