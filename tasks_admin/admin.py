"""The Django admin for the queue: Job and Worker lists, operator actions, the queue dashboard.

`tasks_admin` never imports `transcription`, nor names its fields. What a job serves (its
run's owner, file and audio length, a link to it; the dashboard's throughput in audio minutes;
what the search box and the owner filter look in) comes from the job type's handler
(`BaseJobHandler.describe_many`, `media_ms`, `subject_search_fields`, `subject_owner_field`),
which the app that owns the subject declares. A page of jobs costs a fixed number of queries:
one `describe_many` per job type on the page. Run actions (cancel, retry) live with the run, in
`transcription/admin.py`.

Every state change made here is a compare-and-set on the status the operator saw, so an action
racing a worker changes the row only if the worker has not moved it on meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Min, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from django.views.decorators.http import require_POST

from lingoloop.admin import ReadOnlyModelAdmin
from tasks_admin.handlers import Subject, describe, handlers
from tasks_admin.models import Job, JobStatus, Worker, WorkerState, with_current_jobs
from tasks_admin.runner import hand_back

DASHBOARD_REFRESH_SECONDS = 5


def format_age(seconds: float | None) -> str:
    """A short human duration: "45 s", "3 min 12 s", "2 h 5 min"."""
    if seconds is None:
        return "—"
    total = max(0, int(seconds))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


def format_duration_ms(duration_ms: int | None) -> str:
    if duration_ms is None:
        return "—"
    seconds = round(duration_ms / 1000)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _apply_each(
    request: HttpRequest, jobs: Iterable[Job], verb: str, change: Callable[[Job], str | None]
) -> None:
    """Apply an operator action to each job: `change` returns why it left a job alone, or None
    when it changed it. One success line for the jobs that changed, one warning per other."""
    done, skipped = 0, []
    for job in jobs:
        why = change(job)
        if why is None:
            done += 1
        else:
            skipped.append(f"{job}: {why}")
    if done:
        messages.success(request, f"{verb} {done} job(s).")
    for warning in skipped:
        messages.warning(request, warning)


def _requeue_now(job: Job) -> str | None:
    # The claim at task start is still the compare-and-set that counts, so a cluster that
    # held this job and starts it anyway cannot run it twice.
    if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
        run_after=timezone.now(), picked_by="", picked_until=None
    ):
        return None
    return "only a queued job can be requeued"


def _release_lease(job: Job) -> str | None:
    # hand_back compares on (processing, this holder): if the worker finished or another took
    # the job over since the page was loaded, nothing changes. The lease keeper of the worker
    # that held it finds the claim gone, and that attempt writes nothing.
    if hand_back(job, holder=job.locked_by, reason="released by an operator"):
        return None
    return "not processing (any more): nothing to release"


def _cancel_unowned(job: Job) -> str | None:
    if job.run_id is not None:
        # The run must end too (and tell its watchers): that is the run's own action.
        return "it serves a run: cancel the run instead"
    if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED, run__isnull=True).update(
        status=JobStatus.CANCELLED, finished_at=timezone.now(), picked_by="", picked_until=None
    ):
        return None
    return "only a queued job can be cancelled"


def machine_label(worker: Worker) -> str:
    found = [f"PICKS NO JOBS: {worker.low_disk}"] if worker.low_disk else []
    found += [str(problem) for problem in worker.problems or []]
    return "; ".join(found) or "ok"


def set_worker_state(workers: QuerySet[Worker], state: str) -> int:
    """Pause (state paused) or resume (state running) clusters, as the worker API does."""
    chosen = Worker.objects.filter(pk__in=workers.values("pk"))
    return chosen.pause() if state == WorkerState.PAUSED else chosen.resume()


def with_subjects(jobs: Sequence[Job]) -> Sequence[Job]:
    """Set `job.subject` (a Subject, or None) on each of a page of jobs."""
    subjects = describe(jobs)
    for job in jobs:
        job.subject = subjects.get(job.pk)  # type: ignore[attr-defined]
    return jobs


def subject_of(job: Job) -> Subject | None:
    return getattr(job, "subject", None)


class JobChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        with_subjects(self.result_list)


@admin.register(Job)
class JobAdmin(ReadOnlyModelAdmin):
    """Jobs change only through the compare-and-set actions below. Deleting one would strand
    its run in `queued` for ever: cancel the run instead."""

    list_display = [
        "short_id",
        "job_type",
        "status",
        "subject_link",
        "owner",
        "file",
        "duration",
        "attempts_display",
        "last_error_short",
        "locked_by",
        "locked_until",
        "run_after",
        "created_at",
    ]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    actions = ["requeue_now", "release_lease", "cancel_jobs"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        found = (field for handler in handlers() for field in handler.subject_search_fields)
        return ["id", *dict.fromkeys(found)]

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        owners = dict.fromkeys(h.subject_owner_field for h in handlers() if h.subject_owner_field)
        return ["status", "job_type", *((f, admin.RelatedOnlyFieldListFilter) for f in owners)]

    @admin.display(description="job", ordering="created_at")
    def short_id(self, job: Job) -> str:
        return str(job.id)[:8]

    @admin.display(description="serves")
    def subject_link(self, job: Job) -> str:
        subject = subject_of(job)
        if subject is None:
            return "—"
        if not subject.url:
            return subject.label
        return format_html('<a href="{}">{}</a>', subject.url, subject.label)

    @admin.display(description="owner")
    def owner(self, job: Job) -> str:
        subject = subject_of(job)
        return subject.owner if subject and subject.owner else "—"

    @admin.display(description="file")
    def file(self, job: Job) -> str:
        subject = subject_of(job)
        return subject.name if subject and subject.name else "—"

    @admin.display(description="duration")
    def duration(self, job: Job) -> str:
        subject = subject_of(job)
        return format_duration_ms(subject.duration_ms if subject else None)

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="last error")
    def last_error_short(self, job: Job) -> str:
        return Truncator(job.last_error).chars(80)

    @admin.action(
        permissions=["change"],
        description="Requeue now (due at once, drop any cluster's pick hold)",
    )
    def requeue_now(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        _apply_each(request, queryset, "Requeued", _requeue_now)

    @admin.action(
        permissions=["change"],
        description="Release lease (hand a stuck processing job back to the queue)",
    )
    def release_lease(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        _apply_each(request, queryset, "Released", _release_lease)

    @admin.action(permissions=["change"], description="Cancel queued jobs that serve no run")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        _apply_each(request, queryset, "Cancelled", _cancel_unowned)

    # --- The queue dashboard ------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        # Before the model's own URLs, whose `<path:object_id>/` would swallow these.
        own = [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="tasks_admin_queue_dashboard",
            ),
            path(
                "dashboard/workers/",
                self.admin_site.admin_view(require_POST(self.worker_control_view)),
                name="tasks_admin_worker_control",
            ),
        ]
        return own + super().get_urls()

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Queue health at a glance, for staff (as `/api/stats` and `/api/admin/worker` are)."""
        context = {
            **self.admin_site.each_context(request),
            "title": "Queue dashboard",
            "refresh_seconds": DASHBOARD_REFRESH_SECONDS,
            **queue_figures(timezone.now()),
            "workers": with_current_jobs(Worker.objects.order_by("started_at")),
            "processing": with_subjects(
                list(Job.objects.filter(status=JobStatus.PROCESSING).order_by("started_at")[:20])
            ),
            "opts": self.opts,
        }
        return TemplateResponse(request, "admin/tasks_admin/queue_dashboard.html", context)

    def worker_control_view(self, request: HttpRequest) -> HttpResponse:
        """POST `state` (running|paused) and optionally `worker` (one id; else all)."""
        state = request.POST.get("state")
        if state not in (WorkerState.RUNNING, WorkerState.PAUSED):
            messages.error(request, "Choose to pause or to resume.")
        else:
            workers = Worker.objects.all()
            if request.POST.get("worker"):
                workers = workers.filter(pk=request.POST["worker"])
            changed = set_worker_state(workers, state)
            verb = "Paused" if state == WorkerState.PAUSED else "Resumed"
            messages.success(request, f"{verb} {changed} worker(s).")
        return HttpResponseRedirect(reverse("admin:tasks_admin_queue_dashboard"))


