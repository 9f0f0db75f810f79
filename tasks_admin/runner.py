"""Runs one job attempt inside a django-q2 worker process (or a web process, for sync runs).

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
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_q.exceptions import TimeoutException

from tasks_admin.handlers import (
    Attempt,
    Cancelled,
    ClaimLost,
    JobHandler,
    PermanentError,
    Released,
    get_handler,
    periodic_job_types,
)
from tasks_admin.models import Job, JobStatus, Worker, WorkerState

logger = logging.getLogger(__name__)

# Set by `manage.py worker` before django-q2 forks, so every process of a cluster knows it.
CLUSTER_ENV = "LINGOLOOP_WORKER_ID"

_worker_id: str | None = None
_worker_pid: int | None = None


def cluster_id() -> str | None:
    return os.environ.get(CLUSTER_ENV) or None


def current_worker_id() -> str:
    """`<cluster>:<host>:<pid>` in a worker cluster, `web:<host>:<pid>:<nonce>` elsewhere."""
    global _worker_id, _worker_pid
    if _worker_id is None or _worker_pid != os.getpid():
        _worker_pid = os.getpid()
        cluster = cluster_id()
        host = socket.gethostname()
        _worker_id = (
            f"{cluster}:{host}:{_worker_pid}"
            if cluster
            else f"web:{host}:{_worker_pid}:{secrets.token_hex(3)}"
        )
    return _worker_id


def cluster_state() -> tuple[str, object] | None:
    """(state, stop_deadline) of this process's cluster; None outside a cluster."""
    cluster = cluster_id()
    if cluster is None:
        return None
    row = Worker.objects.filter(pk=cluster).values_list("state", "stop_deadline").first()
    return row if row is not None else (WorkerState.STOPPING, timezone.now())


def retry_delay(attempts: int) -> timedelta:
    """The delay before the next attempt, after `attempts` attempts (WORKER_RETRY_DELAYS, ms)."""
    delays = settings.WORKER_RETRY_DELAYS
    return timedelta(milliseconds=delays[min(max(attempts, 1), len(delays)) - 1])


class LeaseKeeper(threading.Thread):
    """Extends the lease every few seconds while the handler runs, even inside a long C call,
    and tells the attempt when its cluster's shutdown grace period is over."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(name=f"lease-{attempt.job.pk}", daemon=True)
        self.attempt = attempt
        self.interval = max(0.5, settings.JOB_LEASE_SECONDS / 4)
        self.stopped = threading.Event()

    def run(self) -> None:
        job = Job(pk=self.attempt.job.pk)
        try:
            while not self.stopped.wait(self.interval):
                close_old_connections()
                if not job.extend_lease(self.attempt.worker_id):
                    self.attempt.lost.set()
                    return
                state = cluster_state()
                if state and state[0] == WorkerState.STOPPING:
                    deadline = state[1]
                    if deadline is None or timezone.now() >= deadline:  # type: ignore[operator]
                        self.attempt.release.set()
        except Exception:
            logger.exception("lease keeper for job %s failed", job.pk)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def _release_pick(job_id: str) -> None:
    """Give up this cluster's hold on a job it picked but will not start."""
    Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(locked_by="", locked_until=None)


def run_job(job_id: str) -> str:
    """The django-q2 task function: one attempt of one job. Never raises into django-q2."""
    close_old_connections()
    state = cluster_state()
    if state is not None and state[0] != WorkerState.RUNNING:
        _release_pick(job_id)  # paused or stopping: claim nothing new
        return "not claimed: cluster not running"
    worker_id = current_worker_id()
    job = Job.objects.filter(pk=job_id).first()
    if job is None or not job.claim(worker_id):
        return "not claimed"
    logger.info("job %s (%s) attempt %d by %s", job.pk, job.job_type, job.attempts, worker_id)

    attempt = Attempt(job=job, worker_id=worker_id)
    keeper = LeaseKeeper(attempt)
    keeper.start()
    try:
        outcome = _attempt(attempt)
    finally:
        keeper.stop()
    if outcome in {"succeeded", "failed", "cancelled"} and cluster_id():
        Worker.objects.filter(pk=cluster_id()).update(jobs_done=F("jobs_done") + 1)
    return outcome


