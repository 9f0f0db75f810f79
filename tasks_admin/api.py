"""Queue operations over HTTP: worker control (staff), queue statistics, health."""

from __future__ import annotations

from typing import Any

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
from tasks_admin.health import service_health
from tasks_admin.models import Job, Worker, with_current_jobs
from tasks_admin.representations import (
    HealthSerializer,
    StatsSerializer,
    WorkersSerializer,
)
from tasks_admin.stats import operator_stats


def workers_alive() -> int:
    return Worker.objects.alive().count()


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


def _control_schema(operation_id: str, description: str, request: object) -> Any:
    """The documentation of pausing or resuming: same target, same answer, same refusals."""
    return extend_schema(
        operation_id=operation_id,
        tags=["queue"],
        description=description,
        parameters=[_WORKER_ID],
        request=request,
        responses={
            200: WorkersSerializer,
            **error_responses(
                400,
                401,
                403,
                404,
                415,
                e400="A malformed body.",
                e404="No worker with this workerId.",
            ),
        },
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
        workers = with_current_jobs(Worker.objects.order_by("started_at"))
        return Response(WorkersSerializer({"workers": workers}).data)

    @extend_schema(
        operation_id="getWorkers",
        tags=["queue"],
        description="Staff only: every worker cluster and the jobs it runs.",
        responses={200: WorkersSerializer, **error_responses(401, 403)},
    )
    def get(self, request: Request) -> Response:
        return self._answer()

    @_control_schema(
        "resumeWorkers",
        "Staff only: paused worker clusters claim jobs again.",
        request={"application/json": WORKER_TARGET},
    )
    def post(self, request: Request) -> Response:
        self._targets(request).resume()
        return self._answer()

    @_control_schema(
        "pauseWorkers",
        "Staff only: worker clusters finish what they run and claim nothing new.",
        request=None,
    )
    def delete(self, request: Request) -> Response:
        self._targets(request).pause()
        return self._answer()


class StatsView(APIView):
    @extend_schema(
        operation_id="getStats",
        tags=["queue"],
        description="Jobs by status, queue depth, age of the oldest queued job, live workers; "
        "over the last hour and day: throughput and real-time factor, p50/p95 queue wait and "
        "failures by error code; the webhook backlog.",
        responses={200: StatsSerializer, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        waiting = Job.objects.waiting(now).aggregate(oldest=Min("created_at"), depth=Count("id"))
        oldest = waiting["oldest"]
        stats = {
            "jobs": dict(Job.objects.values_list("status").annotate(n=Count("id")).order_by()),
            "queue_depth": waiting["depth"],
            "oldest_queued_age_seconds": (
                round((now - oldest).total_seconds(), 1) if oldest else None
            ),
            "workers_alive": workers_alive(),
            **operator_stats(now),
        }
        return Response(StatsSerializer(stats).data)


class HealthView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="getHealth",
        tags=["queue"],
        description="Database and worker liveness, free disk space, damaged models; no "
        "credentials needed.",
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(HealthSerializer, "The database does not answer."),
        },
    )
    def get(self, request: Request) -> Response:
        health = service_health()
        answer = status.HTTP_503_SERVICE_UNAVAILABLE if health["status"] == "error" else 200
        return Response(HealthSerializer(health).data, status=answer)
