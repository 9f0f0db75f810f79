"""Decoded audio as the model takes it (16 kHz mono float32), a little at a time.

`faster_whisper.decode_audio` returns a whole file as one array before any work starts
(~230 MB an hour, and the feature extractor then holds several times that; DESIGN.md, item
11). Here the upload is decoded frame by frame and handed out in windows of bounded length, so
a worker's memory does not grow with the length of the audio. Decoded samples are counted as
they come: past `max_ms` the decoding stops, whatever the container's header claimed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from transcription.probe import decoded_frames, first_audio_stream, open_audio

SAMPLE_RATE = 16000


class AudioTooLong(Exception):
    """More audio decoded than the limit allows."""


class ChannelMissing(Exception):
    """The decoded audio has fewer channels than the one asked for (its header claimed more)."""


# Decoded samples are handed out in arrays of about this many (a second): an Opus frame is
# 20 ms, and converting and handing out each one cost more than decoding it (measured on a
# 20-minute Opus file: 3.0 s to decode frame by frame, of which ~1 s was that overhead).
CHUNK_SAMPLES = SAMPLE_RATE


def pcm_chunks(path: Path, *, max_ms: int, channel: int | None = None) -> Iterator[np.ndarray]:
    """The audio of `path` as consecutive float32 arrays at 16 kHz mono (of about
    CHUNK_SAMPLES each; the last may be shorter): all its channels mixed, or only `channel`
    (from 0).

    Raises AudioTooLong once more than `max_ms` of audio has been decoded, ChannelMissing when
    the decoded frames have no such channel.
    """
    max_samples = max_ms * SAMPLE_RATE // 1000
    decoded = 0
    held: list[np.ndarray] = []  # 16-bit samples not handed out yet
    held_samples = 0
    with open_audio(path) as container:
        stream = first_audio_stream(container)
        # 16-bit first, as faster_whisper.decode_audio does: the model then hears exactly
        # what it hears through faster-whisper's own decoding. One channel: planar 16-bit
        # in the stream's own layout, of which one plane is kept.
        resampler: av.AudioResampler | None = None
        # The trailing None flushes what the resampler still holds.
        for frame in itertools.chain(decoded_frames(container, stream), [None]):
            if frame is not None:
                frame.pts = None  # the resampler keeps its own timeline across bad packets
                if resampler is None:
                    resampler = _resampler(frame, channel)
            if resampler is None:
                return
            for out in resampler.resample(frame):
                plane = _plane(out, channel)
                decoded += plane.shape[0]
                if decoded > max_samples:
                    raise AudioTooLong(f"more than {max_ms} ms of audio decoded")
                held.append(plane)
                held_samples += plane.shape[0]
                if held_samples >= CHUNK_SAMPLES:
                    yield _floats(held)
                    held, held_samples = [], 0
        if held_samples:
            yield _floats(held)


def first_seconds(path: Path, seconds: float, *, max_ms: int) -> np.ndarray:
    """The first `seconds` of `path` as one float32 array at 16 kHz mono (shorter if the
    audio is), decoding no more of it than that."""
    wanted = round(seconds * SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    held = 0
    for chunk in pcm_chunks(path, max_ms=max_ms):
        pieces.append(chunk)
        held += chunk.shape[0]
        if held >= wanted:
            break
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return audio[:wanted]


def _plane(frame: av.AudioFrame, channel: int | None) -> np.ndarray:
    """A resampled frame's 16-bit samples: its one plane (mono), or that of `channel`.
    (`to_ndarray` stacks every plane into a new array, a cost paid 50 times a second.)"""
    index = channel or 0
    if index >= len(frame.planes):
        raise ChannelMissing(f"no channel {index + 1} in the decoded audio")
    return np.frombuffer(memoryview(frame.planes[index]), dtype=np.int16, count=frame.samples)


def _floats(planes: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(planes).astype(np.float32) / 32768.0


def _resampler(frame: av.AudioFrame, channel: int | None) -> av.AudioResampler:
    if channel is None:
        return av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    return av.AudioResampler(format="s16p", layout=frame.layout.name, rate=SAMPLE_RATE)


class Windows:
    """Hands out windows of at most `seconds` of audio (the first: `first_seconds`) from a
    chunk iterator.

    The caller says where the next window starts (`advance`): the engine restarts a window
    at the start of a segment the previous window may have cut in two. Only the current
    window and the chunk being read are held in memory.
    """

    def __init__(
        self, chunks: Iterator[np.ndarray], seconds: float, *, first_seconds: float | None = None
    ) -> None:
        self.chunks = chunks
        self.next_size = int(seconds * SAMPLE_RATE)
        # The first window may be shorter: it ends sooner, which gives progress a first point.
        self.size = int((first_seconds or seconds) * SAMPLE_RATE)
        self.buffer = np.empty(0, dtype=np.float32)
        self.offset = 0  # samples of the whole audio before self.buffer[0]
        self.exhausted = False

    @property
    def offset_seconds(self) -> float:
        return self.offset / SAMPLE_RATE

    def current(self) -> tuple[np.ndarray, bool]:
        """(the window, whether it reaches the end of the audio)."""
        parts = [self.buffer]
        held = self.buffer.shape[0]
        while held < self.size and not self.exhausted:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.exhausted = True
                break
            parts.append(chunk)
            held += chunk.shape[0]
        if len(parts) > 1:
            self.buffer = np.concatenate(parts)
        window = self.buffer[: self.size]
        return window, self.exhausted and self.buffer.shape[0] <= self.size

    def advance(self, seconds: float) -> None:
        """Drop the first `seconds` of the current window: the next one starts there."""
        dropped = max(1, min(int(seconds * SAMPLE_RATE), self.buffer.shape[0]))
        self.buffer = self.buffer[dropped:].copy()  # a view would keep the old buffer alive
        self.offset += dropped
        self.size = self.next_size
