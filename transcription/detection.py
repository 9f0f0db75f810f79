"""Which language an upload speaks, answered at once (`POST /api/detect-language`), as
whisper-asr-webservice's /detect-language does: no run, no job, nothing kept.

The first DETECT_SECONDS of the audio are decoded and handed to a multilingual model's
language detection, in one of this web process's sync slots (the threads sync
transcriptions run in, so the two together never take more than TRANSCRIBE_SYNC_CONCURRENCY
cores); a request that finds every slot busy for TRANSCRIBE_SYNC_WAIT_MS is answered 503 with
Retry-After rather than queued.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from lingoloop.refusals import Invalid, Unavailable
from transcription import catalogue, engine, services
from transcription.pcm import SAMPLE_RATE, first_seconds
from transcription.probe import probe_audio

DETECT_SECONDS = engine.DETECT_SECONDS
TOP_LANGUAGES = 5


@dataclass(frozen=True)
class Detection:
    model: str
    language: str
    probability: float
    # The most likely languages, most likely first.
    languages: list[tuple[str, float]]
    analysed_seconds: float


def multilingual_model(name: str | None) -> catalogue.ModelInfo:
    """The model to detect with: `name`, which must be multilingual, or by default
    WHISPER_MODEL when it is, else the first multilingual model offered."""
    if name:
        model = catalogue.get(name)
        if model is None:
            raise Invalid(
                "unknown_model",
                f"Model {name!r} is not offered here; choose one of "
                f"{', '.join(catalogue.names())}.",
                field="model",
            )
        if not model.multilingual:
            raise Invalid(
                "unsupported_model",
                f"Model {name} knows English only and cannot tell languages apart.",
                field="model",
            )
        return model
    offered = [model for model in catalogue.available() if model.multilingual]
    if not offered:
        raise Invalid(
            "no_multilingual_model",
            "No multilingual model is installed on this server (see GET /api/models).",
            field="model",
        )
    return offered[0]  # available() lists the default first


def detect_language(*, upload: UploadedFile, model_name: str | None) -> Detection:
    model = multilingual_model(model_name)
    spooled = services.spool_upload(upload)
    try:
        probe_audio(spooled)  # not audio, empty, undecodable: refused as an upload would be
        audio = first_seconds(spooled, DETECT_SECONDS, max_ms=settings.MAX_AUDIO_DURATION_MS)
        slots, pool = services.sync_capacity()
        if not slots.acquire(timeout=settings.TRANSCRIBE_SYNC_WAIT_MS / 1000):
            raise Unavailable(
                "busy",
                "Every transcription slot of this server is busy; try again in a few seconds.",
                retry_after=5,
            )
        try:
            future = pool.submit(
                contextvars.copy_context().run, engine.detect_language, model.name, audio
            )
            language, probability, ranked = future.result()
        finally:
            slots.release()
    finally:
        spooled.unlink(missing_ok=True)
    return Detection(
        model=model.name,
        language=language,
        probability=probability,
        languages=ranked[:TOP_LANGUAGES],
        analysed_seconds=round(audio.shape[0] / SAMPLE_RATE, 3),
    )
