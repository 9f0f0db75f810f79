"""Server-rendered pages. They talk to the same API and event streams as any client."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from transcription.models import TranscriptRun


@login_required
def upload_page(request: HttpRequest) -> HttpResponse:
    runs = TranscriptRun.objects.select_related("audio").filter(owner_id=request.user.pk)
    return render(
        request,
        "transcription/upload.html",
        {
            "runs": runs.order_by("-created_at")[:20],
            "models": settings.WHISPER_MODELS_ALLOWED,
            "default_model": settings.WHISPER_MODEL,
        },
    )


@login_required
def run_page(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    runs = TranscriptRun.objects.select_related("audio")
    if not request.user.is_staff:
        runs = runs.filter(owner_id=request.user.pk)
    run = runs.filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    return render(request, "transcription/run.html", {"run": run})
