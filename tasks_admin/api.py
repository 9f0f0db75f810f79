"""Queue operations over HTTP: worker control (staff), queue statistics, health."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Count, Min
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lingoloop.characters import has_control_characters
from lingoloop.errors import ApiError
from lingoloop.openapi import error_responses
from lingoloop.timefmt import iso_utc
from tasks_admin.models import Job, JobStatus, Worker
from tasks_admin.schema import (
    HealthSerializer,
    StatsSerializer,
    WorkersSerializer,
)


def worker_status(worker: Worker) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "processes": worker.processes,
        "state": worker.state,
        "alive": worker.is_alive,
        "startedAt": iso_utc(worker.started_at),
        "lastSeen": iso_utc(worker.last_seen),
        "jobsDone": worker.jobs_done,
        "currentJobs": [
            {
                "id": str(job.id),
                "jobType": job.job_type,
                "runId": str(job.run_id or "") or None,
                "lockedBy": job.locked_by,
                "leaseUntil": iso_utc(job.locked_until),
            }
            for job in worker.current_jobs()
        ],
    }


def workers_alive() -> int:
    return sum(1 for worker in Worker.objects.all() if worker.is_alive)


_WORKER_ID = OpenApiParameter(
    "workerId", str, description="Just this worker cluster; all of them when left out."
)
# The body of POST: `{"workerId": …}` and nothing else (other keys are refused).
WORKER_TARGET = {
    "type": "object",
    "properties": {
        "workerId": {
            "type": "string",
            "nullable": True,
            "description": "Just this worker cluster; all of them when null or left out. "
            "`?workerId=` wins when both are given.",
        }
    },
    "additionalProperties": False,
}
_CONTROL_ERRORS = error_responses(
    400, 401, 403, 404, 415, e400="A malformed body.", e404="No worker with this workerId."
)


class WorkerControlView(APIView):
    """GET: every worker cluster. POST: resume. DELETE: pause (`?workerId=` for just one)."""

    permission_classes = [IsAdminUser]

    def _targets(self, request: Request) -> Any:
        workers = Worker.objects.order_by("started_at")
        # A malformed target is refused, never read as "every worker".
        body = request.data
        if not isinstance(body, dict):
            raise ApiError("invalid", 'The body must be an object, e.g. {"workerId": "…"}.')
        in_query, in_body = request.query_params.get("workerId"), body.get("workerId")
        unknown = sorted(set(body) - {"workerId"})
        if unknown:
            raise ApiError("unknown_field", "The body takes only workerId.", field=unknown[0])
        if in_body is not None and not isinstance(in_body, str):
            raise ApiError("invalid", "workerId must be a string.", field="workerId")
        wanted = in_query or in_body  # the query's, when both name one
        if wanted and has_control_characters(wanted):
            raise ApiError(
                "invalid_characters",
                "workerId may not contain control characters.",
                field="workerId",
            )
        if wanted:
            workers = workers.filter(pk=wanted)
            if not workers.exists():
                raise ApiError("not_found", "No such worker.", field="workerId", status_code=404)
        return workers

    def _answer(self) -> Response:
        workers = Worker.objects.order_by("started_at")
        return Response({"workers": [worker_status(w) for w in workers]})

    @extend_schema(
        operation_id="getWorkers",
        tags=["queue"],
        description="Staff only: every worker cluster and the jobs it runs.",
        responses={200: WorkersSerializer, **error_responses(401, 403)},
    )
    def get(self, request: Request) -> Response:
        return self._answer()

    @extend_schema(
        operation_id="resumeWorkers",
        tags=["queue"],
        description="Staff only: paused worker clusters claim jobs again.",
        parameters=[_WORKER_ID],
        request={"application/json": WORKER_TARGET},
        responses={200: WorkersSerializer, **_CONTROL_ERRORS},
    )
    def post(self, request: Request) -> Response:
        self._targets(request).resume()
        return self._answer()

    @extend_schema(
        operation_id="pauseWorkers",
        tags=["queue"],
        description="Staff only: worker clusters finish what they run and claim nothing new.",
        parameters=[_WORKER_ID],
        request=None,
        responses={200: WorkersSerializer, **_CONTROL_ERRORS},
    )
    def delete(self, request: Request) -> Response:
        self._targets(request).pause()
        return self._answer()


class StatsView(APIView):
    @extend_schema(
        operation_id="getStats",
        tags=["queue"],
        description="Jobs by status, queue depth, age of the oldest queued job, live workers.",
        responses={200: StatsSerializer, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        counts = dict(Job.objects.values_list("status").annotate(n=Count("id")))
        oldest = Job.objects.waiting().aggregate(oldest=Min("created_at"))["oldest"]
        return Response(
            {
                "jobs": {state: counts.get(state, 0) for state in JobStatus.values},
                "queueDepth": Job.objects.waiting().count(),
                "oldestQueuedAgeSeconds": (
                    round((timezone.now() - oldest).total_seconds(), 1) if oldest else None
                ),
                "workersAlive": workers_alive(),
            }
        )


class HealthView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="getHealth",
        tags=["queue"],
        description="Database and worker liveness; no credentials needed.",
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(HealthSerializer, "The database does not answer."),
        },
    )
    def get(self, request: Request) -> Response:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            return Response(
                {"status": "error", "database": f"error: {exc}", "workersAlive": None},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        alive = workers_alive()
        return Response(
            {"status": "ok" if alive else "degraded", "database": "ok", "workersAlive": alive}
        )
