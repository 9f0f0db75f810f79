"""The job table is the queue (DESIGN.md, "Job queue").

Every state change is a compare-and-set: an UPDATE filtered on the state it expects, whose row
count says whether this process won. A second worker, a late duplicate delivery or a cancel
racing a finish can never both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Exists, F, Q
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

# A cluster unseen for this many times WORKER_STALE_SECONDS is taken for dead and forgotten.
FORGET_AFTER_STALE = 10


# The order in which waiting jobs are picked (queue positions count in it too).
CLAIM_ORDER = ("-priority", "created_at", "id")


class JobQuerySet(models.QuerySet["Job"]):
    def waiting(self, now: datetime | None = None) -> JobQuerySet:
        """Queued jobs that may start now: what users see as the queue."""
        return self.filter(status=JobStatus.QUEUED, run_after__lte=now or timezone.now())

    def due(self, now: datetime | None = None) -> JobQuerySet:
        """Waiting jobs that no process holds picked: what a broker may pick."""
        now = now or timezone.now()
        return self.waiting(now).filter(Q(picked_until__isnull=True) | Q(picked_until__lt=now))

    def in_claim_order(self) -> JobQuerySet:
        return self.order_by(*CLAIM_ORDER)

    def lease_expired(self, now: datetime | None = None) -> JobQuerySet:
        return self.filter(status=JobStatus.PROCESSING, locked_until__lt=now or timezone.now())

    def held_by_cluster(self, cluster: str) -> JobQuerySet:
        """Processing jobs leased by the processes of one worker cluster."""
        return self.filter(status=JobStatus.PROCESSING, locked_by__startswith=f"{cluster}:")

    def prune_finished(self, *, days: int, now: datetime | None = None) -> int:
        """Delete jobs that finished more than `days` days ago; 0 days keeps every job.

        Only the queue's own bookkeeping goes: the runs they served keep their state.
        """
        if days <= 0:
            return 0
        cutoff = (now or timezone.now()) - timedelta(days=days)
        deleted, _ = self.filter(status__in=TERMINAL_JOB_STATUSES, finished_at__lt=cutoff).delete()
        return deleted


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job_type = models.CharField(max_length=64)
    # A string reference: tasks_admin never imports transcription.
    run = models.ForeignKey(
        "transcription.TranscriptRun",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="jobs",
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    priority = models.IntegerField(default=0)
    run_after = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    # While queued: the process that picked the job (a cluster's pusher, or the web process
    # about to run a sync job) and until when no other process may pick it. The claim clears it.
    picked_by = models.CharField(max_length=200, blank=True, default="")
    picked_until = models.DateTimeField(null=True, blank=True)
    # While processing: the worker process that runs it (`<cluster>:<host>:<pid>`) and its
    # lease; `heartbeat_at` is when that process last renewed it. `locked_by` stays set after
    # the job finishes, naming the process that ran its last attempt.
    locked_by = models.CharField(max_length=200, blank=True, default="")
    locked_until = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # Why a failed job failed, as a machine code (`timeout`, `worker_lost`, a handler's own
    # such as `not_audio`): /api/stats counts failures by it.
    error_code = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        db_table = "job"
        indexes = [
            # Admin and operators: SELECT … WHERE status = ? ORDER BY created_at.
            models.Index(fields=["status", "created_at"], name="idx_job_status_created"),
            # The claim: WHERE status = 'queued' AND run_after <= now
            #            ORDER BY priority DESC, created_at ASC.
            models.Index(fields=["status", "-priority", "created_at"], name="idx_job_claim"),
            # /api/stats and the dashboard chart: … WHERE finished_at >= ? (the last day's
            # throughput and failures) and … WHERE started_at >= ? (its queue waits).
            models.Index(fields=["finished_at"], name="idx_job_finished"),
            models.Index(fields=["started_at"], name="idx_job_started"),
        ]

    def __str__(self) -> str:
        return f"{self.job_type} {self.id} ({self.status})"

    def claim(self, worker_id: str, *, cluster: str | None = None) -> bool:
        """Start this job in `worker_id`: the claim that counts (the broker's pick does not).

        Only a due queued job can be claimed; the attempt is counted here, so a worker killed
        with SIGKILL still used its attempt and a poison job cannot loop for ever. With
        `cluster`, only while that cluster is running (not paused, stopping or gone): checked
        in the claim's own statement, so a job start costs no read before it.
        """
        now = timezone.now()
        claimable = Job.objects.filter(
            pk=self.pk,
            status=JobStatus.QUEUED,
            run_after__lte=now,
            attempts__lt=F("max_attempts"),
        )
        if cluster is not None:
            claimable = claimable.filter(
                Exists(Worker.objects.filter(pk=cluster, state=WorkerState.RUNNING))
            )
        won = (
            claimable.update(
                status=JobStatus.PROCESSING,
                picked_by="",
                picked_until=None,
                locked_by=worker_id,
                locked_until=now + timedelta(seconds=settings.JOB_LEASE_SECONDS),
                heartbeat_at=now,
                started_at=now,
                attempts=F("attempts") + 1,
            )
            == 1
        )
        if won:
            self.refresh_from_db()
        return won

    def extend_lease(self, worker_id: str) -> bool:
        """Renew the lease (the runner's LeaseKeeper is its one writer). False means the claim
        is gone: the attempt must stop without writing. On success `locked_until` holds the
        new end of the lease."""
        now = timezone.now()
        until = now + timedelta(seconds=settings.JOB_LEASE_SECONDS)
        renewed = (
            Job.objects.filter(pk=self.pk, status=JobStatus.PROCESSING, locked_by=worker_id).update(
                locked_until=until, heartbeat_at=now
            )
            == 1
        )
        if renewed:
            self.locked_until, self.heartbeat_at = until, now
        return renewed

    def finish(self, worker_id: str, status: str, *, error: str = "", code: str = "") -> bool:
        """End an attempt held by `worker_id` in a terminal state."""
        now = timezone.now()
        fields = {"status": status, "finished_at": now, "locked_until": None}
        if error:
            fields["last_error"] = error
        if code:
            fields["error_code"] = code
        won = (
            Job.objects.filter(pk=self.pk, status=JobStatus.PROCESSING, locked_by=worker_id).update(
                **fields
            )
            == 1
        )
        if won:
            self.refresh_from_db()
        return won

    def retry_later(self, worker_id: str, *, error: str, delay: timedelta) -> bool:
        """Hand a failed attempt back to the queue, due again after `delay`."""
        now = timezone.now()
        won = (
            Job.objects.filter(pk=self.pk, status=JobStatus.PROCESSING, locked_by=worker_id).update(
                status=JobStatus.QUEUED,
                run_after=now + delay,
                last_error=error,
                locked_by="",
                locked_until=None,
            )
            == 1
        )
        if won:
            self.refresh_from_db()
        return won

    @property
    def retries_left(self) -> int:
        return max(0, self.max_attempts - self.attempts)


class WorkerState(models.TextChoices):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


class WorkerQuerySet(models.QuerySet["Worker"]):
    def alive(self) -> WorkerQuerySet:
        return self.filter(last_seen__gte=timezone.now() - Worker.stale_after())

    def forget_stale(self) -> int:
        """Delete the rows of clusters unseen for FORGET_AFTER_STALE times the stale time.

        Such a cluster died without cleaning up (SIGKILL, a lost machine). Its jobs need
        nothing from here: their leases ran out long ago and the reaper took them back. A
        process of it that still runs reads the missing row as a stop order and hands its job
        back. A cluster that was only slow shows as STALE in the admin long before this.
        """
        cutoff = timezone.now() - Worker.stale_after() * FORGET_AFTER_STALE
        deleted, _ = self.filter(last_seen__lt=cutoff).delete()
        return deleted

    def picking(self) -> WorkerQuerySet:
        """Clusters that may pick jobs: running, with room on their disk."""
        return self.filter(state=WorkerState.RUNNING, low_disk="")

    def pause(self) -> int:
        """Running clusters stop claiming; a stopping one is on its way out and stays so."""
        return self.filter(state=WorkerState.RUNNING).update(state=WorkerState.PAUSED)

    def resume(self) -> int:
        return self.filter(state=WorkerState.PAUSED).update(state=WorkerState.RUNNING)


class Worker(models.Model):
    """One `manage.py worker` cluster: its master process beats `last_seen` every few seconds.

    `state` is also how operators steer it: a paused cluster finishes what it runs and claims
    nothing new; a stopping one hands running jobs back once `stop_deadline` has passed.
    """

    id = models.CharField(primary_key=True, max_length=32)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    processes = models.PositiveSmallIntegerField(default=1)
    state = models.CharField(
        max_length=16, choices=WorkerState.choices, default=WorkerState.RUNNING
    )
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    stop_deadline = models.DateTimeField(null=True, blank=True)
    jobs_done = models.PositiveIntegerField(default=0)
    # Why this cluster picks no job although it runs: its scratch space (the data and
    # temporary folders of its machine) is below MIN_FREE_DISK_BYTES. Its beat measures it
    # and the broker's pick reads it (`picking`); empty: it picks.
    low_disk = models.CharField(max_length=300, blank=True, default="")
    # What the machine checks (tasks_admin.handlers.register_machine_check) found wrong on
    # its machine at its last beat: a damaged model's files, say. It still picks.
    problems = models.JSONField(default=list, blank=True)

    objects = WorkerQuerySet.as_manager()

    # Not a column: what with_current_jobs() found this cluster's processes running.
    current_jobs: list[Job]

    class Meta:
        db_table = "worker"

    def __str__(self) -> str:
        return f"worker {self.id} on {self.host} ({self.state})"

    @property
    def holder_prefix(self) -> str:
        """Every job this cluster's processes lease has `locked_by` starting with this."""
        return f"{self.id}:"

    @staticmethod
    def stale_after() -> timedelta:
        return timedelta(seconds=settings.WORKER_STALE_SECONDS)

    @property
    def is_alive(self) -> bool:
        return self.last_seen >= timezone.now() - self.stale_after()


def with_current_jobs(workers: Iterable[Worker]) -> list[Worker]:
    """The workers, each with `current_jobs` set to the jobs its processes run now, read in
    one query for all of them.

    A job names its holder as `<cluster>:<host>:<pid>`, not by a foreign key: a cluster's row
    goes when it stops, and a finished job keeps naming the process that ran it.
    """
    workers = list(workers)
    running: dict[str, list[Job]] = {worker.id: [] for worker in workers}
    if workers:
        for job in Job.objects.filter(status=JobStatus.PROCESSING).order_by("started_at"):
            cluster = job.locked_by.split(":", 1)[0]
            if cluster in running:
                running[cluster].append(job)
    for worker in workers:
        worker.current_jobs = running[worker.id]
    return workers
