"""What an upload really is, from its bytes (PyAV), never from its name, type or headers.

A container's header is a claim: a FLAC whose STREAMINFO says 10 s can hold two hours. The
length that decides sync or async, and the MAX_AUDIO_DURATION_MS refusal, is measured from the
stream itself: the demuxed packets are counted (cheap: no decoding), and audio short enough to
be transcribed in the web request is decoded in full and its samples counted, so a file whose
packets lie cannot slip into the sync path either. The engine counts decoded samples again
while it transcribes and stops at the limit (transcription/pcm.py).

FFmpeg opens only the uploaded file itself and only with audio/video demuxers: playlists (HLS,
concat), image, text and network demuxers, and every protocol but `file`, are refused. Without
that an `.m3u8` upload naming `file:///…` makes FFmpeg read server files (DESIGN.md, item 12).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from django.conf import settings

from lingoloop.refusals import Invalid, NotAudio, Unprocessable

# FFmpeg demuxers an upload may be opened with, mapped to the content type we report (None:
# reported by its codec as audio/x-<codec>). Audio containers, and the video containers people
# record talks in. Nothing that names other files or URLs (hls, concat, dash, sdp, rtsp…),
# nothing that reads text or images.
AUDIO_DEMUXERS: dict[str, str | None] = {
    "aac": "audio/aac",
    "ac3": "audio/ac3",
    "eac3": "audio/eac3",
    "aiff": "audio/aiff",
    "amr": "audio/amr",
    "ape": "audio/x-ape",
    "asf": "audio/x-ms-wma",
    "au": "audio/basic",
    "avi": "video/x-msvideo",
    "caf": "audio/x-caf",
    "flac": "audio/flac",
    "flv": "video/x-flv",
    "matroska": "audio/webm",
    "mov": "audio/mp4",
    "mp3": "audio/mpeg",
    "mpeg": "video/mpeg",
    "mpegts": "video/mp2t",
    "ogg": "audio/ogg",
    "tta": "audio/x-tta",
    "voc": "audio/x-voc",
    "w64": "audio/x-w64",
    "wav": "audio/wav",
    "wv": "audio/x-wavpack",
}
_OPEN_OPTIONS = {
    "format_whitelist": ",".join(AUDIO_DEMUXERS),
    "protocol_whitelist": "file",
}
# However hostile the bytes, probing gives up after this long.
PROBE_TIME_BUDGET_SECONDS = 20.0


@dataclass(frozen=True)
class Probe:
    content_type: str
    duration_ms: int
    codec: str
    # As the stream's header says; decoding one channel checks it (pcm.ChannelMissing).
    channels: int = 1


@contextlib.contextmanager
def open_audio(path: Path) -> Iterator[av.container.InputContainer]:
    """Open an upload for reading: only its bytes, only with the allowed demuxers.

    FFmpeg is given an open file without a name, so it recognises the format from the bytes
    alone (a name's extension would make a text file "flac"), and its messages never carry a
    server path. Raises NotAudio or Unprocessable (lingoloop.refusals) when it will not open so.
    """
    with open(os.open(path, os.O_RDONLY), "rb") as handle:  # its .name is a descriptor number
        try:
            container = av.open(handle, mode="r", container_options=_OPEN_OPTIONS)
        except av.error.EOFError:
            # FFmpeg recognised the format but the file ends before its first frame.
            raise undecodable("the file is truncated") from None
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
            # Unrecognised bytes, or a format that is not on the list ("not on whitelist").
            raise not_audio("no audio format recognised in its bytes") from None
        except OSError:
            # A chunk claiming to be larger than any file, read through a Python file object
            # whose seek refuses such an offset.
            raise undecodable("its structure points past its end") from None
        with container:
            yield container


def probe_audio(path: Path) -> Probe:
    """Open the file, find its audio stream, measure its real length, check it decodes."""
    if path.stat().st_size == 0:
        raise Invalid("empty_file", "The uploaded file is empty.", field="file")
    deadline = time.monotonic() + PROBE_TIME_BUDGET_SECONDS
    max_ms = settings.MAX_AUDIO_DURATION_MS
    with open_audio(path) as container:
        stream = first_audio_stream(container)
        format_name, codec = container.format.name, stream.codec_context.name
        channels = max(1, int(stream.codec_context.channels or 1))
        header_claims_sound = bool(stream.duration or container.duration)
        duration_ms = _measure(_demuxed_ms, container, stream, max_ms, deadline)
    _refuse_too_long(duration_ms)
    # A second, fresh open (not every demuxer can seek) decodes: in full when the packets say
    # the audio is short enough for the web request, since the sync path must never get long
    # audio whatever its packets claim; else just far enough to know that it decodes.
    short = duration_ms <= settings.TRANSCRIBE_SYNC_MAX_DURATION_MS
    with open_audio(path) as container:
        decoded_ms = _measure(
            _decoded_ms, container, first_audio_stream(container), max_ms if short else 0, deadline
        )
    if decoded_ms <= 0 and (duration_ms > 0 or header_claims_sound):
        # Bytes where sound should be, and none of it decodes. (Only an empty file whose
        # header claims nothing either is merely empty: the claim picks the message.)
        raise undecodable("the audio stream holds no decodable sound")
    if short:
        duration_ms = decoded_ms
        _refuse_too_long(duration_ms)
    if duration_ms <= 0:
        raise Unprocessable(
            "empty_audio",
            "The audio has no length.",
            field="file",
        )
    return Probe(
        content_type=_content_type(format_name, codec),
        duration_ms=duration_ms,
        codec=codec,
        channels=channels,
    )


def first_audio_stream(container: Any) -> Any:
    for stream in container.streams:
        if stream.type == "audio":
            return stream
    raise Unprocessable(
        "no_audio_stream",
        "The file has no audio stream.",
        field="file",
    )


def _measure(how: Any, container: Any, stream: Any, stop_after_ms: int, deadline: float) -> int:
    try:
        return int(how(container, stream, stop_after_ms=stop_after_ms, deadline=deadline))
    except av.error.FFmpegError as exc:
        raise undecodable(_ffmpeg_reason(exc)) from None
    except OSError:
        raise undecodable("its structure points past its end") from None


def _content_type(format_name: str, codec: str) -> str:
    for name in format_name.split(","):
        if AUDIO_DEMUXERS.get(name):
            return AUDIO_DEMUXERS[name]  # type: ignore[return-value]
    return f"audio/x-{codec}"


def _refuse_too_long(duration_ms: int) -> None:
    limit = settings.MAX_AUDIO_DURATION_MS
    if duration_ms > limit:
        raise Unprocessable(
            "audio_too_long",
            f"The audio lasts more than {limit / 60000:.1f} minutes, the longest this "
            "service transcribes.",
            field="file",
        )


def _within_budget(items: Iterator[Any], deadline: float) -> Iterator[Any]:
    for item in items:
        if time.monotonic() > deadline:
            raise undecodable("reading it took too long")
        yield item


def _demuxed_ms(container: Any, stream: Any, *, stop_after_ms: int, deadline: float) -> int:
    """The stream's length from its packets: the furthest packet end, or the sum of packet
    durations where timestamps are missing. Stops once past `stop_after_ms`."""
    time_base = stream.time_base
    if time_base is None:
        return 0
    # No real packet lasts a minute; a larger duration is garbage (FFmpeg's own Vorbis encoder
    # writes a wrapped negative one into its last packet) and counts as unknown.
    longest = int(60 / time_base)
    first: int | None = None
    furthest = 0
    summed = 0
    for packet in _within_budget(container.demux(stream), deadline):
        duration = packet.duration or 0
        if not 0 < duration <= longest:
            duration = 0
        summed += duration
        if packet.pts is not None:
            first = packet.pts if first is None else min(first, packet.pts)
            furthest = max(furthest, packet.pts + duration)
        span = max(summed, furthest - (first or 0))
        if span * time_base * 1000 > stop_after_ms:
            break
    # Zero when packets carry neither durations nor timestamps: then the decode pass counts.
    return round(float(max(summed, furthest - (first or 0)) * time_base) * 1000)


def decoded_frames(container: Any, stream: Any) -> Iterator[av.AudioFrame]:
    """The stream's frames, skipping packets that do not decode, as faster-whisper's own
    decoder does: a few damaged frames do not make a recording useless."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def _decoded_ms(container: Any, stream: Any, *, stop_after_ms: int, deadline: float) -> int:
    """Decode the stream and count its samples. Stops once past `stop_after_ms`."""
    samples = 0
    rate = 0
    for frame in _within_budget(decoded_frames(container, stream), deadline):
        rate = frame.sample_rate or rate
        samples += frame.samples
        if rate and samples * 1000 / rate > stop_after_ms:
            break
    return round(samples * 1000 / rate) if rate else 0


def _ffmpeg_reason(exc: av.error.FFmpegError) -> str:
    """FFmpeg's reason without the file name it appends (a server path)."""
    return str(getattr(exc, "strerror", None) or "FFmpeg could not read it").rstrip(".")


def not_audio(detail: str) -> NotAudio:
    return NotAudio(
        "not_audio",
        f"The file is not audio that LingoLoop can read ({detail}).",
        field="file",
    )


def undecodable(detail: str) -> Unprocessable:
    return Unprocessable(
        "undecodable",
        f"The audio could not be decoded ({detail}).",
        field="file",
    )
