"""faster-whisper behind a small interface: one loaded model per process, kept between jobs.

The model is loaded lazily on first use, so nothing loads it before django-q2 forks its
workers (CTranslate2 is not fork-safe). The audio is decoded here (transcription/pcm.py) and
handed to the model in bounded windows; segments come from a lazy generator, and progress is
`segment.end / duration` (DESIGN.md, items 10 and 11), or for a batched window, whose segments
all come at once, the end of its last one. Error messages are shown to users:
they name no server path.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from django.conf import settings

from lingoloop.refusals import Refused
from transcription import catalogue
from transcription.pcm import SAMPLE_RATE, AudioTooLong, ChannelMissing, Windows, pcm_chunks

logger = logging.getLogger(__name__)

BUNDLED_MODEL = catalogue.BUNDLED_MODEL


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
    hotwords: str | None = None
    # One channel only (from 0), as channels=separate transcribes each; None: all mixed.
    channel: int | None = None


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
    """What WhisperModel loads for `name` (transcription/catalogue.py): a folder of the
    bundled or a registered model, verified; else a hub name, or a local folder's path."""
    return catalogue.source_of(name)


# The models this process holds loaded, the most recently used last; at most
# WHISPER_MODELS_LOADED of them (the least recently used goes first).
_models: OrderedDict[str, Any] = OrderedDict()
_models_lock = threading.Lock()


def get_model(name: str) -> Any:
    from faster_whisper import WhisperModel

    with _models_lock:
        model = _models.get(name)
        if model is not None:
            _models.move_to_end(name)
            return model
        try:
            source = resolve_model(name)
        except catalogue.ModelDamaged as exc:
            logger.error("whisper model %s refused: %s", name, exc)
            raise EngineError(
                "model_damaged",
                f"The model {name!r} is damaged on this server and was not loaded; an "
                "operator has been told.",
                permanent=True,
            ) from exc
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
        while len(_models) > settings.WHISPER_MODELS_LOADED:
            evicted, _ = _models.popitem(last=False)
            logger.info(
                "whisper model %s unloaded (WHISPER_MODELS_LOADED=%d)",
                evicted,
                settings.WHISPER_MODELS_LOADED,
            )
        return model


# Whisper detects the language from one 30 s window, the model's whole input.
DETECT_SECONDS = 30


def detect_language(
    model_name: str, audio: np.ndarray
) -> tuple[str, float, list[tuple[str, float]]]:
    """(language, probability, every language with its probability, most likely first)
    of 16 kHz mono `audio` (its first DETECT_SECONDS are what counts)."""
    language, probability, ranked = get_model(model_name).detect_language(audio=audio)
    return language, float(probability), [(code, float(p)) for code, p in ranked]


def loaded_models() -> list[str]:
    """The models this process holds, least recently used first."""
    with _models_lock:
        return list(_models)


# The audio is transcribed a window at a time so that memory does not grow with its length
# (DESIGN.md, item 11): a 2 h file holds no more than a 1 min one. A segment that ends within
# TAIL_GUARD_SECONDS of a window's end may be a sentence cut in two, so the next window starts
# again at that segment's start, with the text before it as its prompt.
WINDOW_SECONDS = 120.0
TAIL_GUARD_SECONDS = 5.0
FIRST_BATCHED_WINDOW_SECONDS = 30.0
PROMPT_CHARS = 200


# Batched inference (faster-whisper's BatchedInferencePipeline) cuts a window into chunks of
# speech of up to 30 s by voice activity and decodes `batch` of them at once, without the
# sequential path's temperature fallback and conditioning on the text before. On long speech
# it is many times faster at the same word error rate (bench/wer.py prints both). The batch
# size "auto" picks: on a 2-core machine with tiny.en the batch size hardly changes the speed
# (batch 1, 4, 8, 16 on 480 s of speech: 20.2, 18.9, 18.2, 17.6 s) while each item of a batch
# holds ~50 MiB more (tiny.en, beam 5; more with larger models), so "auto" takes two items per
# CPU thread, at most 16, and no more than half the available memory allows.
MAX_AUTO_BATCH = 16
BATCH_ITEMS_PER_THREAD = 2
BATCH_ITEM_BYTES = 64 * 1024 * 1024
# A GPU gains from every item it decodes in parallel: there "auto" fills the batch.
GPU_AUTO_BATCH = MAX_AUTO_BATCH


