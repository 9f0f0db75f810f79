"""OpenAPI documentation of what the queue API returns (tasks_admin.api builds the JSON).

Documentation only: keep in step with `worker_status`, StatsView and HealthView.
"""

from __future__ import annotations

from rest_framework import serializers

from tasks_admin.models import WorkerState


class WorkerJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    jobType = serializers.CharField()
    runId = serializers.UUIDField(allow_null=True)
    lockedBy = serializers.CharField(help_text="The worker process holding the job.")
    leaseUntil = serializers.DateTimeField(allow_null=True)


class WorkerStatusSerializer(serializers.Serializer):
    id = serializers.CharField()
    host = serializers.CharField()
    pid = serializers.IntegerField()
    processes = serializers.IntegerField(help_text="Worker processes in this cluster.")
    state = serializers.ChoiceField(choices=WorkerState.choices)
    alive = serializers.BooleanField(help_text="Seen within WORKER_STALE_SECONDS.")
    startedAt = serializers.DateTimeField()
    lastSeen = serializers.DateTimeField()
    jobsDone = serializers.IntegerField()
    currentJobs = WorkerJobSerializer(many=True)


class WorkersSerializer(serializers.Serializer):
    workers = WorkerStatusSerializer(many=True)


class JobCountsSerializer(serializers.Serializer):
    queued = serializers.IntegerField(min_value=0)
    processing = serializers.IntegerField(min_value=0)
    succeeded = serializers.IntegerField(min_value=0)
    failed = serializers.IntegerField(min_value=0)
    cancelled = serializers.IntegerField(min_value=0)


class StatsSerializer(serializers.Serializer):
    jobs = JobCountsSerializer(help_text="Jobs by status.")
    queueDepth = serializers.IntegerField(min_value=0, help_text="Queued jobs that are due.")
    oldestQueuedAgeSeconds = serializers.FloatField(
        allow_null=True, help_text="Age of the oldest due queued job; null when none."
    )
    workersAlive = serializers.IntegerField(min_value=0)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=["ok", "degraded", "error"],
        help_text="degraded: the database answers but no worker is alive.",
    )
    database = serializers.CharField(help_text='"ok", or "error: …".')
    workersAlive = serializers.IntegerField(allow_null=True, help_text="null when unknown.")
