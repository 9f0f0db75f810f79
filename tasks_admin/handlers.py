"""Job handlers by job type.

The queue knows nothing about what a job does. An app registers a handler for its job type in
`AppConfig.ready()`; the runner calls it around each attempt, and the queue admin asks it how
to describe what the job serves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from django.utils import timezone

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from tasks_admin.models import Job


class PermanentError(Exception):
    """An error no retry can fix (not audio, undecodable, too long): fail at once."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RetryLater(Exception):
    """An expected failure worth trying again (a receiver answered 503, say): the job is
    queued again after its next retry delay, or after `after` when that is longer (a
    `Retry-After`), until its attempts are spent. Logged as one line, without a traceback:
    nothing in the code needs debugging."""

    def __init__(self, code: str, message: str, *, after: timedelta | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.after = after


class ClaimLost(Exception):
    """This worker's lease was taken over (or may be by now): stop and write nothing."""


class Cancelled(Exception):
    """The job's cancellation was requested; stop at this safe point."""


class Released(Exception):
    """The worker is shutting down and its grace period is over: hand the job back."""


@dataclass
class Attempt:
    """What a handler gets for one attempt: the job and a way to prove it still holds it.

    The runner's LeaseKeeper thread is the one writer of the lease; it reports here through
    `lost`, `release` and `lease_until`, so a heartbeat costs no database round trip.
    """

    job: Job
    worker_id: str
    # Until when the lease surely holds (the end of the last renewal that succeeded). Past
    # it, the reaper of any cluster may have taken the job.
    lease_until: datetime
    lost: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def heartbeat(self) -> None:
        """Call at each safe point: raises ClaimLost when the job may be another worker's
        now, or Released when this worker must hand it back. Reads only memory."""
        if self.release.is_set():
            raise Released(f"job {self.job.pk} handed back: worker shutting down")
        if self.lost.is_set() or timezone.now() >= self.lease_until:
            raise ClaimLost(f"job {self.job.pk} is no longer held by {self.worker_id}")


@dataclass(frozen=True)
class Subject:
    """What a job serves, as the queue admin shows it (a run, say): the app that owns the
    subject fills it in, so the queue never names another app's fields."""

    label: str
    url: str = ""
    owner: str = ""
    name: str = ""
    duration_ms: int | None = None


ResultT = TypeVar("ResultT")


class BaseJobHandler(Generic[ResultT]):
    """Subclass it, set `job_type`, implement `run()`; override the hooks you need.

    Each hook after `run()` is called inside the transaction whose compare-and-set on the job
    just won, so what it writes commits or rolls back with the job's own state.
    """

    job_type: str = ""
    # Lookups from Job to its subject, for the queue admin's search box and owner filter;
    # declared by the app that owns the subject.
    subject_search_fields: tuple[str, ...] = ()
    subject_owner_field: str = ""

    def started(self, attempt: Attempt) -> None:
        """The attempt holds the job now (status processing, attempt counted)."""

    def retry_delay(self, job: Job) -> timedelta | None:
        """The wait before the next attempt of `job` (after `job.attempts` attempts); None:
        the queue's own (WORKER_RETRY_DELAYS)."""
        return None

    def run(self, attempt: Attempt) -> ResultT:
        """Do the work and return its result. Raise PermanentError, Cancelled, or anything
        else to retry; call `attempt.heartbeat()` at every safe point."""
        raise NotImplementedError

    def succeeded(self, attempt: Attempt, result: ResultT) -> None:
        """The job is `succeeded`; `result` is what `run()` returned."""

    def retrying(self, job: Job, error: str, retry_at: datetime) -> None:
        """An attempt failed and the job is queued again for `retry_at`."""

    def failed(self, job: Job, code: str, error: str) -> None:
        """The job failed for good."""

    def cancelled(self, job: Job) -> None:
        """The job stopped because it was cancelled."""

    def released(self, job: Job) -> None:
        """The job went back to the queue unfinished (its worker shut down)."""

    def describe_many(self, jobs: Sequence[Job]) -> dict[UUID, Subject]:
        """The subjects of a page of this type's jobs, by job id, in a fixed number of
        queries whatever the page holds. Jobs left out have no subject to show."""
        return {}

    def media_ms(self, jobs: QuerySet[Job]) -> int:
        """Milliseconds of media that these finished jobs of this type processed: the queue
        dashboard's throughput. One query at most; 0 for job types without media."""
        return 0

    def runs_finished(self, jobs: QuerySet[Job]) -> int:
        """How many runs these succeeded jobs of this type finished: /api/stats' throughput
        counts runs, not the jobs that made them. One query at most; 0 for job types that
        finish no run."""
        return 0


# Stands in when a job's type has no handler: the job's own row still ends properly.
_NO_HANDLER: BaseJobHandler[Any] = BaseJobHandler()


@dataclass(frozen=True)
class Periodic:
    every: timedelta
    # Asked each time: a job that has nothing to do in this configuration is not queued.
    when: Callable[[], bool]


_handlers: dict[str, BaseJobHandler[Any]] = {}
_periodic: dict[str, Periodic] = {}
_housekeeping: list[Callable[[], object]] = []


def register(
    handler: BaseJobHandler[Any],
    *,
    every: timedelta | None = None,
    when: Callable[[], bool] = lambda: True,
) -> None:
    """Register `handler` for its job type. With `every`, worker clusters also queue one such
    job whenever none has been queued for that long and `when()` is true (see
    runner.enqueue_periodic_jobs)."""
    _handlers[handler.job_type] = handler
    if every is not None:
        _periodic[handler.job_type] = Periodic(every, when)


def periodic_job_types() -> dict[str, timedelta]:
    """The periodic job types that are on now, with their intervals."""
    return {job_type: p.every for job_type, p in _periodic.items() if p.when()}


def register_housekeeping(task: Callable[[], object]) -> None:
    """A small, idempotent chore each worker cluster's loop runs every few seconds (for
    example, finishing what a killed process left half-done)."""
    _housekeeping.append(task)


def housekeeping() -> list[Callable[[], object]]:
    return list(_housekeeping)


_machine_checks: list[Callable[[], list[str]]] = []


def register_machine_check(check: Callable[[], list[str]]) -> None:
    """A quick look at something on this machine that the service needs (a model's files):
    it returns what is wrong, in sentences fit for an operator and naming no path. Each worker
    cluster's beat runs the checks and keeps their findings in its row; /api/health runs them
    in the web process too, and is `degraded` while any finds something."""
    _machine_checks.append(check)


def machine_problems() -> list[str]:
    problems: list[str] = []
    for check in _machine_checks:
        try:
            problems.extend(check())
        except Exception as exc:
            problems.append(f"the check {getattr(check, '__name__', check)} failed: {exc}")
    return problems


def get_handler(job_type: str) -> BaseJobHandler[Any]:
    try:
        return _handlers[job_type]
    except KeyError:
        raise PermanentError("unknown_job_type", f"no handler for job type {job_type!r}") from None


def handler_or_none(job_type: str) -> BaseJobHandler[Any]:
    """The handler of `job_type`, or one whose hooks do nothing."""
    return _handlers.get(job_type, _NO_HANDLER)


def handlers() -> list[BaseJobHandler[Any]]:
    return list(_handlers.values())


def describe(jobs: Sequence[Job]) -> dict[UUID, Subject]:
    """The subjects of a page of jobs of any types: one `describe_many` per type present."""
    by_type: dict[str, list[Job]] = {}
    for job in jobs:
        by_type.setdefault(job.job_type, []).append(job)
    subjects: dict[UUID, Subject] = {}
    for job_type, of_type in by_type.items():
        subjects.update(handler_or_none(job_type).describe_many(of_type))
    return subjects