def auto_batch_size(*, threads: int, available_bytes: int, processes: int, gpu: bool) -> int:
    """The batch size for `threads` CPU threads of each of `processes` workers sharing
    `available_bytes` of memory (half of it at most goes to batches)."""
    wanted = GPU_AUTO_BATCH if gpu else BATCH_ITEMS_PER_THREAD * threads
    affordable = available_bytes // (2 * processes * BATCH_ITEM_BYTES)
    return max(1, min(wanted, affordable, MAX_AUTO_BATCH))


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo (Linux), else a quarter of the physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def configured_batch_size() -> int:
    """WHISPER_BATCH_SIZE as a number: "auto" resolved for this machine."""
    configured = settings.WHISPER_BATCH_SIZE
    return configured if isinstance(configured, int) else _machine_batch_size()


@functools.cache
def _machine_batch_size() -> int:
    """What "auto" means here: worked out once per process, at its first batched job."""
    threads = settings.WHISPER_CPU_THREADS or os.cpu_count() or 1
    size = auto_batch_size(
        threads=threads,
        available_bytes=_available_memory(),
        processes=settings.MAX_CONCURRENT_JOBS,
        gpu=_on_gpu(),
    )
    logger.info("WHISPER_BATCH_SIZE=auto: batches of %d", size)
    return size


def _on_gpu() -> bool:
    if settings.WHISPER_DEVICE == "cpu":
        return False
    import ctranslate2

    return bool(ctranslate2.get_cuda_device_count())


def batch_size_for(options: Options, *, duration_ms: int, allow_batched: bool) -> int:
    """The batch size to decode this audio with; 0: sequentially.

    Batched only where it is allowed (a worker's async job: a request's sync run stays
    sequential, with its smaller memory and its per-window prompt), where WHISPER_BATCH_SIZE
    is not 0 and where the audio is at least WHISPER_BATCHED_MIN_DURATION_MS long (below one
    30 s chunk there is nothing to batch). Not with word timestamps: bench/wer.py finds
    batched word times further from the truth (85 ms on average and 97 % of the words
    placed, against 49 ms and 99.6 % sequentially, in the quieter of two runs).
    """
    if options.word_timestamps or not allow_batched:
        return 0
    if duration_ms < settings.WHISPER_BATCHED_MIN_DURATION_MS:
        return 0
    return configured_batch_size()


def _window_segments(
    model: Any,
    audio: np.ndarray,
    options: Options,
    language: str | None,
    prompt: str | None,
    batch: int,
    *,
    kept_until: float | None = None,
) -> tuple[Iterator[Any] | list[Any], Any]:
    """The window's segments: a lazy generator, each decoded as it is taken, or (batched) a
    list, all decoded before the first is seen. `kept_until`: the window is not the last, and
    a segment ending after this (seconds in the window) is decoded again by the next one."""
    kwargs: dict[str, Any] = {
        "language": language,
        "task": options.task,
        "beam_size": options.beam_size,
        "word_timestamps": options.word_timestamps,
        "vad_filter": options.vad_filter,
        "initial_prompt": prompt or None,
        "hotwords": options.hotwords or None,
    }
    if batch > 0:
        speech = speech_spans(audio)
        if speech:  # else nothing to batch: the sequential path says what it makes of it
            return _batched_window(model, audio, kwargs, batch, speech, kept_until=kept_until)
    segments, info = model.transcribe(audio, **kwargs)
    return segments, info


# How the batched path keeps its words. Two losses were measured (bench/wer.py, jfk x10 and
# x30: 3.2 % and 8.9 % word error against 0.5 % and 5.3 % sequentially):
# - the pipeline's own chunks are its VAD's speech glued together without the silences in
#   between, and the VAD misses quiet words (the "ask" after a pause in jfk.flac, in one
#   repeat out of two): what it calls silence is never decoded. So the engine cuts the chunks
#   itself (`speech_clips`): stretches of the audio as it is, silences and all, cut inside the
#   widest pauses, and hands them to the pipeline as `clip_timestamps`;
# - a batch item sometimes stops early and drops the rest of its chunk (a whole sentence):
#   one temperature, no fallback. So speech that no segment covers (`speech_gaps`) is decoded
#   again with the sequential model, which has its fallback, the text before as its prompt.
CLIP_SECONDS = 30.0  # whisper's input: the pipeline decodes only the first 30 s of a clip
CLIP_MIN_SECONDS = 15.0  # a clip is cut at its widest pause past this length
CLIP_PAD_SECONDS = 1.0  # silence kept either side of a clip's speech
GAP_SPEECH_SECONDS = 1.5  # uncovered speech worth decoding again (a few words)


