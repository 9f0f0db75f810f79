"""Server-rendered pages. They talk to the same API and event streams as any client.

Pages render the current state and the event id read just before it; their scripts open the
event stream from that id, so nothing that happens between the render and the connect is lost
(the same "id first, snapshot second" rule as the streams themselves, DESIGN.md item 2).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotFound,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework.authtoken.models import Token

from lingoloop import eventhub
from lingoloop.refusals import Refused
from transcription import services, storage
from transcription.events import ALL_RUNS_CHANNEL, run_channel, user_channel
from transcription.exports import RENDERERS
from transcription.models import RunStatus, TranscriptRun
from transcription.queries import filter_runs, search_words, valid_status
from transcription.representations import progress_object
from transcription.services import SEGMENT_TEXT_MAX_LENGTH
from webhooks import web as webhooks_web

RUNS_PER_PAGE = 25
STATUS_FILTERS = [
    ("", "Every status"),
    (RunStatus.QUEUED, "Queued"),
    (RunStatus.PROCESSING, "Transcribing"),
    (RunStatus.SUCCEEDED, "Done"),
    (RunStatus.FAILED, "Failed"),
    (RunStatus.CANCELLED, "Cancelled"),
]
RUN_ACTIONS = {"retry": services.run_retry, "cancel": services.run_cancel}
AUDIO_CHUNK_BYTES = 256 * 1024


def clock(ms: float | None) -> str:
    """A duration as the player shows it: 0:07, 12:40, 1:02:03."""
    if ms is None:
        return ""
    seconds = max(0, int(ms // 1000))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def size_label(size: int) -> str:
    """500 MB, 1.5 GB, 200 KB: a limit as people write it."""
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def visible_runs(request: HttpRequest) -> QuerySet[TranscriptRun]:
    """Someone else's run is not found (404), as in the API; staff see every run."""
    runs = TranscriptRun.objects.select_related("audio", "owner")
    return runs if request.user.is_staff else runs.filter(owner_id=request.user.pk)


def get_visible_run(request: HttpRequest, run_id: uuid.UUID) -> TranscriptRun:
    run = visible_runs(request).filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    return run


@dataclass
class RunRow:
    run: TranscriptRun
    duration: str
    mine: bool  # only the owner retries, cancels or deletes a run from the page


@login_required
def upload_page(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "transcription/upload.html",
        {
            "models": settings.WHISPER_MODELS_ALLOWED,
            "default_model": settings.WHISPER_MODEL,
            "max_upload_bytes": settings.MAX_UPLOAD_BYTES,
            "max_upload_size": size_label(settings.MAX_UPLOAD_BYTES),
        },
    )


@login_required
def runs_page(request: HttpRequest) -> HttpResponse:
    """The runs, newest first, 25 a page: filtered by status and searched by file name and
    transcript words (`?status=…&q=…&page=…`, as `GET /api/runs` filters), with retry, cancel
    and delete for each and bulk delete of the selected. Everything works without scripts."""
    channel = ALL_RUNS_CHANNEL if request.user.is_staff else user_channel(request.user.pk)
    last_event_id = eventhub.current_id(channel)
    status = request.GET.get("status", "")
    status = status if valid_status(status) else ""
    q = " ".join(search_words(request.GET.get("q")))
    runs = filter_runs(visible_runs(request).order_by("-created_at"), status=status, q=q)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    filters = {key: value for key, value in (("q", q), ("status", status)) if value}
    return render(
        request,
        "transcription/runs.html",
        {
            "page": page,
            "rows": [
                RunRow(run, clock(run.audio.duration_ms), run.owner_id == request.user.pk)
                for run in page
            ],
            "last_event_id": last_event_id,
            "show_owner": request.user.is_staff,
            "status": status,
            "q": q,
            "filtered": bool(filters),
            "status_filters": STATUS_FILTERS,
            "filter_query": urlencode(filters),
            "here": request.get_full_path(),
        },
    )


def runs_next(request: HttpRequest) -> str:
    """Where the form was sent from (the runs page with its filters and page), or the list."""
    target = request.POST.get("next", "")
    if target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("runs-page")


