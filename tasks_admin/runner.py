"""Runs one job attempt inside a django-q2 worker process (or a web process, for sync runs).

The django-q2 task is only a delivery: `run_job(job_id)` makes the claim that counts (a
compare-and-set on the job row), keeps the lease alive while the handler works, and ends the
attempt with another compare-and-set. A duplicate delivery, a job cancelled meanwhile or a job
another worker took over finds nothing to claim and returns without touching anything.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import F, Q
from django.utils import timezone
from django_q.exceptions import TimeoutException

from lingoloop import metrics
from lingoloop.logs import add_log_context, log_context
from tasks_admin.handlers import (
    Attempt,
    Cancelled,
    ClaimLost,
    PermanentError,
    Released,
    RetryLater,
    get_handler,
    handler_or_none,
    periodic_job_types,
)
from tasks_admin.models import Job, JobStatus, Worker, WorkerState

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


def retry_delay(job: Job, *, at_least: timedelta | None = None) -> timedelta:
    """The delay before the job's next attempt, after `job.attempts` attempts: its handler's,
    else WORKER_RETRY_DELAYS (ms); never shorter than `at_least`."""
    delay = handler_or_none(job.job_type).retry_delay(job)
    if delay is None:
        delays = settings.WORKER_RETRY_DELAYS
        delay = timedelta(milliseconds=delays[min(max(job.attempts, 1), len(delays)) - 1])
    return max(delay, at_least) if at_least is not None else delay


class Outcome(StrEnum):
    """How one delivery of a job ended, as `run_job` returns it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good
    RETRYING = "retrying"  # the attempt failed; the job is queued again
    CANCELLED = "cancelled"
    RELEASED = "released"  # handed back unfinished: its worker shut down
    LEASE_LOST = "lease lost"  # another worker may hold it now: nothing was written
    NOT_CLAIMED = "not claimed"  # duplicate delivery, cancelled meanwhile, or cluster paused


# Outcomes in which this worker ended the job, for the cluster's `jobs_done`.
FINISHED = (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.CANCELLED)


