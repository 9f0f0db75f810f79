"""The Django admin for audio and runs: lists to inspect them, and cancel and retry actions.

The actions call the same services as the API (`run_cancel`, `run_retry`), so a run cancelled
or retried here sends the same events and obeys the same compare-and-set rules.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.text import Truncator

from lingoloop.admin import ReadOnlyModelAdmin
from lingoloop.refusals import Refused
from tasks_admin.admin import format_duration_ms
from tasks_admin.models import Job
from transcription.models import Audio, TranscriptRun
from transcription.services import run_cancel, run_retry


@admin.register(Audio)
class AudioAdmin(ReadOnlyModelAdmin):
    """Uploads, for reading. Deleting one here would cascade to runs that may be processing
    and leave its file behind; DELETE /api/runs/{id} removes a finished run with its audio."""

    list_display = [
        "original_filename",
        "short_id",
        "owner",
        "duration",
        "size_bytes",
        "content_type",
        "created_at",
        "purged_at",
    ]
    list_filter = [
        ("owner", admin.RelatedOnlyFieldListFilter),
        "content_type",
        ("purged_at", admin.EmptyFieldListFilter),
    ]
    search_fields = ["id", "original_filename", "sha256"]
    list_select_related = ["owner"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"

    @admin.display(description="id")
    def short_id(self, audio: Audio) -> str:
        return str(audio.id)[:8]

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, audio: Audio) -> str:
        return format_duration_ms(audio.duration_ms)


class JobInline(admin.TabularInline):
    """The run's jobs (one per submission or retry), read-only: act on them in the Job list."""

    model = Job
    extra = 0
    fields = readonly_fields = (
        "job_type",
        "status",
        "attempts",
        "max_attempts",
        "run_after",
        "locked_by",
        "locked_until",
        "last_error",
        "created_at",
        "finished_at",
    )
    ordering = ["created_at"]
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: TranscriptRun | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TranscriptRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TranscriptRun | None = None) -> bool:
        return False


@admin.register(TranscriptRun)
class TranscriptRunAdmin(ReadOnlyModelAdmin):
    """Runs change through the API and the actions below. A plain row delete would neither
    refuse an active run nor remove the stored file, as the API's delete does."""

    list_display = [
        "short_id",
        "status",
        "mode",
        "owner",
        "file",
        "duration",
        "progress_display",
        "attempts",
        "last_error",
        "model",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "mode", ("owner", admin.RelatedOnlyFieldListFilter), "model"]
    search_fields = ["id", "audio__original_filename", "owner__username"]
    list_select_related = ["owner", "audio"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    inlines = [JobInline]
    actions = ["cancel_runs", "retry_runs"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TranscriptRun]:
        # The attempts and last-error columns read the run's jobs: one more query per page.
        return super().get_queryset(request).prefetch_related("jobs")

    @admin.display(description="run", ordering="created_at")
    def short_id(self, run: TranscriptRun) -> str:
        return str(run.id)[:8]

    @admin.display(description="file", ordering="audio__original_filename")
    def file(self, run: TranscriptRun) -> str:
        return run.audio.original_filename

    @admin.display(description="duration", ordering="audio__duration_ms")
    def duration(self, run: TranscriptRun) -> str:
        return format_duration_ms(run.audio.duration_ms)

    @admin.display(description="progress", ordering="progress")
    def progress_display(self, run: TranscriptRun) -> str:
        return f"{run.progress:.0f}%"

    @admin.display(description="attempts")
    def attempts(self, run: TranscriptRun) -> int:
        return sum(job.attempts for job in run.jobs.all())

    @admin.display(description="last error")
    def last_error(self, run: TranscriptRun) -> str:
        """The run's final error, or else the latest attempt's (a run waiting to retry)."""
        if run.error_message:
            return Truncator(run.error_message).chars(80)
        jobs = sorted(run.jobs.all(), key=lambda job: job.created_at)
        return Truncator(jobs[-1].last_error).chars(80) if jobs else ""

    @admin.action(
        permissions=["change"],
        description="Cancel (queued: at once; processing: at the next segment)",
    )
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[TranscriptRun]) -> None:
        _each_run(request, queryset, run_cancel, "Cancelled (or asked to stop)")

    @admin.action(
        permissions=["change"], description="Retry (failed or cancelled runs, as a new job)"
    )
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[TranscriptRun]) -> None:
        _each_run(request, queryset, run_retry, "Queued again")


def _each_run(
    request: HttpRequest,
    queryset: QuerySet[TranscriptRun],
    service: Callable[..., TranscriptRun],
    done_message: str,
) -> None:
    """Apply a run service to each selected run; a refusal is reported for its row alone."""
    done = 0
    for run in queryset:
        try:
            service(run=run)
        except Refused as exc:
            messages.error(request, f"Run {run.id}: {exc.message}")
        else:
            done += 1
    if done:
        messages.success(request, f"{done_message}: {done} run(s).")