def back_to_runs(request: HttpRequest) -> HttpResponse:
    return redirect(runs_next(request))


@login_required
@require_POST
def run_action(request: HttpRequest, run_id: uuid.UUID, action: str) -> HttpResponse:
    """Retry or cancel one run from the runs page (its script uses the API instead)."""
    run = get_visible_run(request, run_id)
    name = run.audio.original_filename
    if run.owner_id != request.user.pk:
        messages.error(request, f"{name} is {run.owner.get_username()}'s run: only they can.")
        return back_to_runs(request)
    try:
        RUN_ACTIONS[action](run=run)
    except Refused as refusal:
        messages.error(request, f"{name}: {refusal.message}")
    else:
        done = "queued again" if action == "retry" else "cancelled"
        messages.success(request, f"{name} was {done}.")
    return back_to_runs(request)


@login_required
@require_POST
def runs_delete(request: HttpRequest) -> HttpResponse:
    """Delete the selected runs (or the one whose Delete button was pressed): the caller's
    own finished runs; every other one is skipped, and the answer says which and why.

    Without `confirmed`, a page asks first (a page's script asks with a dialog instead)."""
    one = request.POST.get("one")
    wanted = [one] if one else request.POST.getlist("ids")
    ids = []
    for value in wanted:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            continue
    runs = list(visible_runs(request).filter(pk__in=ids).order_by("-created_at"))
    if not runs:
        messages.info(request, "No runs were selected: tick the ones to delete first.")
        return back_to_runs(request)
    if not request.POST.get("confirmed"):
        return render(
            request,
            "transcription/runs_delete.html",
            {"runs": runs, "next": runs_next(request)},
        )
    deleted, skipped = [], []
    for run in runs:
        name = run.audio.original_filename
        if run.owner_id != request.user.pk:
            skipped.append(f"{name} (it is {run.owner.get_username()}'s: only they can delete it)")
            continue
        try:
            services.run_delete(run=run)
        except Refused:
            skipped.append(f"{name} (still {run.get_status_display().lower()}: cancel it first)")
        else:
            deleted.append(name)
    missing = len(set(ids)) - len(runs)
    if deleted:
        messages.success(
            request,
            f"Deleted {len(deleted)} run{pluralize(len(deleted))}: {', '.join(deleted)}.",
        )
    if skipped:
        messages.warning(
            request,
            f"Skipped {len(skipped)} run{pluralize(len(skipped))}: {'; '.join(skipped)}.",
        )
    if missing > 0:
        messages.info(request, f"{missing} run{pluralize(missing)} no longer existed.")
    return back_to_runs(request)


@dataclass
class Download:
    label: str
    href: str
    name: str  # what a screen reader says: "srt", "srt with word timestamps"


def downloads(run: TranscriptRun) -> tuple[list[Download], list[Download]]:
    """The transcript's files: every format, then the word-level ones (with word timestamps)."""
    base = reverse("run-transcript", args=[run.pk])
    formats = [Download(fmt, f"{base}?format={fmt}", fmt) for fmt in RENDERERS]
    words = [
        Download(fmt, f"{base}?format={fmt}&level=word", f"{fmt} with word timestamps")
        for fmt in ("srt", "vtt", "tsv")  # json has the words at either level
        if run.word_timestamps
    ]
    return formats, words


