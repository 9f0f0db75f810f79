"""The queue as /metrics shows it, read from the job and worker tables at scrape time.

Read, not counted in processes: the tables are the truth whatever process died mid-change,
and what operators query with SQL. A scrape costs three grouped queries (no request does).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from tasks_admin.handlers import handlers
from tasks_admin.models import Job, JobStatus, Worker, WorkerState


class JobTableCollector:
    """lingoloop_jobs, lingoloop_queue_depth, lingoloop_queue_oldest_age_seconds and
    lingoloop_workers. Every registered job type and every status gets a sample, so a count
    that drops to 0 says so instead of vanishing."""

    def collect(self) -> Iterator[Metric]:
        known = [handler.job_type for handler in handlers()]
        yield self._jobs(known)
        yield from self._queue(known, timezone.now())
        yield self._workers()

    @staticmethod
    def _jobs(known: list[str]) -> Metric:
        counts = {(job_type, status): 0 for job_type in known for status in JobStatus.values}
        for row in Job.objects.order_by().values("job_type", "status").annotate(n=Count("id")):
            counts[(row["job_type"], row["status"])] = row["n"]
        jobs = GaugeMetricFamily(
            "lingoloop_jobs",
            "Jobs in the job table, by type and status (finished ones until JOB_RETENTION_DAYS).",
            labels=["job_type", "status"],
        )
        for (job_type, status), n in sorted(counts.items()):
            jobs.add_metric([job_type, status], n)
        return jobs

    @staticmethod
    def _queue(known: list[str], now: datetime) -> Iterator[Metric]:
        waiting: dict[str, tuple[int, datetime | None]] = dict.fromkeys(known, (0, None))
        rows = (
            Job.objects.waiting(now)
            .order_by()
            .values("job_type")
            .annotate(n=Count("id"), oldest=Min("run_after"))
        )
        for row in rows:
            waiting[row["job_type"]] = (row["n"], row["oldest"])
        depth = GaugeMetricFamily(
            "lingoloop_queue_depth",
            "Queued jobs that are due (not waiting out a retry delay), by type.",
            labels=["job_type"],
        )
        oldest = GaugeMetricFamily(
            "lingoloop_queue_oldest_age_seconds",
            "How long the longest-waiting due job has been due, by type (0: none waits).",
            labels=["job_type"],
        )
        for job_type, (n, since) in sorted(waiting.items()):
            depth.add_metric([job_type], n)
            age = 0.0 if since is None else max((now - since).total_seconds(), 0.0)
            oldest.add_metric([job_type], age)
        yield depth
        yield oldest

    @staticmethod
    def _workers() -> Metric:
        by_state = dict.fromkeys(WorkerState.values, 0)
        for row in Worker.objects.alive().order_by().values("state").annotate(n=Count("id")):
            by_state[row["state"]] = row["n"]
        workers = GaugeMetricFamily(
            "lingoloop_workers",
            "Worker clusters seen alive within WORKER_STALE_SECONDS, by state.",
            labels=["state"],
        )
        for state, n in sorted(by_state.items()):
            workers.add_metric([state], n)
        return workers
