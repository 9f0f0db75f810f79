"""What the queue API answers: DRF output serializers that build each response and that
drf-spectacular documents, so the shape is written down once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rest_framework import serializers

from lingoloop.timefmt import iso_utc
from tasks_admin.models import JobStatus, WorkerState


class UtcDateTimeField(serializers.DateTimeField):
    """A time as every time in the API: ISO 8601 in UTC with a Z."""

    def to_representation(self, value: datetime) -> str | None:  # type: ignore[override]
        return iso_utc(value)


class WorkerJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    jobType = serializers.CharField(source="job_type")
    runId = serializers.UUIDField(source="run_id", allow_null=True)
    lockedBy = serializers.CharField(
        source="locked_by", help_text="The worker process that holds the job's lease."
    )
    leaseUntil = UtcDateTimeField(source="locked_until", allow_null=True)
    heartbeatAt = UtcDateTimeField(
        source="heartbeat_at", allow_null=True, help_text="When that process last renewed it."
    )


class WorkerStatusSerializer(serializers.Serializer):
    id = serializers.CharField()
    host = serializers.CharField()
    pid = serializers.IntegerField()
    processes = serializers.IntegerField(help_text="Worker processes in this cluster.")
    state = serializers.ChoiceField(choices=WorkerState.choices)
    alive = serializers.BooleanField(
        source="is_alive", help_text="Seen within WORKER_STALE_SECONDS."
    )
    startedAt = UtcDateTimeField(source="started_at")
    lastSeen = UtcDateTimeField(source="last_seen")
    jobsDone = serializers.IntegerField(source="jobs_done")
    lowDisk = serializers.CharField(
        source="low_disk",
        help_text="Why it picks no jobs although running: its disk space is below "
        "MIN_FREE_DISK_BYTES. Empty when it picks.",
    )
    problems = serializers.ListField(
        child=serializers.CharField(),
        help_text="What its last beat found wrong on its machine (a damaged model's files).",
    )
    # Set on each worker by tasks_admin.models.with_current_jobs (one query for all).
    currentJobs = WorkerJobSerializer(source="current_jobs", many=True)


class WorkersSerializer(serializers.Serializer):
    workers = WorkerStatusSerializer(many=True)


class JobCountsSerializer(serializers.Serializer):
    queued = serializers.IntegerField(min_value=0)
    processing = serializers.IntegerField(min_value=0)
    succeeded = serializers.IntegerField(min_value=0)
    failed = serializers.IntegerField(min_value=0)
    cancelled = serializers.IntegerField(min_value=0)

    def to_representation(self, instance: dict[str, int]) -> dict[str, Any]:
        """Every status, 0 when no job has it."""
        return super().to_representation({s: instance.get(s, 0) for s in JobStatus.values})


class ThroughputSerializer(serializers.Serializer):
    runs = serializers.IntegerField(
        min_value=0,
        help_text="Runs that succeeded in the window, each once (a run split into chunks too).",
    )
    audioSeconds = serializers.FloatField(
        source="audio_seconds", min_value=0, help_text="Audio those runs processed."
    )
    processingSeconds = serializers.FloatField(
        source="processing_seconds",
        min_value=0,
        help_text="Wall time their successful attempts took, added up.",
    )
    realTimeFactor = serializers.FloatField(
        source="real_time_factor",
        allow_null=True,
        help_text="Audio seconds per processing second (8.0: a minute of audio took 7.5 s); "
        "null when nothing finished.",
    )


class QueueWaitSerializer(serializers.Serializer):
    jobType = serializers.CharField(source="job_type")
    jobs = serializers.IntegerField(
        min_value=1, help_text="Jobs of this type whose latest attempt started in the window."
    )
    p50Seconds = serializers.FloatField(source="p50_seconds", min_value=0)
    p95Seconds = serializers.FloatField(source="p95_seconds", min_value=0)


class FailureSerializer(serializers.Serializer):
    jobType = serializers.CharField(source="job_type")
    code = serializers.CharField(help_text="The error code the job failed with.")
    count = serializers.IntegerField(min_value=1)
    rate = serializers.FloatField(
        min_value=0,
        max_value=1,
        help_text="Share of the jobs of this type that ended in the window.",
    )


class StatsWindowSerializer(serializers.Serializer):
    seconds = serializers.IntegerField(help_text="The window's length.")
    throughput = ThroughputSerializer()
    queueWait = QueueWaitSerializer(
        source="queue_wait",
        many=True,
        help_text="p50 and p95 wait from due to start, by job type (nearest rank).",
    )
    failures = FailureSerializer(
        many=True, help_text="Jobs that failed for good, by job type and error code."
    )


class StatsWindowsSerializer(serializers.Serializer):
    lastHour = StatsWindowSerializer()
    lastDay = StatsWindowSerializer()


class WebhookBacklogSerializer(serializers.Serializer):
    queued = serializers.IntegerField(min_value=0)
    processing = serializers.IntegerField(min_value=0)


class StatsSerializer(serializers.Serializer):
    jobs = JobCountsSerializer(help_text="Jobs by status.")
    queueDepth = serializers.IntegerField(
        source="queue_depth", min_value=0, help_text="Queued jobs that are due."
    )
    oldestQueuedAgeSeconds = serializers.FloatField(
        source="oldest_queued_age_seconds",
        allow_null=True,
        help_text="Age of the oldest due queued job; null when none.",
    )
    workersAlive = serializers.IntegerField(source="workers_alive", min_value=0)
    windows = StatsWindowsSerializer(
        help_text="Throughput, real-time factor, queue wait and failures over the last hour "
        "and the last day."
    )
    webhookBacklog = WebhookBacklogSerializer(
        source="webhook_backlog", help_text="Webhook deliveries queued or under way."
    )


class DiskSpaceSerializer(serializers.Serializer):
    folder = serializers.CharField(
        source="name",
        help_text="data (DATA_DIR: SQLite, the uploads), uploadTemp (DATA_DIR/tmp) or "
        "systemTemp (where request bodies are spooled).",
    )
    freeBytes = serializers.IntegerField(
        source="free_bytes", allow_null=True, help_text="null when it cannot be measured."
    )
    low = serializers.BooleanField(help_text="Below MIN_FREE_DISK_BYTES: uploads are refused.")


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=["ok", "degraded", "error"],
        help_text="degraded: the database answers but something is wrong (no worker alive, "
        "disk space below MIN_FREE_DISK_BYTES here or at a worker, a damaged model): "
        "`problems` says what. error: the database does not answer.",
    )
    database = serializers.CharField(help_text='"ok", or "error: …".')
    workersAlive = serializers.IntegerField(
        source="workers_alive", allow_null=True, help_text="null when unknown."
    )
    disk = DiskSpaceSerializer(many=True, help_text="Free space of this web process's folders.")
    minFreeDiskBytes = serializers.IntegerField(source="min_free_disk_bytes")
    problems = serializers.ListField(
        child=serializers.CharField(), help_text="Why the status is not ok, in sentences."
    )