class LeaseKeeper(threading.Thread):
    """The one writer of an attempt's lease: renews it every few seconds while the handler
    runs, even inside a long C call, and tells the attempt when its cluster's shutdown grace
    period is over.

    A database error does not stop it: it logs and tries again at the next tick. It gives up
    only when the claim is really gone (the compare-and-set matched no row), or when it could
    not renew until the lease ran out, since from then on any cluster's reaper may take the
    job. In both cases the attempt's next heartbeat raises ClaimLost.
    """

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(name=f"lease-{attempt.job.pk}", daemon=True)
        self.attempt = attempt
        self.job = Job(pk=attempt.job.pk)  # its own copy: the handler's is not thread-safe
        self.interval = max(0.5, settings.JOB_LEASE_SECONDS / 4)
        self.stopped = threading.Event()
        self.log_context = contextvars.copy_context()  # its lines carry the attempt's ids

    def run(self) -> None:
        self.log_context.run(self._keep)

    def _keep(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                close_old_connections()  # drops a connection that a failed tick left broken
                if not self.tick():
                    return
        finally:
            connection.close()

    def tick(self) -> bool:
        """Renew once; False when there is nothing left to keep."""
        try:
            if not self.job.extend_lease(self.attempt.worker_id):
                logger.warning("job %s: its claim is gone; the lease is not renewed", self.job.pk)
                self.attempt.lost.set()
                return False
            self.attempt.lease_until = self.job.locked_until or self.attempt.lease_until
            if self._grace_is_over():
                self.attempt.release.set()
        except Exception:
            if timezone.now() >= self.attempt.lease_until:
                logger.exception(
                    "job %s: lease not renewed before it ran out; another worker may take it",
                    self.job.pk,
                )
                self.attempt.lost.set()
                return False
            logger.warning(
                "job %s: lease renewal failed; trying again in %.1f s",
                self.job.pk,
                self.interval,
                exc_info=True,
            )
        return True

    @staticmethod
    def _grace_is_over() -> bool:
        state = cluster_state()
        if state is None or state[0] != WorkerState.STOPPING:
            return False
        deadline = state[1]
        return deadline is None or timezone.now() >= deadline  # type: ignore[operator]

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def _drop_pick(job_id: str) -> None:
    """Give up any pick hold on a job this cluster will not start."""
    Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(picked_by="", picked_until=None)


def run_job(job_id: str) -> Outcome:
    """The django-q2 task function: one attempt of one job. Never raises into django-q2.

    Every line logged meanwhile carries the job's, its run's and this worker's ids."""
    with log_context(job_id=job_id, worker_id=current_worker_id()):
        return _run_job(job_id)


def _run_job(job_id: str) -> Outcome:
    close_old_connections()
    worker_id = current_worker_id()
    # The claim reads the row once it has won it, and checks this cluster's state in the same
    # statement: no read before it (each was a round trip of every job's pickup).
    job = Job(pk=job_id)
    if not job.claim(worker_id, cluster=cluster_id()) or job.locked_until is None:
        state = cluster_state()
        if state is not None and state[0] != WorkerState.RUNNING:
            _drop_pick(job_id)  # paused or stopping: claim nothing new
        return Outcome.NOT_CLAIMED
    add_log_context(run_id=job.run_id)
    logger.info("job %s (%s) attempt %d by %s", job.pk, job.job_type, job.attempts, worker_id)
    metrics.job_started(
        job.job_type, due=job.run_after, created=job.created_at, started=timezone.now()
    )
    began = time.monotonic()

    attempt = Attempt(job=job, worker_id=worker_id, lease_until=job.locked_until)
    keeper = LeaseKeeper(attempt)
    keeper.start()
    try:
        outcome = _attempt(attempt)
    finally:
        keeper.stop()
    metrics.job_ended(job.job_type, outcome, time.monotonic() - began)
    if outcome in FINISHED and cluster_id():
        Worker.objects.filter(pk=cluster_id()).update(jobs_done=F("jobs_done") + 1)
    return outcome


def _attempt(attempt: Attempt) -> Outcome:
    job, worker_id = attempt.job, attempt.worker_id
    try:
        handler = get_handler(job.job_type)
        handler.started(attempt)
        result = handler.run(attempt)
    except ClaimLost:
        logger.warning("job %s: lease lost, this attempt writes nothing", job.pk)
        return Outcome.LEASE_LOST
    except Released:
        hand_back(job, holder=worker_id, reason="its worker shut down")
        return Outcome.RELEASED
    except Cancelled:
        with transaction.atomic():
            if job.finish(worker_id, JobStatus.CANCELLED):
                handler_or_none(job.job_type).cancelled(job)
        return Outcome.CANCELLED
    except PermanentError as exc:
        # Refused input (not audio, too long…): expected, and nothing to debug in the code.
        logger.warning(
            "job %s (%s) attempt %d failed for good: %s",
            job.pk,
            job.job_type,
            job.attempts,
            exc.code,
        )
        return _end_failed(job, worker_id, exc.code, exc.message)
    except RetryLater as exc:
        logger.warning(
            "job %s (%s) attempt %d failed: %s", job.pk, job.job_type, job.attempts, exc.message
        )
        return _end_attempt_failed(job, worker_id, exc.code, exc.message, at_least=exc.after)
    except (Exception, TimeoutException) as exc:
        # One searchable line with the traceback for operators. The detail (which may name
        # files, hosts or settings) stays in the log; the job and its run keep a sentence fit
        # to show the user who submitted it.
        logger.exception("job %s (%s) attempt %d failed", job.pk, job.job_type, job.attempts)
        if isinstance(exc, TimeoutException):
            code, message = "timeout", "The attempt ran out of time and was stopped."
        else:
            code, message = "error", f"The attempt failed on the server ({type(exc).__name__})."
        return _end_attempt_failed(job, worker_id, code, message)

    def write_result() -> Outcome:
        with transaction.atomic():
            if not job.finish(worker_id, JobStatus.SUCCEEDED):
                logger.warning("job %s finished but its claim was gone: result dropped", job.pk)
                return Outcome.LEASE_LOST
            handler.succeeded(attempt, result)
        return Outcome.SUCCEEDED

    return when_the_database_answers(attempt, write_result)


# How often an attempt whose work is done tries again to write it to a database that does
# not answer.
RESULT_RETRY_SECONDS = 1.0


def when_the_database_answers(attempt: Attempt, write: Callable[[], T]) -> T:
    """`write()`, tried again while the database does not answer and the attempt's lease
    lasts: finished work is not thrown away for an outage shorter than the lease (the lease
    keeper renews it as soon as the database is back, and the claim's compare-and-set inside
    `write` still decides). Past the lease the error is raised: any cluster may have taken
    the job back by then."""
    warned = False
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError):
            if timezone.now() + timedelta(seconds=RESULT_RETRY_SECONDS) >= attempt.lease_until:
                raise
            if not warned:
                logger.warning(
                    "job %s: done, but the database does not answer; writing its result "
                    "once it does (the lease lasts until %s)",
                    attempt.job.pk,
                    attempt.lease_until.isoformat(),
                )
                warned = True
            time.sleep(RESULT_RETRY_SECONDS)
            close_old_connections()  # the next try opens a new connection


