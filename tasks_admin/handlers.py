"""Job handlers by job type.

The queue knows nothing about what a job does. An app registers a handler for its job type in
`AppConfig.ready()`; the runner calls it around each attempt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tasks_admin.models import Job

logger = logging.getLogger(__name__)


class PermanentError(Exception):
    """An error no retry can fix (not audio, undecodable, too long): fail at once."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClaimLost(Exception):
    """This worker's lease was taken over: stop and write nothing."""


class Cancelled(Exception):
    """The job's cancellation was requested; stop at this safe point."""


class Released(Exception):
    """The worker is shutting down and its grace period is over: hand the job back."""


@dataclass
class Attempt:
    """What a handler gets for one attempt: the job and a way to prove it still holds it."""

    job: Job
    worker_id: str
    # The handler's own state between run() and succeeded() (its result, say).
    state: dict[str, Any] = field(default_factory=dict)
    # Set by the runner's lease keeper thread.
    lost: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def heartbeat(self) -> None:
        """Call at each safe point: extends the lease, and raises ClaimLost when another
        worker took the job over, or Released when this worker must hand it back."""
        if self.release.is_set():
            raise Released(f"job {self.job.pk} handed back: worker shutting down")
        if self.lost.is_set() or not self.job.extend_lease(self.worker_id):
            raise ClaimLost(f"job {self.job.pk} is no longer held by {self.worker_id}")


class JobHandler(Protocol):
    job_type: str

    def started(self, attempt: Attempt) -> None:
        """The attempt holds the job now (status processing, attempt counted)."""

    def run(self, attempt: Attempt) -> None:
        """Do the work. Raise PermanentError, Cancelled, or anything else to retry."""

    def succeeded(self, attempt: Attempt) -> None:
        """The job is `succeeded` (called inside the transaction that marked it)."""

    def retrying(self, job: Job, error: str, retry_at: datetime) -> None:
        """An attempt failed and the job is queued again for `retry_at`."""

    def failed(self, job: Job, code: str, error: str) -> None:
        """The job failed for good."""

    def cancelled(self, job: Job) -> None:
        """The job stopped because it was cancelled."""

    def released(self, job: Job) -> None:
        """The job went back to the queue unfinished (its worker shut down)."""


_handlers: dict[str, JobHandler] = {}
_periodic: dict[str, timedelta] = {}


def register(handler: JobHandler, *, every: timedelta | None = None) -> None:
    """Register `handler` for its job type; with `every`, worker clusters also queue one such
    job whenever none has been queued for that long (see runner.enqueue_periodic_jobs)."""
    _handlers[handler.job_type] = handler
    if every is not None:
        _periodic[handler.job_type] = every


def periodic_job_types() -> dict[str, timedelta]:
    return dict(_periodic)


_housekeeping: list[Callable[[], object]] = []


def register_housekeeping(task: Callable[[], object]) -> None:
    """A small, idempotent chore every worker cluster runs every few seconds (for example,
    finishing what a killed process left half-done)."""
    _housekeeping.append(task)


def run_housekeeping() -> None:
    for task in _housekeeping:
        try:
            task()
        except Exception:
            logger.exception("housekeeping %s failed", getattr(task, "__name__", task))


def get_handler(job_type: str) -> JobHandler:
    try:
        return _handlers[job_type]
    except KeyError:
        raise PermanentError("unknown_job_type", f"no handler for job type {job_type!r}") from None
