"""`python manage.py worker`: a django-q2 cluster working through the job table.

This process registers the cluster in the `worker` table, starts django-q2's sentinel (which
forks the worker processes, the pusher and the monitor) and then runs the cluster's loop: a
plain loop of small units, each on its own schedule and in its own try/except, so one that
fails (logged at ERROR with its traceback) never stops the others:

- beat: `last_seen`, so operators and other clusters see this one alive, and what it found
  wrong with its machine: free space below MIN_FREE_DISK_BYTES (`low_disk`: the broker then
  picks nothing for it until there is room again) and the machine checks' findings (a
  damaged model: `problems`);
- reap expired leases: jobs whose worker died go back to the queue (or fail when spent);
- periodic jobs: queue those that are due (only while this cluster is running);
- forget stale workers: rows of clusters that died without cleaning up;
- prune finished jobs older than JOB_RETENTION_DAYS;
- the housekeeping other apps registered (delivering stranded outbox events).

django-q2's pusher only picks (tasks_admin.broker); the worker processes only run attempts
(tasks_admin.runner). SIGTERM or SIGINT (Ctrl-C) only sets a flag; the loop then stops the
cluster gracefully: it claims nothing new, running jobs may finish for
WORKER_SHUTDOWN_GRACE_SECONDS, then they are handed back to the queue at their next safe
point; a process that does not stop soon after is killed and its job handed back. Nothing is
left `processing` without a live lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection, connections
from django.utils import timezone
from django_q.cluster import Cluster
from django_q.signals import post_spawn

from lingoloop import disk
from lingoloop.metrics import prepare_folder
from tasks_admin.handlers import housekeeping, machine_problems
from tasks_admin.models import Job, Worker, WorkerState
from tasks_admin.runner import (
    CLUSTER_ENV,
    enqueue_periodic_jobs,
    hand_back_all,
    reap_expired_leases,
)

logger = logging.getLogger(__name__)

BEAT_SECONDS = 2.0
# After the grace period, how long a job gets to reach its next safe point before its
# process is killed.
HARD_STOP_SECONDS = 20.0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


@dataclass
class Unit:
    """One small step of the loop, run at most every `every` seconds."""

    name: str
    do: Callable[[], object]
    every: float = BEAT_SECONDS
    next_at: float = 0.0
    failing: bool = False  # its last run raised: logged once, not at every beat


def low_disk() -> str:
    """Why this cluster must not pick jobs for want of disk space, or "": a job fetches its
    audio and cuts its pieces into DATA_DIR/tmp, and writes its results (on SQLite, into the
    data folder). Started on a full disk, it would fail part-way and be retried for nothing."""
    low = disk.low_folders()
    return ("; ".join(disk.describe_low(folder) for folder in low))[:300]


def units(worker: Worker) -> list[Unit]:
    seen: dict[str, object] = {}

    def beat() -> None:
        # The machine's state rides on the beat's UPDATE: no write of its own, read by the
        # pick (Worker.low_disk) and by /api/health and the admin.
        state = {"low_disk": low_disk(), "problems": machine_problems()}
        if state != seen:
            for message in state["problems"]:
                logger.error("worker %s: %s", worker.pk, message)
            if state["low_disk"]:
                logger.error("worker %s picks no jobs: %s", worker.pk, state["low_disk"])
            elif seen.get("low_disk"):
                logger.warning("worker %s picks jobs again: its disk has room", worker.pk)
            seen.clear()
            seen.update(state)
        Worker.objects.filter(pk=worker.pk).update(last_seen=timezone.now(), **state)

    def periodic_jobs() -> None:
        if Worker.objects.filter(pk=worker.pk, state=WorkerState.RUNNING).exists():
            enqueue_periodic_jobs()

    return [
        # Drops a connection that a failed unit left broken, so the next units reconnect.
        Unit("close broken connections", close_old_connections),
        Unit("beat", beat),
        Unit("reap expired leases", reap_expired_leases, every=5.0),
        Unit("enqueue periodic jobs", periodic_jobs, every=10.0),
        Unit("forget stale workers", Worker.objects.forget_stale, every=60.0),
        Unit("prune finished jobs", prune_finished_jobs, every=3600.0),
        *(Unit(getattr(task, "__name__", str(task)), task) for task in housekeeping()),
    ]


def lower_priority(nice: int) -> int:
    """Run this process, and every process and thread it starts from now on, at OS nice value
    `nice` (WORKER_NICE) or lower priority still if it already runs so: when transcription
    and the web share the CPUs, the web answers first. Returns the nice value in force."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)


def lower_worker_processes_priority(nice: int) -> int:
    """From now on, each django-q2 worker process (the ones that run jobs, transcription
    included) lowers its own priority to `nice` as it starts (`lower_priority`), respawned
    ones too. The rest of the cluster keeps this process's priority: this loop, the sentinel,
    the monitor and the pusher only keep house and pick, and a pick niced behind a busy web
    process (which is storing the new run's events right then) made every pickup wait
    several milliseconds more. Returns the nice value the worker processes will run at."""

    def on_spawn(**_: object) -> None:
        lower_priority(nice)

    post_spawn.connect(on_spawn, weak=False, dispatch_uid="lingoloop-worker-nice")
    return max(nice, os.getpriority(os.PRIO_PROCESS, 0))


