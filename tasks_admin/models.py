"""The job table is the queue (DESIGN.md, "Job queue").

Every state change is a compare-and-set: an UPDATE filtered on the state it expects, whose row
count says whether this process won. A second worker, a late duplicate delivery or a cancel
racing a finish can never both win.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobQuerySet(models.QuerySet["Job"]):
    def waiting(self, now: datetime | None = None) -> JobQuerySet:
        """Queued jobs that may start now: what users see as the queue."""
        return self.filter(status=JobStatus.QUEUED, run_after__lte=now or timezone.now())

    def due(self, now: datetime | None = None) -> JobQuerySet:
        """Waiting jobs that no cluster holds in memory: what a broker may pick."""
        now = now or timezone.now()
        return self.waiting(now).filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))

    def in_claim_order(self) -> JobQuerySet:
        return self.order_by("-priority", "created_at", "id")

    def lease_expired(self, now: datetime | None = None) -> JobQuerySet:
        return self.filter(status=JobStatus.PROCESSING, locked_until__lt=now or timezone.now())


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
    # While queued: the cluster that picked the job and how long it may hold it unstarted.
    # While processing: the worker process that runs it and its lease.
    locked_by = models.CharField(max_length=200, blank=True, default="")
    locked_until = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
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
        ]

    def __str__(self) -> str:
        return f"{self.job_type} {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    def claim(self, worker_id: str) -> bool:
        """Start this job in `worker_id`: the claim that counts (the broker's pick does not).

        Only a due queued job can be claimed; the attempt is counted here, so a worker killed
        with SIGKILL still used its attempt and a poison job cannot loop for ever.
        """
        now = timezone.now()
        won = (
            Job.objects.filter(
                pk=self.pk,
                status=JobStatus.QUEUED,
                run_after__lte=now,
                attempts__lt=F("max_attempts"),
            ).update(
                status=JobStatus.PROCESSING,
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
        """Heartbeat. False means the claim was lost: the caller must stop without writing."""
        now = timezone.now()
        self.locked_until = now + timedelta(seconds=settings.JOB_LEASE_SECONDS)
        self.heartbeat_at = now
        return (
            Job.objects.filter(pk=self.pk, status=JobStatus.PROCESSING, locked_by=worker_id).update(
                locked_until=self.locked_until, heartbeat_at=now
            )
            == 1
        )

    def finish(self, worker_id: str, status: str, *, error: str = "") -> bool:
        """End an attempt held by `worker_id` in a terminal state."""
        now = timezone.now()
        fields = {"status": status, "finished_at": now, "locked_until": None}
        if error:
            fields["last_error"] = error
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

    objects = WorkerQuerySet.as_manager()

    class Meta:
        db_table = "worker"

    def __str__(self) -> str:
        return f"worker {self.id} on {self.host} ({self.state})"

    @property
    def holder_prefix(self) -> str:
        """Every job this cluster's processes hold has `locked_by` starting with this."""
        return f"{self.id}:"

    @property
    def is_alive(self) -> bool:
        stale = timedelta(seconds=settings.WORKER_STALE_SECONDS)
        return self.last_seen >= timezone.now() - stale

    def current_jobs(self) -> JobQuerySet:
        return Job.objects.filter(
            status=JobStatus.PROCESSING, locked_by__startswith=self.holder_prefix
        )
