"""What an operator asks of the queue first, read from the job table in a fixed number of
queries whatever it holds: /api/stats and the admin dashboard's chart.

* Throughput over a window: the runs its media jobs finished (succeeded; each job type's
  handler counts its own, `BaseJobHandler.runs_finished`: a run split into chunks is one
  run, however many jobs made it), the audio they processed (`BaseJobHandler.media_ms`) and
  the wall time their attempts took, the split's included; the real-time factor is audio
  seconds per processing second (8.0: a minute of audio took 7.5 s).
* Queue wait, by job type: from when a job was due (queued, or due again for a retry) to when
  its latest attempt started, for the jobs whose latest attempt started in the window.
  Percentiles are nearest-rank, from `CUME_DIST()` over the window's jobs in the database
  (SQLite 3.25+ and PostgreSQL both have it): exact, one query, nothing fetched but the result.
* Failures, by job type and error code: the jobs that failed for good in the window, and
  their share of the jobs of that type that ended (succeeded, failed or cancelled) in it.
* Webhook backlog: queued and processing jobs of the `webhook` job type.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import (
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.expressions import Window
from django.db.models.functions import Coalesce
from django.db.models.functions.window import CumeDist

from tasks_admin.handlers import BaseJobHandler, handlers
from tasks_admin.models import TERMINAL_JOB_STATUSES, Job, JobStatus

# Webhook deliveries are jobs of this type (issue 12).
WEBHOOK_JOB_TYPE = "webhook"

WINDOWS = {"lastHour": timedelta(hours=1), "lastDay": timedelta(days=1)}
PERCENTILES = (0.5, 0.95)

_BUSY = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
_WAIT = ExpressionWrapper(F("started_at") - F("run_after"), output_field=DurationField())


def _seconds(value: timedelta | int | None) -> float | None:
    """A duration as the database gave it back: a timedelta (PostgreSQL) or microseconds
    (SQLite, where Django computes datetime differences in microseconds)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return int(value) / 1_000_000


def media_job_types() -> list[str]:
    """Job types whose handler measures media (transcription): a run's own jobs."""
    return [h.job_type for h in handlers() if type(h).media_ms is not BaseJobHandler.media_ms]


def operator_stats(now: datetime) -> dict[str, Any]:
    """The figures /api/stats adds to its counts, as of `now`."""
    media_types = media_job_types()
    ended = _ended_by_window(now)
    return {
        "windows": {
            name: {
                "seconds": int(length.total_seconds()),
                "throughput": _throughput(ended, name, now - length, media_types),
                "queue_wait": queue_waits(now - length),
                "failures": _failures(ended, name),
            }
            for name, length in WINDOWS.items()
        },
        "webhook_backlog": webhook_backlog(),
    }


@dataclass(frozen=True)
class _Ended:
    """Jobs that ended in the last day, counted by (job type, status, error code), for each
    window: one query."""

    rows: list[dict[str, Any]]

    def of(self, window: str) -> list[tuple[str, str, str, int, float]]:
        """(job type, status, error code, jobs, busy seconds) of the jobs ended in `window`."""
        return [
            (
                row["job_type"],
                row["status"],
                row["error_code"],
                row[f"n_{window}"],
                _seconds(row[f"busy_{window}"]) or 0.0,
            )
            for row in self.rows
            if row[f"n_{window}"]
        ]


def _ended_by_window(now: datetime) -> _Ended:
    longest = max(WINDOWS.values())
    counts: dict[str, Any] = {}
    for name, length in WINDOWS.items():
        inside = Q(finished_at__gte=now - length)
        counts[f"n_{name}"] = Count("id", filter=inside)
        counts[f"busy_{name}"] = Sum(_BUSY, filter=inside & Q(started_at__isnull=False))
    rows = (
        Job.objects.filter(status__in=TERMINAL_JOB_STATUSES, finished_at__gte=now - longest)
        .values("job_type", "status", "error_code")
        .annotate(**counts)
        .order_by()
    )
    return _Ended([dict(row) for row in rows])


