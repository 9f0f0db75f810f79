"""What an upload really is, from its bytes (PyAV), never from its name or declared type."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from django.conf import settings
from rest_framework import status

from lingoloop.errors import ApiError

# FFmpeg demuxer name -> the content type we report. Anything else is reported by its audio
# codec as audio/x-<codec>.
_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "aac": "audio/aac",
    "mov,mp4,m4a,3gp,3g2,mj2": "audio/mp4",
    "matroska,webm": "audio/webm",
    "aiff": "audio/aiff",
    "amr": "audio/amr",
    "asf": "audio/x-ms-wma",
}

# Demuxers FFmpeg will happily "open" almost any bytes with; they are never audio uploads.
_NOT_AUDIO_FORMATS = {"tty", "image2", "png_pipe", "jpeg_pipe", "gif", "svg_pipe", "webp_pipe"}


@dataclass(frozen=True)
class Probe:
    content_type: str
    duration_ms: int
    codec: str


def _not_audio(detail: str) -> ApiError:
    return ApiError(
        "not_audio",
        f"The file is not audio that LingoLoop can read ({detail}).",
        field="file",
        status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    )


def probe_audio(path: Path) -> Probe:
    """Open the file with FFmpeg, find its audio stream, decode a first frame, measure it."""
    if path.stat().st_size == 0:
        raise ApiError("empty_file", "The uploaded file is empty.", field="file")
    try:
        container = av.open(str(path), mode="r")
    except av.error.EOFError:
        # FFmpeg recognised the format but the file ends before its first frame.
        raise _undecodable("the file is truncated") from None
    except (av.error.FFmpegError, UnicodeDecodeError):
        raise _not_audio("no audio format recognised in its bytes") from None

    with container:
        format_name = container.format.name
        if format_name in _NOT_AUDIO_FORMATS:
            raise _not_audio(f"detected {format_name}")
        audio_streams = [s for s in container.streams if s.type == "audio"]
        if not audio_streams:
            raise ApiError(
                "no_audio_stream",
                "The file has no audio stream.",
                field="file",
                status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            )
        stream = audio_streams[0]
        duration_ms = round(_duration_seconds(container, stream) * 1000)
        if duration_ms <= 0:
            raise ApiError(
                "empty_audio",
                "The audio has no length.",
                field="file",
                status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            )
        if duration_ms > settings.MAX_AUDIO_DURATION_MS:
            raise ApiError(
                "audio_too_long",
                f"The audio lasts {duration_ms / 60000:.1f} minutes; the limit is "
                f"{settings.MAX_AUDIO_DURATION_MS / 60000:.1f} minutes.",
                field="file",
                status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
            )
        _decode_first_frame(container, stream)

    codec = stream.codec_context.name
    content_type = _CONTENT_TYPES.get(format_name, f"audio/x-{codec}")
    return Probe(content_type=content_type, duration_ms=duration_ms, codec=codec)


def _duration_seconds(container: av.container.InputContainer, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    # No header says how long it is: count the samples (only for such rare streams).
    samples = 0
    rate = stream.codec_context.sample_rate or 1
    try:
        for frame in container.decode(stream):
            samples += frame.samples
    except av.error.FFmpegError:
        pass
    container.seek(0)
    return samples / rate


def _undecodable(detail: str) -> ApiError:
    return ApiError(
        "undecodable",
        f"The audio could not be decoded ({detail}).",
        field="file",
        status_code=status.HTTP_422_UNPROCESSABLE_ENTITY,
    )


def _decode_first_frame(container: av.container.InputContainer, stream: Any) -> None:
    with contextlib.suppress(av.error.FFmpegError):
        container.seek(0)
    try:
        for _frame in container.decode(stream):
            return
    except av.error.FFmpegError as exc:
        raise _undecodable(str(exc).split(":")[0]) from None
    raise _undecodable("the audio stream holds no decodable sound")