def _end_failed(job: Job, worker_id: str, code: str, message: str) -> Outcome:
    with transaction.atomic():
        if job.finish(worker_id, JobStatus.FAILED, error=message, code=code):
            handler_or_none(job.job_type).failed(job, code, message)
            metrics.job_failed(job.job_type, code)
    return Outcome.FAILED


def _end_attempt_failed(
    job: Job, worker_id: str, code: str, message: str, *, at_least: timedelta | None = None
) -> Outcome:
    """Queue the job again after the next retry delay, or fail it once retries are spent."""
    if job.retries_left <= 0:
        return _end_failed(job, worker_id, code, message)
    delay = retry_delay(job, at_least=at_least)
    with transaction.atomic():
        if job.retry_later(worker_id, error=message, delay=delay):
            handler_or_none(job.job_type).retrying(job, message, job.run_after)
            metrics.job_retrying(job.job_type, code)
    return Outcome.RETRYING


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
        handler_or_none(job.job_type).released(job)
    logger.info("job %s handed back to the queue: %s", job.pk, reason)
    return True


def hand_back_all(cluster: str, *, reason: str) -> int:
    """Hand back every job still leased by the processes of worker cluster `cluster`."""
    jobs = Job.objects.held_by_cluster(cluster)
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

    The dead attempt counts: a job that kills its worker cannot loop for ever. A job whose
    hooks fail is logged and left for the next round; the others are still taken back.
    """
    now = timezone.now()
    reaped = 0
    for job in Job.objects.lease_expired(now):
        try:
            reaped += _reap(job, now)
        except Exception:
            logger.exception("job %s: taking back its expired lease failed", job.pk)
    if reaped:
        logger.warning("took back %d job(s) whose worker stopped renewing its lease", reaped)
    return reaped


def _reap(job: Job, now: datetime) -> bool:
    with log_context(job_id=job.pk, run_id=job.run_id, worker_id=job.locked_by):
        # A failed attempt, as one that raised is, though its traceback died with its worker.
        logger.error(
            "job %s (%s) attempt %d failed: worker %s stopped renewing its lease",
            job.pk,
            job.job_type,
            job.attempts,
            job.locked_by,
        )
        return _take_back(job, now)


def _take_back(job: Job, now: datetime) -> bool:
    error = "The worker running it stopped unexpectedly."
    holder = Job.objects.filter(
        pk=job.pk,
        status=JobStatus.PROCESSING,
        locked_by=job.locked_by,
        locked_until=job.locked_until,
    )
    handler = handler_or_none(job.job_type)
    with transaction.atomic():
        if job.retries_left > 0:
            if not holder.update(
                status=JobStatus.QUEUED,
                run_after=now + retry_delay(job),
                last_error=error,
                locked_by="",
                locked_until=None,
            ):
                return False
            job.refresh_from_db()
            handler.retrying(job, error, job.run_after)
            metrics.lease_expired(job.job_type, retried=True)
            return True
        if not holder.update(
            status=JobStatus.FAILED,
            last_error=error,
            error_code="worker_lost",
            finished_at=now,
            locked_until=None,
        ):
            return False
        job.refresh_from_db()
        handler.failed(job, "worker_lost", error)
        metrics.lease_expired(job.job_type, retried=False)
        return True
