"""Settings come from the environment and refuse bad values at start-up, by name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from lingoloop.env import env_bool, env_int, env_int_list
from tests.conftest import ROOT


def start_with(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CONCURRENT_JOBS", "two"),
        ("JOB_TIMEOUT", "1.5"),
        ("TRANSCRIBE_SYNC_MAX_BYTES", "-5"),
        ("WORKER_RETRY_DELAYS", "5000,soon"),
        ("DEBUG", "maybe"),
    ],
)
def test_bad_value_stops_start_up_naming_the_variable(name, value, tmp_path):
    result = start_with(**{name: value, "DATA_DIR": str(tmp_path)})

    assert result.returncode != 0
    assert f"{name}={value!r}" in result.stderr


def test_defaults_start_cleanly(tmp_path):
    result = start_with(DATA_DIR=str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "secret_key").exists()


def test_helpers_read_values(monkeypatch):
    monkeypatch.setenv("X_INT", " 42 ")
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_LIST", "5000,30000")

    assert env_int("X_INT", 1) == 42
    assert env_int("X_MISSING", 7) == 7
    assert env_bool("X_BOOL") is True
    assert env_int_list("X_LIST", [1]) == [5000, 30000]


def test_minimum_is_enforced(monkeypatch):
    monkeypatch.setenv("X_INT", "0")

    with pytest.raises(ImproperlyConfigured, match="X_INT='0' must be at least 1"):
        env_int("X_INT", 5, minimum=1)


def test_models_and_migrations_agree(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=ROOT,
        env={**os.environ, "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_installations_on_two_databases_of_one_redis_publish_on_channels_of_their_own(tmp_path):
    """Redis pub/sub ignores the database number: the events channel is named after it."""
    code = "from django.conf import settings; print(settings.EVENTS_REDIS_CHANNEL)"
    names = []
    for url in ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/4"):
        shown = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=ROOT,
            env={
                **os.environ,
                "REDIS_URL": url,
                "DATA_DIR": str(tmp_path),
                "DJANGO_SETTINGS_MODULE": "lingoloop.settings",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        names.append(shown.stdout.strip())
    assert names == ["lingoloop-events-db3", "lingoloop-events-db4"]