def _throughput(
    ended: _Ended, window: str, since: datetime, media_types: list[str]
) -> dict[str, Any]:
    busy = 0.0
    for job_type, status, _code, _n, seconds in ended.of(window):
        if status == JobStatus.SUCCEEDED and job_type in media_types:
            busy += seconds
    succeeded = Job.objects.filter(status=JobStatus.SUCCEEDED, finished_at__gte=since)
    audio = sum(handler.media_ms(succeeded) for handler in handlers()) / 1000
    runs = sum(handler.runs_finished(succeeded) for handler in handlers())
    return {
        "runs": runs,
        "audio_seconds": round(audio, 3),
        "processing_seconds": round(busy, 3),
        "real_time_factor": round(audio / busy, 2) if busy > 0 else None,
    }


def _failures(ended: _Ended, window: str) -> list[dict[str, Any]]:
    of_type: dict[str, int] = {}
    failed: dict[tuple[str, str], int] = {}
    for job_type, status, code, n, _seconds_busy in ended.of(window):
        of_type[job_type] = of_type.get(job_type, 0) + n
        if status == JobStatus.FAILED:
            key = (job_type, code or "error")
            failed[key] = failed.get(key, 0) + n
    return [
        {"job_type": job_type, "code": code, "count": n, "rate": round(n / of_type[job_type], 4)}
        for (job_type, code), n in sorted(failed.items(), key=lambda item: (-item[1], item[0]))
    ]


def queue_waits(since: datetime, jobs: QuerySet[Job] | None = None) -> list[dict[str, Any]]:
    """p50 and p95 queue wait by job type, of the jobs whose latest attempt started since
    `since`: one query. A percentile is the shortest wait at least that share of the jobs
    had (nearest rank)."""
    ranked = (
        (Job.objects.all() if jobs is None else jobs)
        .filter(started_at__gte=since)
        .annotate(
            wait=_WAIT,
            share=Window(CumeDist(), partition_by=F("job_type"), order_by=_WAIT.asc()),
        )
        .values("job_type", "wait", "share")
    )
    inner, params = ranked.query.sql_with_params()
    picks = ", ".join("MIN(CASE WHEN share >= %s THEN wait END)" for _ in PERCENTILES)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT job_type, COUNT(*), {picks} FROM ({inner}) ranked "
            "GROUP BY job_type ORDER BY job_type",
            [*PERCENTILES, *params],
        )
        rows = cursor.fetchall()
    return [
        {
            "job_type": job_type,
            "jobs": n,
            "p50_seconds": _seconds(p50),
            "p95_seconds": _seconds(p95),
        }
        for job_type, n, p50, p95 in rows
    ]


def webhook_backlog() -> dict[str, int]:
    """Webhook deliveries waiting or under way: one query; 0 before any exist."""
    found = (
        Job.objects.filter(
            job_type=WEBHOOK_JOB_TYPE, status__in=[JobStatus.QUEUED, JobStatus.PROCESSING]
        )
        .values("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts = {row["status"]: row["n"] for row in found}
    return {status: counts.get(status, 0) for status in (JobStatus.QUEUED, JobStatus.PROCESSING)}


# --- The dashboard chart ---------------------------------------------------------------------

HOURS = 24


def hourly_queue(now: datetime) -> dict[str, list[Any]]:
    """The last 24 hours, hour by hour back from `now`: queue depth at the end of each hour
    and the jobs that succeeded in it. Two queries.

    Depth at time t is the number of jobs created before t that had not left the queue by t
    (started, or ended without starting: cancelled while queued). A job's started_at is its
    latest attempt's, so a retried job counts as waiting until its latest attempt.
    """
    ends = [now - timedelta(hours=HOURS - 1 - i) for i in range(HOURS)]
    start = now - timedelta(hours=HOURS)
    left = Coalesce("started_at", "finished_at")
    waiting = Job.objects.alias(left=left).filter(
        Q(left__isnull=True) | Q(left__gt=start), created_at__lte=now
    )
    depth = waiting.aggregate(
        **{
            f"d{i}": Count(
                "id", filter=Q(created_at__lte=t) & (Q(left__isnull=True) | Q(left__gt=t))
            )
            for i, t in enumerate(ends)
        }
    )
    done = Job.objects.filter(status=JobStatus.SUCCEEDED, finished_at__gt=start).aggregate(
        **{
            f"s{i}": Count(
                "id", filter=Q(finished_at__gt=t - timedelta(hours=1), finished_at__lte=t)
            )
            for i, t in enumerate(ends)
        }
    )
    return {
        "ends": ends,
        "depth": [depth[f"d{i}"] for i in range(HOURS)],
        "succeeded": [done[f"s{i}"] for i in range(HOURS)],
    }
