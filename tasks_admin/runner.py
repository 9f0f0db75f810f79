"""Runs one job attempt inside a django-q2 worker process.

The django-q2 task is only a delivery: `run_job(job_id)` makes the claim that counts (a
compare-and-set on the job row), keeps the lease alive while the handler works, and ends the
attempt with another compare-and-set. A duplicate delivery, a job cancelled meanwhile or a job
another worker took over finds nothing to claim and returns without touching anything.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import traceback
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone
from django_q.exceptions import TimeoutException

from tasks_admin.handlers import (
    Attempt,
    Cancelled,
    ClaimLost,
    JobHandler,
    PermanentError,
    get_handler,
)
from tasks_admin.models import Job, JobStatus

logger = logging.getLogger(__name__)

_worker_id: str | None = None
_worker_pid: int | None = None


def current_worker_id() -> str:
    """host:pid:nonce of this process; the nonce tells a recycled pid from its predecessor."""
    global _worker_id, _worker_pid
    if _worker_id is None or _worker_pid != os.getpid():
        _worker_pid = os.getpid()
        _worker_id = f"{socket.gethostname()}:{_worker_pid}:{secrets.token_hex(3)}"
    return _worker_id


def retry_delay(attempts: int) -> timedelta:
    """The delay before the next attempt, after `attempts` attempts (WORKER_RETRY_DELAYS, ms)."""
    delays = settings.WORKER_RETRY_DELAYS
    return timedelta(milliseconds=delays[min(max(attempts, 1), len(delays)) - 1])


class LeaseKeeper(threading.Thread):
    """Extends the lease every few seconds while the handler runs, even inside a long C call."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(name=f"lease-{attempt.job.pk}", daemon=True)
        self.attempt = attempt
        self.interval = max(1.0, settings.JOB_LEASE_SECONDS / 4)
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        job = Job(pk=self.attempt.job.pk)
        try:
            while not self.stopped.wait(self.interval):
                close_old_connections()
                if not job.extend_lease(self.attempt.worker_id):
                    self.lost.set()
                    return
        except Exception:
            logger.exception("lease keeper for job %s failed", job.pk)
        finally:
            from django.db import connection

            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def run_job(job_id: str) -> str:
    """The django-q2 task function: one attempt of one job. Never raises into django-q2."""
    close_old_connections()
    worker_id = current_worker_id()
    job = Job.objects.filter(pk=job_id).first()
    if job is None or not job.claim(worker_id):
        return "not claimed"
    logger.info("job %s (%s) attempt %d by %s", job.pk, job.job_type, job.attempts, worker_id)

    attempt = Attempt(job=job, worker_id=worker_id)
    keeper = LeaseKeeper(attempt)
    keeper.start()
    try:
        handler = get_handler(job.job_type)
        handler.started(attempt)
        handler.run(attempt)
    except ClaimLost:
        logger.warning("job %s: lease lost, this attempt writes nothing", job.pk)
        return "lease lost"
    except Cancelled:
        _end_cancelled(handler, job, worker_id)
        return "cancelled"
    except PermanentError as exc:
        _end_failed(job, worker_id, exc.code, exc.message)
        return "failed"
    except (Exception, TimeoutException) as exc:
        code = "timeout" if isinstance(exc, TimeoutException) else "error"
        logger.warning("job %s attempt %d failed: %s", job.pk, job.attempts, exc)
        logger.debug("%s", traceback.format_exc())
        _end_attempt_failed(job, worker_id, code, f"{type(exc).__name__}: {exc}")
        return "attempt failed"
    else:
        with transaction.atomic():
            if not job.finish(worker_id, JobStatus.SUCCEEDED):
                logger.warning("job %s finished but its claim was gone: result dropped", job.pk)
                return "lease lost"
            handler.succeeded(attempt)
        return "succeeded"
    finally:
        keeper.stop()


def _end_cancelled(handler: JobHandler, job: Job, worker_id: str) -> None:
    with transaction.atomic():
        if job.finish(worker_id, JobStatus.CANCELLED):
            handler.cancelled(job)


def _end_failed(job: Job, worker_id: str, code: str, message: str) -> None:
    with transaction.atomic():
        if job.finish(worker_id, JobStatus.FAILED, error=message):
            _handler_or_none(job).failed(job, code, message)


def _end_attempt_failed(job: Job, worker_id: str, code: str, message: str) -> None:
    """Queue the job again after the next retry delay, or fail it once retries are spent."""
    if job.retries_left <= 0:
        _end_failed(job, worker_id, code, message)
        return
    delay = retry_delay(job.attempts)
    with transaction.atomic():
        if job.retry_later(worker_id, error=message, delay=delay):
            _handler_or_none(job).retrying(job, message, job.run_after)


class _NoHandler:
    job_type = ""

    def retrying(self, job: Job, error: str, retry_at: object) -> None:
        pass

    def failed(self, job: Job, code: str, error: str) -> None:
        pass


def _handler_or_none(job: Job) -> JobHandler:
    try:
        return get_handler(job.job_type)
    except PermanentError:
        return _NoHandler()  # type: ignore[return-value]


def reap_expired_leases() -> int:
    """Jobs whose worker died (lease ran out): back to the queue, or failed when spent."""
    now = timezone.now()
    reaped = 0
    for job in Job.objects.lease_expired(now):
        error = f"worker {job.locked_by} stopped renewing its lease"
        holder = Job.objects.filter(
            pk=job.pk,
            status=JobStatus.PROCESSING,
            locked_by=job.locked_by,
            locked_until=job.locked_until,
        )
        with transaction.atomic():
            if job.retries_left > 0:
                delay = retry_delay(job.attempts)
                if holder.update(
                    status=JobStatus.QUEUED,
                    run_after=now + delay,
                    last_error=error,
                    locked_by="",
                    locked_until=None,
                ):
                    job.refresh_from_db()
                    _handler_or_none(job).retrying(job, error, job.run_after)
                    reaped += 1
            elif holder.update(
                status=JobStatus.FAILED, last_error=error, finished_at=now, locked_until=None
            ):
                job.refresh_from_db()
                _handler_or_none(job).failed(job, "worker_lost", error)
                reaped += 1
    if reaped:
        logger.warning("released %d job(s) whose worker stopped renewing its lease", reaped)
    return reaped
