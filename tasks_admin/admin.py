"""The Django admin for the queue: Job and Worker lists, operator actions, the queue dashboard.

`tasks_admin` never imports `transcription`. Where the queue admin shows what a job serves
(its run's owner, file and audio length, and the dashboard's throughput in audio minutes), it
follows `Job.run` by name in the query: the model already declares that relation as the string
"transcription.TranscriptRun", so reading across it adds no import and no new coupling, and each
figure stays one SQL query. Run actions (cancel, retry) live with the run, in
`transcription/admin.py`.

Every state change made here is a compare-and-set on the status the operator saw, so an action
racing a worker changes the row only if the worker has not moved it on meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import Min, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from django.views.decorators.http import require_POST

from tasks_admin.models import Job, JobStatus, Worker, WorkerState
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


def _report(
    request: HttpRequest, done: int, verb: str, skipped: Iterable[tuple[object, str]]
) -> None:
    """One success line for the jobs that changed, one warning per job that did not."""
    if done:
        messages.success(request, f"{verb} {done} job(s).")
    for obj, why in skipped:
        messages.warning(request, f"{obj}: {why}")


def set_worker_state(workers: QuerySet[Worker], state: str) -> int:
    """Pause (state paused) or resume (state running) clusters, as the worker API does."""
    chosen = Worker.objects.filter(pk__in=workers.values("pk"))
    return chosen.pause() if state == WorkerState.PAUSED else chosen.resume()


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "job_type",
        "status",
        "run_link",
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
    list_filter = [
        "status",
        "job_type",
        ("run__owner", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["id", "run__id", "run__audio__original_filename"]
    # The owner and file columns walk job → run → owner/audio: one joined query per page.
    list_select_related = ["run__owner", "run__audio"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    actions = ["requeue_now", "release_lease", "cancel_jobs"]

    # Rows change only through the compare-and-set actions below; the form is for reading.
    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # Deleting a job would strand its run in `queued` for ever: cancel it instead.
    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    @admin.display(description="job", ordering="created_at")
    def short_id(self, job: Job) -> str:
        return str(job.id)[:8]

    @admin.display(description="run")
    def run_link(self, job: Job) -> str:
        if job.run_id is None:
            return "—"
        url = reverse("admin:transcription_transcriptrun_change", args=[job.run_id])
        return format_html('<a href="{}">{}</a>', url, str(job.run_id)[:8])

    @admin.display(description="owner", ordering="run__owner__username")
    def owner(self, job: Job) -> str:
        return job.run.owner.get_username() if job.run is not None else "—"

    @admin.display(description="file", ordering="run__audio__original_filename")
    def file(self, job: Job) -> str:
        return job.run.audio.original_filename if job.run is not None else "—"

    @admin.display(description="duration", ordering="run__audio__duration_ms")
    def duration(self, job: Job) -> str:
        return format_duration_ms(job.run.audio.duration_ms) if job.run is not None else "—"

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
        done, skipped = 0, []
        for job in queryset:
            # The claim at task start is still the compare-and-set that counts, so a cluster
            # that held this job and starts it anyway cannot run it twice.
            if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
                run_after=timezone.now(), locked_by="", locked_until=None
            ):
                done += 1
            else:
                skipped.append((job, "only a queued job can be requeued"))
        _report(request, done, "Requeued", skipped)

    @admin.action(
        permissions=["change"],
        description="Release lease (hand a stuck processing job back to the queue)",
    )
    def release_lease(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done, skipped = 0, []
        for job in queryset:
            # hand_back compares on (processing, this holder): if the worker finished or
            # another took the job over since the page was loaded, nothing changes. The
            # worker that held it finds its claim gone at its next heartbeat and writes nothing.
            if hand_back(job, holder=job.locked_by, reason="released by an operator"):
                done += 1
            else:
                skipped.append((job, "not processing (any more): nothing to release"))
        _report(request, done, "Released", skipped)

    @admin.action(permissions=["change"], description="Cancel queued jobs that serve no run")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done, skipped = 0, []
        for job in queryset:
            if job.run_id is not None:
                # The run must end too (and tell its watchers): that is the run's own action.
                skipped.append((job, "it serves a run: cancel the run instead"))
                continue
            now = timezone.now()
            if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED, run__isnull=True).update(
                status=JobStatus.CANCELLED, finished_at=now, locked_by="", locked_until=None
            ):
                done += 1
            else:
                skipped.append((job, "only a queued job can be cancelled"))
        _report(request, done, "Cancelled", skipped)

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
            "workers": Worker.objects.order_by("started_at"),
            "processing": Job.objects.filter(status=JobStatus.PROCESSING)
            .select_related("run__audio")
            .order_by("started_at")[:20],
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

    Throughput is audio minutes transcribed per wall minute over the last hour: the audio
    length of the runs whose job succeeded in that hour, divided by 60. A succeeded run has
    exactly one succeeded job (a run is retried only after it failed or was cancelled), so
    counting through jobs counts each run once.
    """
    hour_ago = now - timedelta(hours=1)
    jobs = Job.objects.all()
    oldest = jobs.waiting(now).aggregate(oldest=Min("created_at"))["oldest"]
    audio_ms = jobs.filter(
        status=JobStatus.SUCCEEDED, finished_at__gte=hour_ago, run__isnull=False
    ).aggregate(total=Sum("run__audio__duration_ms"))["total"]
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
        "throughput": round((audio_ms or 0) / 60_000 / 60, 2),
    }


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
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
    ]
    list_filter = ["state", "host"]
    search_fields = ["id", "host"]
    ordering = ["started_at"]
    actions = ["pause", "resume"]

    # Workers register themselves; state changes go through the actions (compare-and-set).
    def has_change_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # A live cluster whose row disappears takes that for a stop order; only stale rows (a
    # cluster that died without cleaning up) may be deleted.
    def has_delete_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        if obj is not None and obj.is_alive:
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="alive")
    def liveness(self, worker: Worker) -> str:
        return "alive" if worker.is_alive else "STALE"

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
