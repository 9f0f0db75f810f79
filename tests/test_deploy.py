"""The deploy/ folder as an operator copies it: the systemd units are units systemd accepts and
start commands that exist, and the example environment names settings LingoLoop reads and
makes a configuration that passes Django's deployment checks. (deploy/nginx.conf is run for
real by tests/test_multinode.py.)"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ("lingoloop-web.service", "lingoloop-worker.service")
# Where the units expect the checkout and its virtual environment.
INSTALLED_AT = "/srv/lingoloop"
# What `check --deploy` still says of the example: choices it leaves to the operator, as the
# README says. HSTS for subdomains and the preload list are the domain's policy; the redirect
# from plain HTTP is nginx's (deploy/nginx.conf), not Django's.
LEFT_TO_THE_OPERATOR = {"security.W005", "security.W008", "security.W021"}


def exec_start(unit: str) -> list[str]:
    lines = (DEPLOY / unit).read_text().splitlines()
    (command,) = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    return shlex.split(command)


def example_environment() -> dict[str, str]:
    """deploy/lingoloop.env.example, its placeholders filled in as an operator would."""
    values = {}
    for line in (DEPLOY / "lingoloop.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            values[name] = value
    values["SECRET_KEY"] = "k7Qz2xW9pL4mT8vB1nC6yH3jF5dS0aG8eU2iO4rW7qE9tY1uP3"
    values["METRICS_TOKEN"] = "metrics-token-of-thirty-characters"
    return {name: value.replace("CHANGE-ME", "secret") for name, value in values.items()}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing")
def test_the_units_are_valid_systemd_units(tmp_path):
    for unit in UNITS:
        text = (DEPLOY / unit).read_text().replace(INSTALLED_AT, str(ROOT))
        (tmp_path / unit).write_text(text)
    found = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / unit) for unit in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert found.returncode == 0, found.stderr
    assert found.stderr == "", found.stderr


def test_the_units_start_commands_that_exist(tmp_path):
    for unit in UNITS:
        program, *arguments = exec_start(unit)
        assert program == f"{INSTALLED_AT}/.venv/bin/python", unit
        started = subprocess.run(
            [sys.executable, *arguments, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DATA_DIR": str(tmp_path)},
        )
        assert started.returncode == 0, (unit, started.stderr)


def test_the_example_environment_names_only_settings_lingoloop_reads():
    settings_source = (ROOT / "lingoloop" / "settings.py").read_text()
    unknown = [name for name in example_environment() if f'"{name}"' not in settings_source]

    assert unknown == []


def test_the_example_environment_passes_the_deployment_checks(tmp_path):
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DATA_DIR": str(tmp_path / "data"),
        **example_environment(),
    }
    checked = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert checked.returncode == 0, checked.stderr
    said = {word.strip("():") for word in checked.stderr.split() if word.startswith("(security.")}
    assert said == LEFT_TO_THE_OPERATOR, checked.stderr
