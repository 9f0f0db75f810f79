"""`python manage.py worker`: a django-q2 cluster working through the job table.

This process registers the cluster in the `worker` table, starts django-q2's sentinel (which
forks the worker processes, the pusher and the monitor) and then beats `last_seen` every few
seconds. SIGTERM or SIGINT (Ctrl-C) stops it gracefully: the cluster claims nothing new,
running jobs may finish for WORKER_SHUTDOWN_GRACE_SECONDS, then they are handed back to the
queue at their next safe point; a process that does not stop soon after is killed and its job
handed back. Nothing is left `processing` without a live lease.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection
from django.utils import timezone
from django_q.cluster import Cluster

from tasks_admin.handlers import run_housekeeping
from tasks_admin.models import Worker, WorkerState
from tasks_admin.runner import CLUSTER_ENV, enqueue_periodic_jobs, hand_back_all

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


class Command(BaseCommand):
    help = "Start a worker cluster that claims jobs from the job table."

    def handle(self, *args: Any, **options: Any) -> None:
        worker = Worker.objects.create(
            id=uuid.uuid4().hex[:12],
            host=socket.gethostname(),
            pid=os.getpid(),
            processes=settings.MAX_CONCURRENT_JOBS,
        )
        os.environ[CLUSTER_ENV] = worker.id
        self.stdout.write(self._banner(worker))
        self.stdout.flush()
        # CTranslate2 is not fork-safe: nothing here may load the model. Each worker process
        # loads it lazily on its first job and keeps it.
        connection.close()

        stop = threading.Event()
        cluster = Cluster()
        # Cluster() installed django-q2's handlers; ours only set a flag, the loop does the rest.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        try:
            cluster.start()
            while not stop.is_set() and cluster.sentinel.is_alive():
                self._beat(worker)
                stop.wait(BEAT_SECONDS)
            self._stop(worker, cluster)
        finally:
            close_old_connections()
            released = hand_back_all(worker.holder_prefix, reason="its worker stopped")
            Worker.objects.filter(pk=worker.pk).delete()
            self.stdout.write(
                f"LingoLoop worker {worker.id} stopped"
                + (f"; {released} job(s) handed back to the queue." if released else ".")
            )

    def _banner(self, worker: Worker) -> str:
        db = settings.DATABASES["default"]
        where = (
            db["NAME"]
            if db["ENGINE"].endswith("sqlite3")
            else f"{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db['NAME']}"
        )
        return (
            f"LingoLoop worker {worker.id}: polling the job table on {connection.vendor} "
            f"({where}) every {settings.POLL_INTERVAL} ms with {settings.MAX_CONCURRENT_JOBS} "
            f"worker process(es), model {settings.WHISPER_MODEL}, events via "
            f"{'Redis' if settings.REDIS_URL else 'the database'}."
        )

    @staticmethod
    def _beat(worker: Worker) -> None:
        close_old_connections()
        Worker.objects.filter(pk=worker.pk).update(last_seen=timezone.now())
        if Worker.objects.filter(pk=worker.pk, state=WorkerState.RUNNING).exists():
            enqueue_periodic_jobs()
        run_housekeeping()

    def _stop(self, worker: Worker, cluster: Cluster) -> None:
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
            self._beat(worker)
            if time.monotonic() > hard_stop:
                for pid in reversed(descendants(os.getpid())):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            stopper.join(BEAT_SECONDS)
