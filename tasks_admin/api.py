"""Queue operations over HTTP: worker control (staff), queue statistics, health."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Count, Min
from django.utils import timezone
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lingoloop.errors import ApiError
from tasks_admin.models import Job, JobStatus, Worker, WorkerState


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def worker_status(worker: Worker) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "processes": worker.processes,
        "state": worker.state,
        "alive": worker.is_alive,
        "startedAt": _iso(worker.started_at),
        "lastSeen": _iso(worker.last_seen),
        "jobsDone": worker.jobs_done,
        "currentJobs": [
            {
                "id": str(job.id),
                "jobType": job.job_type,
                "runId": str(job.run_id or "") or None,
                "lockedBy": job.locked_by,
                "leaseUntil": _iso(job.locked_until),
            }
            for job in worker.current_jobs()
        ],
    }


def workers_alive() -> int:
    return sum(1 for worker in Worker.objects.all() if worker.is_alive)


class WorkerControlView(APIView):
    """GET: every worker cluster. POST: resume. DELETE: pause (`?workerId=` for just one)."""

    permission_classes = [IsAdminUser]

    def _targets(self, request: Request) -> Any:
        workers = Worker.objects.order_by("started_at")
        body = request.data if isinstance(request.data, dict) else {}
        wanted = request.query_params.get("workerId") or body.get("workerId")
        if wanted:
            workers = workers.filter(pk=wanted)
            if not workers.exists():
                raise ApiError("not_found", "No such worker.", field="workerId", status_code=404)
        return workers

    def _answer(self) -> Response:
        workers = Worker.objects.order_by("started_at")
        return Response({"workers": [worker_status(w) for w in workers]})

    def get(self, request: Request) -> Response:
        return self._answer()

    def post(self, request: Request) -> Response:
        self._targets(request).filter(state=WorkerState.PAUSED).update(state=WorkerState.RUNNING)
        return self._answer()

    def delete(self, request: Request) -> Response:
        self._targets(request).filter(state=WorkerState.RUNNING).update(state=WorkerState.PAUSED)
        return self._answer()


class StatsView(APIView):
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
