"""Job types for queue tests, loaded into worker processes with JOB_HANDLER_MODULES.

Each handler appends one line per step to $DATA_DIR/job-log.txt (O_APPEND writes of one short
line are atomic), so a test can count starts and finishes across processes.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path

from django.conf import settings

from tasks_admin.handlers import Attempt, BaseJobHandler, PermanentError, register
from tasks_admin.models import Job


def log_path() -> Path:
    return Path(settings.DATA_DIR) / "job-log.txt"


def log(*parts: object) -> None:
    line = " ".join(str(p) for p in (time.time(), *parts)) + "\n"
    fd = os.open(log_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_log(data_dir: Path) -> list[list[str]]:
    path = data_dir / "job-log.txt"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines()]


class _Base(BaseJobHandler[None]):
    def started(self, attempt: Attempt) -> None:
        log("start", attempt.job.pk, attempt.worker_id, attempt.job.attempts)

    def run(self, attempt: Attempt) -> None:
        pass

    def succeeded(self, attempt: Attempt, result: None) -> None:
        log("finish", attempt.job.pk, attempt.worker_id)

    def retrying(self, job: Job, error: str, retry_at: datetime) -> None:
        log("retrying", job.pk, job.attempts)

    def failed(self, job: Job, code: str, error: str) -> None:
        log("failed", job.pk, job.attempts, code)

    def cancelled(self, job: Job) -> None:
        log("cancelled", job.pk)

    def released(self, job: Job) -> None:
        log("released", job.pk)


class Record(_Base):
    """Works for TEST_JOB_MS milliseconds (default 20), proving its claim as it goes."""

    job_type = "test.record"

    def run(self, attempt: Attempt) -> None:
        deadline = time.monotonic() + int(os.environ.get("TEST_JOB_MS", "20")) / 1000
        while time.monotonic() < deadline:
            attempt.heartbeat()
            time.sleep(0.01)


class Slow(_Base):
    """Works for TEST_SLOW_SECONDS (default 30) in small steps, each a safe point."""

    job_type = "test.slow"

    def run(self, attempt: Attempt) -> None:
        deadline = time.monotonic() + float(os.environ.get("TEST_SLOW_SECONDS", "30"))
        while time.monotonic() < deadline:
            attempt.heartbeat()
            time.sleep(0.1)


class Fail(_Base):
    job_type = "test.fail"

    def run(self, attempt: Attempt) -> None:
        raise RuntimeError(f"boom on attempt {attempt.job.attempts}")


class Permanent(_Base):
    job_type = "test.permanent"

    def run(self, attempt: Attempt) -> None:
        raise PermanentError("bad_input", "this job can never work")


class Leaky(_Base):
    """Fails with secrets in its exception's text and in a logged field: the log must not
    show them (TEST_SECRET names the secret)."""

    job_type = "test.leaky"

    def run(self, attempt: Attempt) -> None:
        secret = os.environ.get("TEST_SECRET", "s3cr3t")
        logging.getLogger("tests.leaky").warning(
            "calling the callback", extra={"url": f"https://example.com/?token={secret}"}
        )
        raise RuntimeError(
            f"GET /api/runs/events?access_token={secret} with Authorization: Bearer {secret}"
        )


for handler in (Record(), Slow(), Fail(), Permanent(), Leaky()):
    register(handler)