def _attempt(attempt: Attempt) -> str:
    job, worker_id = attempt.job, attempt.worker_id
    try:
        handler = get_handler(job.job_type)
        handler.started(attempt)
        handler.run(attempt)
    except ClaimLost:
        logger.warning("job %s: lease lost, this attempt writes nothing", job.pk)
        return "lease lost"
    except Released:
        hand_back(job, holder=worker_id, reason="its worker shut down")
        return "released"
    except Cancelled:
        with transaction.atomic():
            if job.finish(worker_id, JobStatus.CANCELLED):
                handler.cancelled(job)
        return "cancelled"
    except PermanentError as exc:
        _end_failed(job, worker_id, exc.code, exc.message)
        return "failed"
    except (Exception, TimeoutException) as exc:
        # The detail (which may name files, hosts or settings) goes to the log; the job and
        # its run keep a sentence fit to show the user who submitted it.
        if isinstance(exc, TimeoutException):
            code, message = "timeout", "The attempt ran out of time and was stopped."
        else:
            code, message = "error", f"The attempt failed on the server ({type(exc).__name__})."
        logger.warning(
            "job %s attempt %d failed: %s: %s", job.pk, job.attempts, type(exc).__name__, exc
        )
        logger.debug("%s", traceback.format_exc())
        return _end_attempt_failed(job, worker_id, code, message)
    with transaction.atomic():
        if not job.finish(worker_id, JobStatus.SUCCEEDED):
            logger.warning("job %s finished but its claim was gone: result dropped", job.pk)
            return "lease lost"
        handler.succeeded(attempt)
    return "succeeded"


def _end_failed(job: Job, worker_id: str, code: str, message: str) -> str:
    with transaction.atomic():
        if job.finish(worker_id, JobStatus.FAILED, error=message):
            _handler_or_none(job).failed(job, code, message)
    return "failed"


def _end_attempt_failed(job: Job, worker_id: str, code: str, message: str) -> str:
    """Queue the job again after the next retry delay, or fail it once retries are spent."""
    if job.retries_left <= 0:
        return _end_failed(job, worker_id, code, message)
    with transaction.atomic():
        if job.retry_later(worker_id, error=message, delay=retry_delay(job.attempts)):
            _handler_or_none(job).retrying(job, message, job.run_after)
    return "attempt failed"


class _NoHandler:
    """Stands in when a job's type has no handler: the job's own row still ends properly."""

    job_type = ""

    def retrying(self, job: Job, error: str, retry_at: object) -> None:
        pass

    def failed(self, job: Job, code: str, error: str) -> None:
        pass

    def released(self, job: Job) -> None:
        pass


def _handler_or_none(job: Job) -> JobHandler:
    try:
        return get_handler(job.job_type)
    except PermanentError:
        return _NoHandler()  # type: ignore[return-value]


def hand_back(job: Job, *, holder: str, reason: str) -> bool:
    """Return a processing job to the queue, due now, without counting its attempt.

    For jobs stopped by their own worker's shutdown, not by anything the job did.
    """
    with transaction.atomic():
        if not Job.objects.filter(pk=job.pk, status=JobStatus.PROCESSING, locked_by=holder).update(
            status=JobStatus.QUEUED,
            run_after=timezone.now(),
            attempts=F("attempts") - 1,
            last_error=f"handed back: {reason}",
            locked_by="",
            locked_until=None,
        ):
            return False
        job.refresh_from_db()
        _handler_or_none(job).released(job)
    logger.info("job %s handed back to the queue: %s", job.pk, reason)
    return True


def hand_back_all(prefix: str, *, reason: str) -> int:
    """Hand back every job still held by processes whose worker id starts with `prefix`."""
    jobs = Job.objects.filter(status=JobStatus.PROCESSING, locked_by__startswith=prefix)
    return sum(hand_back(job, holder=job.locked_by, reason=reason) for job in jobs)


def enqueue_periodic_jobs() -> list[str]:
    """Queue each periodic job type that has no job waiting, running, or created within its
    interval. Several clusters may race here; the worst case is one extra run of a job that
    must be idempotent anyway."""
    created = []
    now = timezone.now()
    for job_type, every in periodic_job_types().items():
        recent = Job.objects.filter(job_type=job_type).filter(
            Q(status__in=[JobStatus.QUEUED, JobStatus.PROCESSING]) | Q(created_at__gt=now - every)
        )
        if not recent.exists():
            Job.objects.create(job_type=job_type, max_attempts=settings.WORKER_MAX_RETRIES + 1)
            created.append(job_type)
    return created


def reap_expired_leases() -> int:
    """Jobs whose worker died (lease ran out): back to the queue, or failed when spent.

    The dead attempt counts: a job that kills its worker cannot loop for ever.
    """
    now = timezone.now()
    reaped = 0
    for job in Job.objects.lease_expired(now):
        logger.warning("job %s: worker %s stopped renewing its lease", job.pk, job.locked_by)
        error = "The worker running it stopped unexpectedly."
        holder = Job.objects.filter(
            pk=job.pk,
            status=JobStatus.PROCESSING,
            locked_by=job.locked_by,
            locked_until=job.locked_until,
        )
        with transaction.atomic():
            if job.retries_left > 0:
                if holder.update(
                    status=JobStatus.QUEUED,
                    run_after=now + retry_delay(job.attempts),
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
        logger.warning("took back %d job(s) whose worker stopped renewing its lease", reaped)
    return reaped