@login_required
def run_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    last_event_id = eventhub.current_id(run_channel(run_id))
    run = get_visible_run(request, run_id)
    segments = [
        {
            "id": segment.get("id", index),
            "start": segment.get("start", 0),
            "end": segment.get("end", 0),
            "label": clock(float(segment.get("start", 0)) * 1000),
            "text": str(segment.get("text", "")).strip(),
            "edited": bool(segment.get("edited")),
            "original": str(segment.get("originalText", "")).strip(),
        }
        for index, segment in enumerate(run.corrected_segments() or [])
    ]
    formats, word_formats = downloads(run)
    return render(
        request,
        "transcription/run.html",
        {
            "run": run,
            "segments": segments,
            "duration": clock(run.audio.duration_ms),
            "last_event_id": last_event_id,
            "progress": progress_object(run),
            "active": run.status in (RunStatus.QUEUED, RunStatus.PROCESSING),
            "formats": formats,
            "word_formats": word_formats,
            "any_edited": any(s["edited"] for s in segments),
            # Staff see other people's runs; only the owner corrects a transcript.
            "can_edit": run.owner_id == request.user.pk,
            "text_max_length": SEGMENT_TEXT_MAX_LENGTH,
        },
    )


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The (first, last) bytes of a single `Range: bytes=…` request, None for the whole file.

    Raises ValueError when the range cannot be satisfied (the answer is 416).
    """
    match = _RANGE.match(header.strip())
    if match is None or size == 0:
        return None  # absent, multi-range or odd: the whole file is a valid answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            raise ValueError("empty suffix range")
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError("range outside the file")
    return start, end


async def _stored_chunks(name: str, start: int, length: int) -> AsyncIterator[bytes]:
    # An async iterator: under ASGI a sync one would be read whole into memory first. Each
    # piece is read off the event loop.
    pieces = storage.read_range(name, start, length, piece=AUDIO_CHUNK_BYTES)
    read = sync_to_async(lambda: next(pieces, None), thread_sensitive=False)
    while (chunk := await read()) is not None:
        yield chunk


@login_required
def run_audio(request: HttpRequest, run_id: uuid.UUID) -> HttpResponseBase:
    """The run's audio for the page's player, with byte ranges so that seeking works."""
    audio = get_visible_run(request, run_id).audio
    if audio.purged_at is not None:
        return HttpResponseNotFound(
            "The audio of this run was deleted by the retention policy; the transcript remains.",
            content_type="text/plain; charset=utf-8",
        )
    try:
        signed = storage.signed_url(audio.stored_name, content_type=audio.content_type)
        if signed is not None:  # an object store serves it itself, for a few minutes
            response: HttpResponseBase = HttpResponseRedirect(signed)
            response["Cache-Control"] = "private, no-store"
            return response
        size = storage.size(audio.stored_name)
    except storage.StoredFileMissing:
        return HttpResponseNotFound(
            "The audio file of this run is missing from storage.",
            content_type="text/plain; charset=utf-8",
        )
    except storage.StorageUnavailable as exc:
        return HttpResponse(exc.message, status=503, content_type="text/plain; charset=utf-8")
    try:
        wanted = byte_range(request.headers.get("Range", ""), size)
    except ValueError:
        refusal = HttpResponse(status=416)
        refusal["Content-Range"] = f"bytes */{size}"
        return refusal
    start, end = wanted if wanted is not None else (0, size - 1)
    response = StreamingHttpResponse(
        _stored_chunks(audio.stored_name, start, end - start + 1),
        status=206 if wanted is not None else 200,
        content_type=audio.content_type or "application/octet-stream",
    )
    response["Content-Length"] = str(end - start + 1)
    response["Accept-Ranges"] = "bytes"
    if wanted is not None:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def token_page(request: HttpRequest) -> HttpResponse:
    """See, copy and regenerate the API token (regenerating revokes the old one at once);
    see and rotate the webhook signing secret, add and remove webhook endpoints."""
    user = cast(User, request.user)  # login_required: never anonymous
    action = request.POST.get("action", "regenerate-token")
    if request.method == "POST" and action in webhooks_web.ACTIONS:
        webhooks_web.handle_account_post(request, action)
        return redirect(reverse("account-token") + "#webhooks")
    if request.method == "POST":
        with transaction.atomic():
            Token.objects.filter(user=user).delete()
            Token.objects.create(user=user)
        # Events tokens are bound to the API token (transcription/tokens.py): this revokes them too.
        messages.success(request, "A new token was created. The old one no longer works.")
        return redirect("account-token")
    token = Token.objects.filter(user=user).first()
    context: dict[str, Any] = {
        "token": token,
        "base_url": request.build_absolute_uri("/")[:-1],
        **webhooks_web.account_context(user.pk),
    }
    return render(request, "registration/token.html", context)
