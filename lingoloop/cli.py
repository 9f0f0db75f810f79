"""The console scripts that `pip install .` puts on the PATH, so LingoLoop runs without a
source checkout (they are declared in pyproject.toml's `[project.scripts]`):

* `lingoloop-admin <command>`: what `python manage.py <command>` is in a checkout
  (`migrate`, `ensure_admin`, `collectstatic`, `check --deploy`, …);
* `lingoloop-server [daphne options]`: the web process (`python -m lingoloop.server`);
* `lingoloop-worker`: a worker cluster (`python manage.py worker`).

Each reads its configuration from the environment like the checkout does; `DATA_DIR`
defaults to `./data` in the working directory.
"""

from __future__ import annotations

import os
import sys

SETTINGS_MODULE = "lingoloop.settings"


def admin(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    from django.core.management import execute_from_command_line

    args = sys.argv[1:] if argv is None else argv
    execute_from_command_line(["lingoloop-admin", *args])


def worker(argv: list[str] | None = None) -> None:
    admin(["worker", *(sys.argv[1:] if argv is None else argv)])


def server(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    from lingoloop.server import main

    main(argv)
