"""A django-q2 broker over the project's own `job` table.

django-q2's pusher calls `dequeue()` in a loop and puts what it returns into the cluster's
in-memory task queue, where a task may wait until a worker is free (DESIGN.md, item 7). So the
pick here is only a short hold (`picked_by`/`picked_until`, JOB_PICK_HOLD_SECONDS) that keeps
other clusters from picking the same job meanwhile; the job stays `queued` for users, and the
claim that counts is the compare-and-set in `runner.run_job` when a worker starts it. If this
cluster is busy or dies, the hold runs out and any cluster can pick the job again.

The broker only picks. Everything else a cluster does for the queue (reaping expired leases,
periodic jobs, pruning) runs in the worker command's own loop: an exception here would make
django-q2's pusher log "Failed to pull task from broker", sleep 10 s and leave its loop for
good, so `dequeue` never lets one out.

Between picks the pusher waits for a job to become due. On PostgreSQL it waits on a LISTEN
connection of its own: a trigger on the job table (migration 0003) notifies whenever a job
becomes waiting, so an idle cluster starts a new job as soon as its transaction commits, and
POLL_INTERVAL is only the safety net (a retry that falls due later, a pick hold that ran out,
a lost connection). SQLite has no NOTIFY; there the pusher reads every SQLITE_POLL_INTERVAL
whether another connection has committed (`PRAGMA data_version`, which reads no table) and
picks when one has, or when POLL_INTERVAL has passed: a job queued or ended, a cluster paused
or resumed is a commit; a retry's time coming or a pick hold running out is not.

A cluster picks only for its worker processes that have no job (`idle_slots`): a job held in
its memory is one that another, idle, cluster cannot run. So a job that ends is a reason to
pick too, and it also notifies (migration 0005).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import Exists, Q
from django.utils import timezone
from django_q.brokers import Broker
from django_q.conf import Conf
from django_q.signing import SignedPackage

from lingoloop.database import CommitMark, committed_since, sqlite_commit_mark
from tasks_admin.models import Job, JobStatus, Worker
from tasks_admin.runner import cluster_id, current_worker_id

logger = logging.getLogger(__name__)

TASK_FUNC = "tasks_admin.runner.run_job"
NOTIFY_CHANNEL = "lingoloop_job_due"  # the trigger in migration 0003 sends on it


class DueJobSignal:
    """Waits until a job may have become due, or until `timeout` passed.

    PostgreSQL: NOTIFYs on a dedicated autocommit connection (Django's own is used for picks
    and may be closed between them). Each wake-up costs one pick; waking for nothing is
    harmless. A broken connection is dropped and opened again at the next wait, and until
    then the wait is a plain sleep: the poll is still there.

    SQLite: until another connection has committed since `since` (the mark taken before the
    pick that found nothing, so that a commit during the pick is not missed), looked at every
    SQLITE_POLL_INTERVAL. Picking every SQLITE_POLL_INTERVAL instead cost each cluster about
    3 % of a core, busy or idle (0.9 CPU-s of a 29 s run shared by two clusters).
    """

    def __init__(self) -> None:
        self._listener: Any = None

    def wait(self, timeout: float, *, since: CommitMark | None = None) -> None:
        if connection.vendor != "postgresql":
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, settings.SQLITE_POLL_INTERVAL / 1000))
                try:
                    if committed_since(since):
                        return
                except Exception:
                    return  # the pick says what is wrong, and handles it
            return
        try:
            listener = self._listen()
            for _ in listener.notifies(timeout=timeout, stop_after=1):
                pass
            # Several notifications may have come together: one pick serves them all.
            for _ in listener.notifies(timeout=0):
                pass
        except Exception:
            logger.warning("waiting for NOTIFY failed; polling meanwhile", exc_info=True)
            self.close()
            time.sleep(timeout)

    def _listen(self) -> Any:
        """The LISTEN connection, opened (and listening) once. A job that became due while
        it was closed is found by the pick that follows the next wait."""
        if self._listener is None or self._listener.closed:
            listener = connection.get_new_connection(connection.get_connection_params())
            listener.autocommit = True
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._listener = listener
        return self._listener

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None


class JobBroker(Broker):
    database_away = False

    def __init__(self, list_key: str | None = None) -> None:
        super().__init__(list_key)  # type: ignore[arg-type]
        self.due_signal = DueJobSignal()

    def __setstate__(self, state: Any) -> None:
        """A copy sent to another process starts with no LISTEN connection of its own."""
        super().__setstate__(state)
        self.due_signal = DueJobSignal()

    def enqueue(self, task: str) -> str:
        raise NotImplementedError(
            "LingoLoop jobs are rows in the job table; create them with "
            "tasks_admin.services.job_enqueue(), not django_q.tasks.async_task()."
        )

    def dequeue(self) -> list[tuple[str, str]] | None:
        """Due jobs for the cluster, or None once a job may have become due or one poll
        interval passed. Never raises: a database error is logged and the pick tried again
        after the interval."""
        try:
            close_old_connections()  # drops a connection that a failed pick left broken
            mark = sqlite_commit_mark()  # before the pick: a commit during it wakes the wait
            cluster = cluster_id()
            limit = Conf.BULK if cluster is None else min(Conf.BULK, self.idle_slots(cluster))
            picked = self.pick(limit=limit, cluster=cluster) if limit > 0 else []
            if picked:
                self.database_away = False
                return [(str(job_id), self._package(job_id)) for job_id in picked]
        except (OperationalError, InterfaceError):
            # The database is away (stopped, restarting): one line when it goes, one when it
            # is back, not a traceback every poll.
            if not self.database_away:
                logger.exception("picking jobs: the database does not answer; trying again")
            self.database_away = True
            time.sleep(Conf.POLL)
            return None
        except Exception:
            logger.exception("picking jobs failed; trying again in %s s", Conf.POLL)
            time.sleep(Conf.POLL)
            return None
        if self.database_away:
            logger.info("picking jobs: the database answers again")
            self.database_away = False
        self.due_signal.wait(Conf.POLL, since=mark)
        return None

    @staticmethod
    def idle_slots(cluster: str) -> int:
        """How many of the cluster's worker processes have no job: its processes less the
        jobs they run and those it holds picked for them.

        A cluster picks no more than that. django-q2's pusher puts what it picks into the
        cluster's task queue and, when that is full, waits in `put` holding the job it
        picked: without this, an idle cluster beside a busy one would find the queue's jobs
        held by the busy one (measured: three of a split run's four chunks ran one after the
        other on one cluster while the other, idle, waited)."""
        now = timezone.now()
        prefix = f"{cluster}:"
        busy = Job.objects.filter(
            Q(status=JobStatus.PROCESSING, locked_by__startswith=prefix)
            | Q(status=JobStatus.QUEUED, picked_by__startswith=prefix, picked_until__gte=now)
        ).count()
        return max(0, Conf.WORKERS - busy)

    def pick(self, *, limit: int, cluster: str | None = None) -> list[uuid.UUID]:
        """Hold up to `limit` due jobs, highest priority first, then oldest; with `cluster`,
        none unless that cluster is running with room on its disk (checked in the pick's own
        query: a paused cluster, or one whose beat found its scratch space below
        MIN_FREE_DISK_BYTES, picks nothing).

        On PostgreSQL, SKIP LOCKED lets clusters pick side by side without waiting on each
        other; the conditional UPDATE is what makes the hold exclusive on every database.
        """
        now = timezone.now()
        hold_until = now + timedelta(seconds=settings.JOB_PICK_HOLD_SECONDS)
        holder = current_worker_id()
        due = Job.objects.due(now)
        if cluster is not None:
            # A running cluster whose disk is low (Worker.low_disk) picks nothing either.
            due = due.filter(Exists(Worker.objects.picking().filter(pk=cluster)))
        with transaction.atomic():
            candidates = list(
                due.in_claim_order()
                .select_for_update(skip_locked=True)
                .values_list("pk", flat=True)[:limit]
            )
            return [
                pk
                for pk in candidates
                if Job.objects.due(now)
                .filter(pk=pk)
                .update(picked_by=holder, picked_until=hold_until)
            ]

    @staticmethod
    def _package(job_id: uuid.UUID) -> str:
        return SignedPackage.dumps(
            {
                "id": uuid.uuid4().hex,
                "name": f"job-{job_id}",
                "func": TASK_FUNC,
                "args": (str(job_id),),
                "kwargs": {},
                "started": timezone.now(),
            }
        )

    def acknowledge(self, task_id: str) -> None:
        """Nothing to do: the attempt already recorded its outcome on the job row."""

    def fail(self, task_id: str) -> None:
        """Nothing to do: an undelivered pick simply runs out and is picked again."""

    def delete(self, task_id: str) -> None:
        pass

    def queue_size(self) -> int:
        return Job.objects.due().count()

    def lock_size(self) -> int:
        return Job.objects.filter(status=JobStatus.PROCESSING).count()

    def purge_queue(self) -> None:
        raise NotImplementedError("cancel runs through the API or the admin instead")

    def delete_queue(self) -> None:
        self.purge_queue()

    def ping(self) -> bool:
        return True

    def info(self) -> str:
        return f"job table on {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}"
