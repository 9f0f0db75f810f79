"""`pip install .` gives a LingoLoop that runs without the source checkout: the wheel carries
the templates, static files and migrations, and its console scripts (`lingoloop-admin`,
`lingoloop-server`, `lingoloop-worker`) set up and serve a working directory of their own.

The wheel is built from the checkout and installed into a new virtual environment outside
it; that environment borrows the test environment's dependencies, so nothing is downloaded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin` folder of a new virtual environment with only the wheel installed."""
    root = tmp_path_factory.mktemp("installed")
    pip = [sys.executable, "-m", "pip", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (root / "dist").glob("lingoloop-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True,
    ).strip()
    # A plain path line: the test environment's own .pth files (among them the checkout's
    # editable install) are not read, so `lingoloop` can only come from the wheel.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv / "bin"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "lingoloop-here"
    folder.mkdir()
    return folder


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set nothing: SQLite and data under ./data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    for name in ("DATABASE_URL", "REDIS_URL", "DATA_DIR", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(name, None)
    return {**env, **extra}


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def started(installed: Path, workdir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_wheel_holds_the_code_the_web_ui_and_the_migrations(installed: Path, workdir):
    where = run(
        [str(installed / "python"), "-c", "import lingoloop; print(lingoloop.__file__)"], workdir
    )
    package = Path(where.strip()).parent

    assert not package.is_relative_to(ROOT)
    assert (package / "templates" / "base.html").is_file()
    assert (package / "static" / "css" / "app.css").is_file()
    assert list((package.parent / "transcription" / "migrations").glob("0001_*.py"))
    assert list((package.parent / "tasks_admin" / "migrations").glob("0001_*.py"))
    assert (package.parent / "tasks_admin" / "management" / "commands" / "worker.py").is_file()


def test_console_scripts_set_up_and_serve_lingoloop_outside_the_checkout(
    installed: Path, workdir: Path, started: list[subprocess.Popen[bytes]]
):
    run([str(installed / "lingoloop-admin"), "migrate", "--noinput"], workdir)
    run([str(installed / "lingoloop-admin"), "collectstatic", "--noinput"], workdir)
    assert (workdir / "data" / "db.sqlite3").is_file()  # DATA_DIR defaults to ./data

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = workdir / "logs"
    logs.mkdir()
    for name, command in (
        ("server", [str(installed / "lingoloop-server"), "-p", str(port)]),
        ("worker", [str(installed / "lingoloop-worker")]),
    ):
        with open(logs / f"{name}.log", "wb") as log:
            started.append(
                subprocess.Popen(command, cwd=workdir, env=clean_env(), stdout=log, stderr=log)
            )

    def health() -> dict[str, object] | None:
        try:
            answer = httpx.get(f"{base}/api/health", timeout=2)
        except httpx.TransportError:
            return None
        return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]

    try:
        answer = wait_until(lambda: (h := health()) and h["workersAlive"] and h, 60, "health")
    except AssertionError:
        raise AssertionError(
            "\n".join((logs / f"{n}.log").read_text()[-2000:] for n in ("server", "worker"))
        ) from None
    assert answer is not None
    assert {key: answer[key] for key in ("status", "database", "workersAlive")} == {
        "status": "ok",
        "database": "ok",
        "workersAlive": 1,
    }
    assert answer["problems"] == []

    login = httpx.get(f"{base}/accounts/login/", timeout=5)
    assert login.status_code == 200
    assert "/static/css/app.css" in login.text
    stylesheet = httpx.get(f"{base}/static/css/app.css", timeout=5)
    assert stylesheet.status_code == 200
    assert stylesheet.headers["content-type"].startswith("text/css")
    assert stylesheet.text == (ROOT / "lingoloop" / "static" / "css" / "app.css").read_text()

    # The command-line client comes with it, and reaches the server (which refuses a token
    # it never gave: exit 3).
    assert "transcribe" in run([str(installed / "lingoloop"), "--help"], workdir)
    refused = subprocess.run(
        [str(installed / "lingoloop"), "runs"],
        cwd=workdir,
        env=clean_env(LINGOLOOP_URL=base, LINGOLOOP_TOKEN="not-a-token"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 3, refused.stderr
    assert "lingoloop login" in refused.stderr


def test_the_project_metadata_reads_without_a_setuptools_warning():
    """`license` is an SPDX expression with no License classifier beside it: the table form
    (`license = {text = …}`) made every install print three deprecation warnings."""
    check = (
        "from setuptools.dist import Distribution;"
        "from setuptools.config.pyprojecttoml import apply_configuration;"
        "print(apply_configuration(Distribution(), 'pyproject.toml').metadata.license_expression)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", check],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "MIT"