def keep_database_connections() -> None:
    """Let this process, and every process it forks from now on, keep its database
    connections open between uses (CONN_MAX_AGE=None for this process only; the web's
    setting is left alone).

    django-q2 calls `close_old_connections()` before every task and the broker before every
    pick; with the default CONN_MAX_AGE=0 each of them closed the connection, so a pick and a
    claim each opened a new one first: on PostgreSQL about 10 ms apiece of a job's pickup. A
    kept connection that broke is still replaced: the health check (CONN_HEALTH_CHECKS) tests
    it before its first use after each of those calls. Threads that use the database (the
    lease keeper, the progress ticker) still close theirs when they end.
    """
    for alias in connections:
        connections[alias].settings_dict["CONN_MAX_AGE"] = None


def prune_finished_jobs() -> int:
    return Job.objects.prune_finished(days=settings.JOB_RETENTION_DAYS)


def run_due(loop: list[Unit]) -> None:
    """Run each unit whose time has come; one that raises is logged and the rest still run."""
    for unit in loop:
        now = time.monotonic()
        if now < unit.next_at:
            continue
        unit.next_at = now + unit.every
        try:
            unit.do()
        except Exception:
            # A database that is away fails every unit at every beat: its first failure is
            # logged with the traceback, the rest of the streak only once it ends.
            if not unit.failing:
                logger.exception("worker loop: %s failed", unit.name)
            unit.failing = True
        else:
            if unit.failing:
                logger.info("worker loop: %s works again", unit.name)
            unit.failing = False


class Command(BaseCommand):
    help = "Start a worker cluster that claims jobs from the job table."

    def handle(self, *args: Any, **options: Any) -> None:
        worker = Worker.objects.create(
            id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            processes=settings.MAX_CONCURRENT_JOBS,
            low_disk=low_disk(),  # before the pusher's first pick, not at the first beat
        )
        os.environ[CLUSTER_ENV] = worker.id
        prepare_folder()  # before django-q2 forks: its processes count into a clean folder
        nice = lower_worker_processes_priority(settings.WORKER_NICE)
        self.stdout.write(self._banner(worker, nice))
        self.stdout.flush()
        # CTranslate2 is not fork-safe: nothing here may load the model. Each worker process
        # loads it lazily on its first job and keeps it. No connection may cross the fork
        # either: each process opens its own, and keeps it.
        connection.close()
        keep_database_connections()

        stop = threading.Event()
        cluster = Cluster()
        # Cluster() installed django-q2's handlers; ours only set a flag, the loop does the rest.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        loop = units(worker)
        try:
            cluster.start()
            while not stop.is_set() and cluster.sentinel.is_alive():
                run_due(loop)
                stop.wait(BEAT_SECONDS)
            self._stop(worker, cluster, loop)
        finally:
            close_old_connections()
            released = hand_back_all(worker.id, reason="its worker stopped")
            Worker.objects.filter(pk=worker.pk).delete()
            self.stdout.write(
                f"LingoLoop worker {worker.id} stopped"
                + (f"; {released} job(s) handed back to the queue." if released else ".")
            )

    def _banner(self, worker: Worker, nice: int) -> str:
        db = settings.DATABASES["default"]
        where = (
            db["NAME"]
            if db["ENGINE"].endswith("sqlite3")
            else f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db['NAME']}"
        )
        wake = (
            f"woken by NOTIFY, polling every {settings.POLL_INTERVAL} ms as a safety net"
            if connection.vendor == "postgresql"
            else f"looking for commits every {settings.SQLITE_POLL_INTERVAL} ms, picking on one "
            f"or every {settings.POLL_INTERVAL} ms"
        )
        return (
            f"LingoLoop worker {worker.id}: the job table on {connection.vendor} ({where}), "
            f"{wake}, with {settings.MAX_CONCURRENT_JOBS} worker process(es) at nice {nice}, "
            f"model {settings.WHISPER_MODEL}, events via "
            f"{'Redis' if settings.REDIS_URL else 'the database'}."
        )

    def _stop(self, worker: Worker, cluster: Cluster, loop: list[Unit]) -> None:
        grace = settings.WORKER_SHUTDOWN_GRACE_SECONDS
        deadline = timezone.now() + timedelta(seconds=grace)
        Worker.objects.filter(pk=worker.pk).update(
            state=WorkerState.STOPPING, stop_deadline=deadline, last_seen=timezone.now()
        )
        self.stdout.write(
            f"Stopping: running jobs may finish for {grace} s, then go back to the queue."
        )
        self.stdout.flush()
        stopper = threading.Thread(target=cluster.stop, daemon=True)
        stopper.start()
        hard_stop = time.monotonic() + grace + HARD_STOP_SECONDS
        while stopper.is_alive():
            run_due(loop)
            if time.monotonic() > hard_stop:
                for pid in reversed(descendants(os.getpid())):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            stopper.join(BEAT_SECONDS)