def queue_figures(now: datetime) -> dict[str, Any]:
    """The dashboard's numbers, as of `now`.

    Throughput is media minutes processed per wall minute over the last hour: what the jobs
    that succeeded in that hour processed (each job type's handler measures its own), divided
    by 60.
    """
    hour_ago = now - timedelta(hours=1)
    jobs = Job.objects.all()
    oldest = jobs.waiting(now).aggregate(oldest=Min("created_at"))["oldest"]
    succeeded = jobs.filter(status=JobStatus.SUCCEEDED, finished_at__gte=hour_ago)
    media_ms = sum(handler.media_ms(succeeded) for handler in handlers())
    return {
        "counts": {
            "queued": jobs.filter(status=JobStatus.QUEUED).count(),
            "processing": jobs.filter(status=JobStatus.PROCESSING).count(),
            "failed_last_hour": jobs.filter(
                status=JobStatus.FAILED, finished_at__gte=hour_ago
            ).count(),
            "succeeded_last_hour": jobs.filter(
                status=JobStatus.SUCCEEDED, finished_at__gte=hour_ago
            ).count(),
        },
        "oldest_waiting_seconds": (now - oldest).total_seconds() if oldest else None,
        "oldest_waiting": format_age((now - oldest).total_seconds()) if oldest else "—",
        "throughput": round(media_ms / 60_000 / 60, 2),
    }


@admin.register(Worker)
class WorkerAdmin(ReadOnlyModelAdmin):
    """Workers register themselves; state changes go through the actions (compare-and-set)."""

    list_display = [
        "id",
        "state",
        "liveness",
        "host",
        "pid",
        "processes",
        "last_seen",
        "started_at",
        "jobs_done",
        "machine",
    ]
    list_filter = ["state", "host"]
    search_fields = ["id", "host"]
    ordering = ["started_at"]
    actions = ["pause", "resume"]

    # A live cluster whose row disappears takes that for a stop order; only stale rows (a
    # cluster that died without cleaning up) may be deleted.
    def has_delete_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        if obj is not None and obj.is_alive:
            return False
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    @admin.display(description="alive")
    def liveness(self, worker: Worker) -> str:
        return "alive" if worker.is_alive else "STALE"

    @admin.display(description="machine")
    def machine(self, worker: Worker) -> str:
        """What its beat found wrong with its machine; a low disk stops its picks."""
        return machine_label(worker)

    @admin.action(
        permissions=["change"], description="Pause (finish running jobs, claim nothing new)"
    )
    def pause(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        changed = set_worker_state(queryset, WorkerState.PAUSED)
        messages.success(request, f"Paused {changed} worker(s).")

    @admin.action(permissions=["change"], description="Resume")
    def resume(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        changed = set_worker_state(queryset, WorkerState.RUNNING)
        messages.success(request, f"Resumed {changed} worker(s).")