def speech_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    """Where the VAD hears speech, in seconds, with the options the pipeline itself uses."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(max_speech_duration_s=CLIP_SECONDS, min_silence_duration_ms=160)
    return [
        (span["start"] / SAMPLE_RATE, span["end"] / SAMPLE_RATE)
        for span in get_speech_timestamps(audio, options)
    ]


def speech_clips(speech: list[tuple[float, float]], duration: float) -> list[tuple[float, float]]:
    """The audio (`duration` seconds) to decode as chunks of at most CLIP_SECONDS, covering
    all of `speech` (sorted, each span at most CLIP_SECONDS long): consecutive spans joined,
    with the silences between them, and cut in the widest pause after CLIP_MIN_SECONDS."""
    clips: list[tuple[float, float]] = []
    first = 0
    start = max(0.0, speech[0][0] - CLIP_PAD_SECONDS)
    while first < len(speech):
        last = first
        while last + 1 < len(speech) and speech[last + 1][1] - start <= CLIP_SECONDS:
            last += 1
        if last + 1 < len(speech):  # cut in a pause: the widest once the clip is long enough
            long_enough = [
                k for k in range(first, last + 1) if speech[k][1] - start >= CLIP_MIN_SECONDS
            ]
            last = max(long_enough or [last], key=lambda k: speech[k + 1][0] - speech[k][1])
            pause = speech[last + 1][0] - speech[last][1]
            pad = min(pause / 2, CLIP_PAD_SECONDS)
            end = min(speech[last][1] + pad, start + CLIP_SECONDS)
            clips.append((start, end))
            start = max(speech[last + 1][0] - pad, end)
        else:
            end = min(speech[last][1] + CLIP_PAD_SECONDS, start + CLIP_SECONDS, duration)
            clips.append((start, end))
        first = last + 1
    return clips


def speech_gaps(
    covered: list[tuple[float, float]], speech: list[tuple[float, float]], end: float
) -> list[tuple[float, float]]:
    """The stretches of audio between `covered` spans (the segments, in order) and after the
    last one up to `end` that hold more than GAP_SPEECH_SECONDS of `speech`."""
    gaps = []
    cursor = 0.0
    for start, stop in [*covered, (end, end)]:
        heard = sum(max(0.0, min(b, start) - max(a, cursor)) for a, b in speech)
        if heard > GAP_SPEECH_SECONDS:
            gaps.append((cursor, start))
        cursor = max(cursor, stop)
    return gaps


def _batched_window(
    model: Any,
    audio: np.ndarray,
    kwargs: dict[str, Any],
    batch: int,
    speech: list[tuple[float, float]],
    *,
    kept_until: float | None = None,
) -> tuple[list[Any], Any]:
    """The window decoded in batches of `speech_clips`, then its `speech_gaps` decoded
    again sequentially; all its segments at once, in time order.

    A gap that starts after `kept_until` is left: a segment ends where it starts, past
    `kept_until`, so the next window starts again no later than that segment (`transcribe`)
    and decodes the gap itself. Decoded here, it cost a sequential decode (with the
    temperature fallback, up to 3.6 s for 4 s of audio) whose segments were all thrown away:
    a first window's tail had one in most pieces of a split run."""
    from faster_whisper import BatchedInferencePipeline

    duration = audio.shape[0] / SAMPLE_RATE
    clips = [{"start": start, "end": end} for start, end in speech_clips(speech, duration)]
    # With timestamps, a chunk comes back as segments of a sentence or so (as sequential
    # ones are), not as one 30 s block: subtitles stay readable, and a window's cut segment
    # is short.
    pipeline = BatchedInferencePipeline(model)
    batched, info = pipeline.transcribe(
        audio, batch_size=batch, clip_timestamps=clips, without_timestamps=False, **kwargs
    )
    segments = list(batched)
    for start, end in speech_gaps([(s.start, s.end) for s in segments], speech, duration):
        if kept_until is not None and start > kept_until:
            break  # gaps come in time order: the rest are later still
        logger.debug("batched decoding left %.1f-%.1f s: decoded again", start, end)
        before = " ".join(s.text.strip() for s in segments if s.end <= start)[-PROMPT_CHARS:]
        segments += _decode_gap(
            model, audio, (start, end), {**kwargs, "language": info.language}, before
        )
        segments.sort(key=lambda s: s.start)  # the next gap's prompt: the text before it
    return segments, info


