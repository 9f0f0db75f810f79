"""`python manage.py serve`: the web server and one worker together, for one machine.

Ctrl-C (or SIGTERM) stops both: the worker finishes or hands back its running job first.
Only the worker side runs at a lower priority (WORKER_NICE): the cluster's processes that run
jobs lower their own, so the web process keeps the priority this command was started with.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Run the web server (daphne) and a worker cluster until interrupted: what a "
        "supervisor runs on one machine. Ctrl-C or SIGTERM stops both; send it to the "
        "process group. Configuration comes from the environment (see the README)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--host",
            default=os.environ.get("HOST", "127.0.0.1"),
            help="Address the web server listens on (default: $HOST or 127.0.0.1; "
            "0.0.0.0 for every interface).",
        )
        parser.add_argument(
            "--port",
            type=int,
            default=int(os.environ.get("PORT", "8000")),
            help="TCP port of the web server (default: $PORT or 8000).",
        )

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        python = sys.executable
        web = subprocess.Popen([python, "-m", "lingoloop.server", "-b", host, "-p", str(port)])
        # `-m django`, not manage.py: an installed package has no manage.py (the settings
        # module reaches the child through the environment).
        worker = subprocess.Popen([python, "-m", "django", "worker"])
        children = [web, worker]
        self.stdout.write(
            self.style.SUCCESS(f"LingoLoop is starting on http://{host}:{port}/ (Ctrl-C stops it)")
        )
        self.stdout.write(
            f"  API token: curl -X POST -d username=admin -d password=… "
            f"http://{host}:{port}/api/auth/token\n"
            f"  API docs:  http://{host}:{port}/api/docs/"
        )

        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        failed = [c.returncode for c in children if c.returncode not in (0, -signal.SIGTERM)]
        if failed and not stopping:
            raise SystemExit(1)
