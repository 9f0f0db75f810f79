"""The management commands an operator runs: each option says what it does, and `--help`
prints help, not log lines."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from django.core.management import load_command_class

from tests.conftest import ROOT

OPERATOR_COMMANDS = ["serve", "worker", "ensure_admin"]
# BaseCommand's own options (--verbosity, --settings, …) have Django's help.
DJANGO_OPTIONS = {
    "help", "version", "verbosity", "settings", "pythonpath", "traceback", "no_color",
    "force_color", "skip_checks",
}  # fmt: skip


@pytest.mark.parametrize("name", OPERATOR_COMMANDS)
def test_every_option_of_the_command_has_help(name):
    parser = load_command_class("tasks_admin", name).create_parser("manage.py", name)
    actions = [a for a in parser._actions if a.dest not in DJANGO_OPTIONS]
    assert all(action.help and action.help != argparse.SUPPRESS for action in actions), [
        action.dest for action in actions if not action.help
    ]
    assert load_command_class("tasks_admin", name).help


def test_help_prints_help_and_no_log_lines():
    out = subprocess.run(
        [sys.executable, "manage.py", "serve", "--help"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "lingoloop.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--port PORT" in out.stdout and "process group" in out.stdout
    assert out.stderr == ""