def _decode_gap(
    model: Any, audio: np.ndarray, span: tuple[float, float], kwargs: dict[str, Any], before: str
) -> list[Any]:
    """`span` of the audio decoded sequentially (with its temperature fallback), its
    segments' times (and their words', if asked for) in the window's."""
    start, end = span
    piece = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
    segments, _ = model.transcribe(
        piece,
        **{**kwargs, "initial_prompt": before or kwargs["initial_prompt"]},
        condition_on_previous_text=False,
    )
    return [
        dataclasses.replace(
            s,
            start=start + s.start,
            end=min(start + s.end, end),
            words=s.words
            and [dataclasses.replace(w, start=start + w.start, end=start + w.end) for w in s.words],
        )
        for s in segments
    ]


def _segment_dict(
    segment: Any, index: int, offset: float, words: bool, bounds: tuple[float, float]
) -> dict[str, Any]:
    """The segment as stored, its times in the whole audio and inside `bounds` (the end of
    the segment before it, the end of the window): the batched pipeline's timestamps may
    reach past its chunk, into the next segment or past the audio's end."""
    not_before, not_after = bounds
    start = min(max(offset + float(segment.start), not_before), not_after)
    item: dict[str, Any] = {
        "id": index,
        "start": round(start, 3),
        "end": round(min(max(offset + float(segment.end), start), not_after), 3),
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


def _progress(item: dict[str, Any], total: float) -> float:
    """Percent of `total` seconds decoded once `item` has ended; 100 is for `done` alone."""
    return min(100.0 * item["end"] / total, 99.9)


def transcribe(
    path: Path,
    options: Options,
    *,
    duration_ms: int,
    max_duration_ms: int,
    on_segment: Callable[[dict[str, Any], float], None] | None = None,
    on_window: Callable[[float, float], None] | None = None,
    on_language: Callable[[str, float], None] | None = None,
    allow_batched: bool = False,
) -> Result:
    """Transcribe `path`; `on_segment(segment, progress_percent)` is called for each segment
    in order, with how much of the audio is decoded by then: the segment's end, or in a
    batched window (its segments all decoded at once) the end of the window's last one.

    `on_window(start_percent, end_percent)` is called as each window's decoding begins (the
    first call: the model is loaded): no segment of it can end past `end_percent`, so a
    caller may interpolate progress up to there while the window is being decoded.

    `duration_ms` is the audio's measured length (for progress); decoding stops with a
    permanent `audio_too_long` error past `max_duration_ms`, whatever the file claims.
    `on_segment` may raise to stop early (cancel, lost lease): the exception propagates.
    `on_language(code, probability)` is called once, as soon as the language is detected
    (on the first window; never when the options name it).
    `allow_batched`: this is a worker's job, which may be decoded in batches
    (`batch_size_for`); segments then arrive in bursts, a batch at a time.
    """
    model = get_model(options.model)
    batch = batch_size_for(options, duration_ms=duration_ms, allow_batched=allow_batched)
    # The batched pipeline extracts features chunk by chunk (30 s each), so its window can
    # hold a whole batch of chunks without holding much more memory.
    seconds = max(WINDOW_SECONDS, 30.0 * batch)
    # A batched window's segments all come at its end; a short first one gives progress its
    # first real point, and the pace to interpolate by, early (jobs.ProgressClock).
    first = FIRST_BATCHED_WINDOW_SECONDS if batch else seconds
    chunks = pcm_chunks(path, max_ms=max_duration_ms, channel=options.channel)
    windows = Windows(chunks, seconds, first_seconds=first)
    result = Result(language=options.language or "", language_probability=1.0, duration=0.0)
    language = options.language
    prompt = options.initial_prompt
    try:
        while True:
            window, final = windows.current()
            if window.shape[0] == 0:
                break
            offset = windows.offset_seconds
            window_end = window.shape[0] / SAMPLE_RATE
            result.duration = offset + window_end
            total = max(duration_ms / 1000, result.duration)
            if on_window is not None:
                on_window(100.0 * offset / total, 100.0 * result.duration / total)
            segments, info = _window_segments(
                model,
                window,
                options,
                language,
                prompt,
                batch,
                kept_until=None if final else window_end - TAIL_GUARD_SECONDS,
            )
            if language is None:  # detected on the first window, kept for the rest
                language = result.language = info.language
                result.language_probability = float(info.language_probability or 0.0)
                if on_language is not None:
                    on_language(result.language, result.language_probability)
            resume_at: float | None = None
            last_end = 0.0
            # A batched window is decoded whole before its first segment is seen: each of its
            # segments is reported with the progress of its last. Reported one by one with
            # their own ends, an update sent after the burst's first segment measured the pace
            # from a point hardly past the window before, at the burst's time: its ETA was
            # nearly twice the truth (bench/progress.py: +80 % at 40 %).
            burst = isinstance(segments, list)
            first_new = len(result.segments)
            for segment in segments:
                if not final and segment.end > window_end - TAIL_GUARD_SECONDS:
                    resume_at = float(segment.start)  # may be cut: the next window redoes it
                    break
                previous_end = result.segments[-1]["end"] if result.segments else 0.0
                item = _segment_dict(
                    segment,
                    len(result.segments),
                    offset,
                    options.word_timestamps,
                    (previous_end, result.duration),
                )
                result.segments.append(item)
                last_end = float(segment.end)
                if on_segment is not None and not burst:
                    on_segment(item, _progress(item, total))
            if on_segment is not None and burst and len(result.segments) > first_new:
                reached = _progress(result.segments[-1], total)
                for item in result.segments[first_new:]:
                    on_segment(item, reached)
            if final:
                break
            if resume_at is None or resume_at <= 0:
                resume_at = max(last_end, window_end - TAIL_GUARD_SECONDS)
            windows.advance(resume_at)
            if batch == 0:
                # As whisper conditions each 30 s on the text before it. (The batched pipeline
                # gives its prompt to every chunk of a window alike: only the user's then.)
                prompt = result.text[-PROMPT_CHARS:] or options.initial_prompt
    except ChannelMissing:
        raise EngineError(
            "channel_missing",
            f"The audio has no channel {(options.channel or 0) + 1}, although its header said so.",
            permanent=True,
        ) from None
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


def transcribe_channels(
    path: Path,
    options: Options,
    *,
    speakers: list[str],
    duration_ms: int,
    max_duration_ms: int,
    on_segment: Callable[[dict[str, Any], float], None] | None = None,
    on_window: Callable[[float, float], None] | None = None,
    on_language: Callable[[str, float], None] | None = None,
    allow_batched: bool = False,
) -> Result:
    """channels=separate: each channel of `path` transcribed on its own (one speaker each,
    `speakers[k]` for channel k), then merged in time order.

    Progress runs over all of them: channel k covers the k-th n-th of it. Segments are
    reported as each channel makes them, labelled and numbered in that order; the result
    holds them merged by start time (then channel), numbered again from 0. The language is
    the first channel's; each channel detects its own.

    Each channel is decoded with the VAD filter on: a speaker's channel is mostly the others'
    silence, in which Whisper otherwise invents words and from which it times its first
    segment (a reply 4 s in came back starting at 0 s).
    """
    count = len(speakers)
    results: list[Result] = []
    reported = 0

    def overall(k: int, percent: float) -> float:
        return (k * 100.0 + percent) / count

    for k, speaker in enumerate(speakers):

        def segment(
            item: dict[str, Any], progress: float, k: int = k, speaker: str = speaker
        ) -> None:
            nonlocal reported
            labelled = {**item, "id": reported, "speaker": speaker, "channel": k}
            reported += 1
            if on_segment is not None:
                on_segment(labelled, overall(k, progress))

        def window(start: float, end: float, k: int = k) -> None:
            if on_window is not None:
                on_window(overall(k, start), overall(k, end))

        results.append(
            transcribe(
                path,
                dataclasses.replace(options, channel=k, vad_filter=True),
                duration_ms=duration_ms,
                max_duration_ms=max_duration_ms,
                on_segment=segment,
                on_window=window,
                on_language=on_language if k == 0 else None,
                allow_batched=allow_batched,
            )
        )
    merged = sorted(
        ((item, k) for k, result in enumerate(results) for item in result.segments),
        key=lambda pair: (pair[0]["start"], pair[1]),
    )
    first = results[0]
    return Result(
        language=first.language,
        language_probability=first.language_probability,
        duration=max(result.duration for result in results),
        segments=[
            {**item, "id": index, "speaker": speakers[k], "channel": k}
            for index, (item, k) in enumerate(merged)
        ],
    )
