"""The probe is a door too (issue #9): whatever the bytes, `probe_audio` answers a `Probe` or
refuses with a clean 4xx, within its time budget, and never reads another file or URL.

The contract tested here: `transcription.probe.probe_audio(path)` returns a Probe (`content_type`,
`duration_ms`, `codec`) or refuses (lingoloop.refusals) with a kind the API answers 400, 413, 415 or
422, and a human message that names no server path. Anything else (another exception, a hang, a
request to a URL the upload names) is a bug. Inputs: random bytes, random bytes behind real magic
numbers, jfk.flac written in every container PyAV can write here (then truncated, spliced and
bit-flipped), a short file from every muxer FFmpeg has, and playlists, subtitles, images and text
that FFmpeg would open if let. A sample goes through `POST /api/transcribe`: a refusal leaves no row
and no file.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import av
import av.logging
import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from lingoloop.errors import ApiError
from lingoloop.refusals import Refused
from tasks_admin.models import Job
from tests.conftest import JFK, stored_files, stored_path
from tests.test_bad_input import assert_refused, png, post
from transcription import probe
from transcription.models import Audio, TranscriptRun

# However hostile the bytes, an answer within this long (inputs here are at most a few MB).
BUDGET_SECONDS = 10.0
JFK_MS = 11_000
CLEAN_REFUSALS = {400, 413, 415, 422}

FUZZ = hypothesis_settings(
    deadline=timedelta(seconds=BUDGET_SECONDS),
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- Running the probe under the budget ----------------------------------------------------


def probe_within_budget(path: Path) -> probe.Probe | ApiError:
    """The probe's answer, or its refusal as the API answers it. Fails the test on any other
    exception and when it takes longer than BUDGET_SECONDS (the probe goes on in a daemon
    thread; the test does not wait for it)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(probe.probe_audio(path))
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run, name=f"probe {path.name}", daemon=True)
    worker.start()
    worker.join(BUDGET_SECONDS)
    if not outcome:
        pytest.fail(f"probe_audio({path.name}) still running after {BUDGET_SECONDS}s")
    (answer,) = outcome
    if isinstance(answer, Refused):
        return ApiError.from_refusal(answer)
    if isinstance(answer, BaseException):
        raise AssertionError(
            f"probe_audio({path.name}) raised {type(answer).__name__} after "
            f"{time.monotonic() - started:.2f}s, not a refusal"
        ) from answer
    return answer  # type: ignore[no-any-return]


# An absolute path in a message: "/tmp/x", "/work/data/uploads/…".
_ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=:])/[\w.@-]+/")


def assert_clean_refusal(error: ApiError, path: Path, statuses: set[int] = CLEAN_REFUSALS) -> None:
    assert error.status_code in statuses, (error.status_code, error.code, error.message)
    assert error.code and error.message
    assert error.field in ("file", None)
    for text in (error.message, str(error)):
        for secret in (str(path), str(path.parent), path.name, str(django_settings.DATA_DIR)):
            assert secret not in text, f"message names a server path: {text!r}"
        assert not _ABSOLUTE_PATH.search(text), f"message names a server path: {text!r}"


def assert_accepted(answer: probe.Probe | ApiError) -> probe.Probe:
    assert isinstance(answer, probe.Probe), (answer.status_code, answer.code, answer.message)
    assert re.fullmatch(r"(audio|video)/[\w.+-]+", answer.content_type), answer.content_type
    assert answer.codec
    assert 0 < answer.duration_ms <= django_settings.MAX_AUDIO_DURATION_MS
    return answer


def assert_answered_cleanly(answer: probe.Probe | ApiError, path: Path) -> None:
    if isinstance(answer, ApiError):
        assert_clean_refusal(answer, path)
    else:
        assert_accepted(answer)


# --- Real audio, written by PyAV -------------------------------------------------------------


@functools.cache
def jfk_frames() -> tuple[av.AudioFrame, ...]:
    with av.open(str(JFK)) as container:
        return tuple(container.decode(audio=0))


def tone_frames(seconds: float = 1.0, rate: int = 48_000) -> tuple[av.AudioFrame, ...]:
    t = np.arange(int(rate * seconds)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
    frame.sample_rate = rate
    return (frame,)


def write_audio(
    path: Path,
    muxer: str,
    codec: str,
    frames: tuple[av.AudioFrame, ...],
    *,
    layout: str = "mono",
    rate: int | None = None,
    options: dict[str, str] | None = None,
    bit_rate: int | None = None,
) -> None:
    """`frames` encoded with `codec` into a `muxer` file at `path` (resampled to what the
    encoder takes). Raises whatever PyAV raises when the pair does not work here."""
    encoder = av.codec.Codec(codec, "w")
    rates = encoder.audio_rates
    if rate is None:
        rate = next((r for r in (44_100, 48_000) if not rates or r in rates), None) or rates[0]
    sample_format = encoder.audio_formats[0].name if encoder.audio_formats else "s16"
    with av.open(str(path), "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if options:
            stream.codec_context.options = options
        if bit_rate:
            stream.codec_context.bit_rate = bit_rate
        stream.format = sample_format
        resampler = av.AudioResampler(
            format=sample_format,
            layout=layout,
            rate=rate,
            frame_size=stream.codec_context.frame_size or None,
        )
        for frame in (*frames, None):
            if frame is not None:
                frame.pts = None
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


# name: (muxer, encoder, write_audio options). What people record and send: each must be
# accepted and measured at jfk.flac's 11.0 s.
REAL_AUDIO: dict[str, tuple[str, str, dict[str, Any]]] = {
    "jfk.wav": ("wav", "pcm_s16le", {}),
    "jfk.flac": ("flac", "flac", {}),
    "jfk.mp3": ("mp3", "libmp3lame", {}),
    "jfk.ogg": ("ogg", "vorbis", {"layout": "stereo", "options": {"strict": "experimental"}}),
    "jfk.opus.ogg": ("ogg", "libopus", {}),
    "jfk.opus": ("opus", "libopus", {}),
    "jfk.m4a": ("ipod", "aac", {}),
    "jfk.alac.m4a": ("ipod", "alac", {}),
    "jfk.mp4": ("mp4", "aac", {}),
    "jfk.aac": ("adts", "aac", {}),
    "jfk.webm": ("webm", "libopus", {}),
    "jfk.mkv": ("matroska", "libopus", {}),
    "jfk.mka": ("matroska", "aac", {}),
    "jfk.aiff": ("aiff", "pcm_s16be", {}),
    "jfk.au": ("au", "pcm_s16be", {}),
    "jfk.caf": ("caf", "pcm_s16le", {}),
    "jfk.alac.caf": ("caf", "alac", {}),
    "jfk.w64": ("w64", "pcm_s16le", {}),
    "jfk.wv": ("wv", "wavpack", {}),
    "jfk.tta": ("tta", "tta", {}),
    "jfk.ac3": ("ac3", "ac3", {}),
    "jfk.mp2": ("mp2", "mp2", {}),
    "jfk.amr": ("amr", "libopencore_amrnb", {"rate": 8000}),
    "jfk.wma": ("asf", "wmav2", {"bit_rate": 64_000}),
}


# Where a part of the bytes holds that part of the sound (PCM, constant-bitrate codecs).
CONSTANT_BITRATE = {"jfk.wav", "jfk.aiff", "jfk.au", "jfk.caf", "jfk.w64", "jfk.mp2", "jfk.ac3"}


@pytest.fixture(scope="module")
def real_audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """jfk.flac in each REAL_AUDIO format this PyAV can write (the others are left out)."""
    folder = tmp_path_factory.mktemp("real-audio")
    written = {}
    for name, (muxer, codec, options) in REAL_AUDIO.items():
        if codec not in av.codecs_available:
            continue
        path = folder / name
        try:
            write_audio(path, muxer, codec, jfk_frames(), **options)
        except av.error.FFmpegError:
            continue
        written[name] = path
    return written


@pytest.mark.parametrize("name", list(REAL_AUDIO))
def test_real_audio_in_each_container_is_accepted_at_its_measured_length(real_audio, name):
    if name not in real_audio:
        pytest.skip(f"PyAV here cannot write {REAL_AUDIO[name][:2]}")

    answer = assert_accepted(probe_within_budget(real_audio[name]))

    assert abs(answer.duration_ms - JFK_MS) <= JFK_MS * 0.05, answer


def test_most_real_formats_can_be_written_here(real_audio):
    """The real-audio tests above skip what this PyAV cannot write: not most of them."""
    assert len(real_audio) >= len(REAL_AUDIO) - 3, sorted(set(REAL_AUDIO) - set(real_audio))


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """One file that every example of a Hypothesis test overwrites."""
    return tmp_path / "upload"


@hypothesis_settings(FUZZ, max_examples=60)
@given(
    name=st.sampled_from(sorted(REAL_AUDIO)),
    cut=st.one_of(
        st.integers(min_value=1, max_value=4096), st.floats(min_value=0.0, max_value=0.999)
    ),
)
def test_truncated_real_audio_is_refused_or_measured_no_longer(real_audio, scratch, name, cut):
    assume(name in real_audio)
    data = real_audio[name].read_bytes()
    size = cut if isinstance(cut, int) else max(1, int(len(data) * cut))
    scratch.write_bytes(data[:size])

    answer = probe_within_budget(scratch)

    assert_answered_cleanly(answer, scratch)
    if isinstance(answer, probe.Probe):
        # What a header claims never counts: a part of the file is not longer than the whole,
        # and a part of constant-bitrate audio lasts its part of the whole.
        longest = JFK_MS * (size / len(data) if name in CONSTANT_BITRATE else 1)
        assert answer.duration_ms <= longest * 1.05 + 250, (size, len(data), answer)


@hypothesis_settings(FUZZ, max_examples=60)
@given(
    head=st.sampled_from(sorted(REAL_AUDIO)),
    tail=st.sampled_from(sorted(REAL_AUDIO)),
    head_cut=st.floats(min_value=0.0, max_value=1.0),
    tail_cut=st.floats(min_value=0.0, max_value=1.0),
    flips=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.999), st.integers(1, 255)), max_size=8
    ),
)
def test_spliced_and_bit_flipped_real_audio_is_refused_or_accepted_cleanly(
    real_audio, scratch, head, tail, head_cut, tail_cut, flips
):
    assume(head in real_audio and tail in real_audio)
    first, second = real_audio[head].read_bytes(), real_audio[tail].read_bytes()
    data = bytearray(first[: int(len(first) * head_cut)] + second[int(len(second) * tail_cut) :])
    assume(data)
    for where, mask in flips:
        data[int(len(data) * where)] ^= mask
    scratch.write_bytes(bytes(data))

    assert_answered_cleanly(probe_within_budget(scratch), scratch)


# A chunk or atom whose size points past anything a disk holds: FFmpeg seeks there.
_W64_JUNK_GUID = bytes.fromhex("6a756e6bf3acd3118cd100c04f8edb8a")


def with_huge_chunk(kind: str, real_audio: dict[str, Path]) -> bytes:
    huge = 1 << 50
    if kind == "caf":  # after the 'desc' chunk
        data = real_audio["jfk.caf"].read_bytes()
        return data[:52] + b"free" + struct.pack(">q", huge) + data[52:]
    if kind == "w64":  # after the riff/wave GUIDs
        data = real_audio["jfk.w64"].read_bytes()
        return data[:40] + _W64_JUNK_GUID + struct.pack("<Q", huge) + data[40:]
    if kind == "mp4":  # a 64-bit 'free' atom after 'ftyp'
        data = real_audio["jfk.m4a"].read_bytes()
        end = struct.unpack(">I", data[:4])[0]
        return data[:end] + struct.pack(">I", 1) + b"free" + struct.pack(">Q", huge) + data[end:]
    if kind == "wav":  # a 'JUNK' chunk after 'fmt '
        data = real_audio["jfk.wav"].read_bytes()
        return data[:36] + b"JUNK" + struct.pack("<I", 0xFFFFFFF0) + data[36:]
    assert kind == "aiff"
    data = real_audio["jfk.aiff"].read_bytes()
    return data[:12] + b"APPL" + struct.pack(">I", 0xFFFFFFF0) + data[12:]


@pytest.mark.parametrize("kind", ["caf", "w64", "mp4", "wav", "aiff"])
def test_a_chunk_claiming_more_bytes_than_any_disk_holds_is_answered_cleanly(
    real_audio, tmp_path, kind
):
    path = tmp_path / "upload"
    path.write_bytes(with_huge_chunk(kind, real_audio))

    answer = probe_within_budget(path)

    assert_answered_cleanly(answer, path)
    if isinstance(answer, probe.Probe):
        assert answer.duration_ms <= JFK_MS * 1.05


# --- Random bytes, bare and behind magic numbers --------------------------------------------


MAGIC_NUMBERS = [
    b"fLaC",
    b"fLaC\x00\x00\x00\x22",
    b"RIFF\xff\xff\xff\xffWAVEfmt ",
    b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00",
    b"RIFF\x00\x00\x00\x00AVI LIST",
    b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00",  # Sony Wave64
    b"ID3\x03\x00\x00\x00\x00\x00\x00",
    b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
    b"\xff\xfb\x90\x64",  # an MPEG-1 layer III frame header
    b"\xff\xf1\x50\x80",  # ADTS AAC
    b"\x0b\x77",  # AC-3
    b"OggS\x00\x02",
    b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",
    b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00",
    b"\x00\x00\x00\x18ftypmp42",
    b"\x00\x00\x00\x08moov",
    b"\x1a\x45\xdf\xa3",  # EBML: Matroska, WebM
    b"FORM\x00\x00\x10\x00AIFF",
    b"FORM\x00\x00\x10\x00AIFCFVER",
    b".snd\x00\x00\x00\x18",
    b"caff\x00\x01\x00\x00",
    b"wvpk",
    b"TTA1",
    b"#!AMR\n",
    b"MAC \x96\x0f",
    b"0&\xb2u\x8ef\xcf\x11\xa6\xd9\x00\xaa\x00b\xce",  # ASF
    b"Creative Voice File\x1a",
    b"FLV\x01\x05",
    b"G@\x00\x10",  # MPEG-TS sync byte
    b"\x00\x00\x01\xba",  # MPEG-PS pack header
    b"#EXTM3U\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n",
    b"ffconcat version 1.0\n",
    b"ffconcat version 1.0\nfile ",
    b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio ",
    b"WEBVTT\n\n",
    b"1\n00:00:00,000 --> 00:00:01,000\n",
    b"[Script Info]\n",
    b";FFMETADATA1\n",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"\xff\xd8\xff\xe0",
    b"<?xml version='1.0'?><svg ",
    b"<!doctype html>",
    b"%PDF-1.4\n",
    b"PK\x03\x04",
    b"\x7fELF\x02\x01\x01",
]


@hypothesis_settings(FUZZ, max_examples=100)
@given(content=st.binary(min_size=1, max_size=16 * 1024))
def test_random_bytes_are_refused_cleanly(scratch, content):
    scratch.write_bytes(content)

    assert_answered_cleanly(probe_within_budget(scratch), scratch)


@hypothesis_settings(FUZZ, max_examples=150)
@given(
    magic=st.sampled_from(MAGIC_NUMBERS),
    body=st.one_of(
        st.binary(max_size=8 * 1024),
        # Long runs of one byte: zeros and 0xff make headers claim huge sizes and counts.
        st.builds(
            lambda byte, n: byte * n, st.sampled_from([b"\x00", b"\xff"]), st.integers(0, 4096)
        ),
    ),
)
def test_random_bytes_behind_magic_numbers_are_refused_or_accepted_cleanly(scratch, magic, body):
    scratch.write_bytes(magic + body)

    assert_answered_cleanly(probe_within_budget(scratch), scratch)


def test_probing_hostile_files_leaks_no_file_descriptor(tmp_path):
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    samples = [magic + bytes(range(256)) * 8 for magic in MAGIC_NUMBERS]
    path = tmp_path / "upload"
    path.write_bytes(samples[0])
    probe_within_budget(path)  # FFmpeg's own one-time set-up is not a leak
    before = open_descriptors()

    for content in samples * 3:
        path.write_bytes(content)
        probe_within_budget(path)

    assert open_descriptors() <= before


# --- Every muxer FFmpeg has ------------------------------------------------------------------

# Muxers that write no file of their own: devices, network senders, several files at once,
# wrappers around another muxer.
NOT_FILE_MUXERS = {
    "alsa",
    "oss",
    "fbdev",
    "video4linux2,v4l2",
    "rtp",
    "rtp_mpegts",
    "rtsp",
    "sap",
    "whip",
    "tee",
    "fifo",
    "null",
    "segment",
    "stream_segment,ssegment",
    "dash",
    "hds",
    "smoothstreaming",
    "webm_chunk",
    "webm_dash_manifest",
    "image2",
    "image2pipe",
}
# Tried in turn after the muxer's default audio encoder.
FALLBACK_ENCODERS = [
    "pcm_s16le",
    "pcm_s16be",
    "libopus",
    "aac",
    "libmp3lame",
    "mp2",
    "ac3",
    "flac",
    "pcm_mulaw",
    "adpcm_ima_wav",
]


def default_audio_encoder(muxer: str) -> str | None:
    try:
        with av.open(io.BytesIO(), "w", format=muxer) as out:
            codec = out.default_audio_codec
    except (av.error.FFmpegError, ValueError):
        return None
    return None if codec in (None, "none") else codec


def audio_muxers() -> list[str]:
    """Every muxer of this PyAV that writes one file and has an audio encoder by default."""
    names = sorted(
        name
        for name in av.formats_available
        if av.ContainerFormat(name).is_output and name not in NOT_FILE_MUXERS
    )
    return [name for name in names if default_audio_encoder(name)]


def write_with_any_encoder(path: Path, muxer: str) -> str | None:
    """A second of tone in `muxer`, with its default encoder or else a fallback: the encoder
    that worked, or None when none did."""
    default = default_audio_encoder(muxer)
    for codec in [default, *FALLBACK_ENCODERS]:
        if codec is None:
            continue
        for extra in (
            {},
            {"bit_rate": 64_000},
            {"layout": "stereo"},
            {"rate": 48_000},
            {"rate": 8000},
        ):
            try:
                write_audio(path, muxer, codec, tone_frames(), **extra)  # type: ignore[arg-type]
            except Exception:  # whatever PyAV raises for a pair it cannot write
                continue
            if path.exists() and path.stat().st_size > 0:
                return codec
    return None


@pytest.fixture
def quiet_ffmpeg() -> Iterator[None]:
    """Failed writes log at ERROR; hundreds of them drown a test report."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.PANIC)
    try:
        yield
    finally:
        av.logging.set_level(level)  # type: ignore[arg-type]


@pytest.mark.parametrize("muxer", audio_muxers())
def test_a_file_from_every_muxer_is_accepted_at_its_length_or_refused_cleanly(
    tmp_path, quiet_ffmpeg, muxer
):
    path = tmp_path / f"tone.{muxer.split(',')[0]}"
    codec = write_with_any_encoder(path, muxer)
    if codec is None:
        pytest.skip(f"PyAV here cannot write audio as {muxer}")

    answer = probe_within_budget(path)

    if isinstance(answer, ApiError):
        assert_clean_refusal(answer, path, {415, 422})
    else:
        assert abs(assert_accepted(answer).duration_ms - 1000) <= 150, (codec, answer)


def test_every_audio_capable_muxer_is_tried():
    """The parametrization above is not silently empty, and covers the usual containers."""
    muxers = set(audio_muxers())
    assert {"wav", "flac", "mp3", "ogg", "mp4", "matroska", "webm", "aiff", "caf"} <= muxers
    assert len(muxers) > 60


# --- Playlists, text, subtitles, images: never opened for what they name ---------------------


class CountingServer:
    """A tiny HTTP server on 127.0.0.1 that serves real audio to anyone and counts requests."""

    def __init__(self, body: bytes) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener(real_audio) -> Iterator[CountingServer]:
    server = CountingServer(real_audio["jfk.mp3"].read_bytes())
    yield server
    server.close()


@pytest.fixture(scope="module")
def playlist_targets(real_audio, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real audio that a playlist in an upload can name: were FFmpeg to follow the playlist,
    the upload would read as 11 s of audio."""
    ts = tmp_path_factory.mktemp("ts") / "jfk.ts"
    write_audio(ts, "mpegts", "mp2", jfk_frames())
    return {
        "jfk.mp3": real_audio["jfk.mp3"].read_bytes(),
        "jfk.wav": real_audio["jfk.wav"].read_bytes(),
        "jfk.ts": ts.read_bytes(),
    }


def plant(folder: Path, targets: dict[str, bytes]) -> Path:
    for name, content in targets.items():
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture
def beside(tmp_path, playlist_targets) -> Path:
    """A folder where the upload lands next to real audio that a playlist can name."""
    return plant(tmp_path, playlist_targets)


def hls(*lines: str) -> str:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:11\n"
        + "".join(f"#EXTINF:11.0,\n{line}\n" for line in lines)
        + "#EXT-X-ENDLIST\n"
    )


def svg() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
        b'<rect width="16" height="16" fill="red"/></svg>\n'
    )


# id: (file name, its content given the folder it lands in and the listener's URL)
NOT_AUDIO: dict[str, tuple[str, Any]] = {
    "hls-naming-a-local-file": ("talk.m3u8", lambda d, url: hls("jfk.mp3")),
    "hls-naming-an-absolute-path": ("talk.m3u8", lambda d, url: hls(f"{d}/jfk.mp3")),
    "hls-naming-a-file-url": ("talk.m3u8", lambda d, url: hls(f"file://{d}/jfk.ts")),
    "hls-naming-a-local-ts": ("talk.m3u8", lambda d, url: hls("jfk.ts")),
    "hls-naming-a-url": ("talk.m3u8", lambda d, url: hls(f"{url}/segment.mp3")),
    "hls-master-naming-a-url": (
        "talk.m3u8",
        lambda d, url: f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=64000\n{url}/index.m3u8\n",
    ),
    "hls-with-a-key-url": (
        "talk.m3u8",
        lambda d, url: hls("jfk.ts").replace(
            "#EXTINF", f'#EXT-X-KEY:METHOD=AES-128,URI="{url}/key"\n#EXTINF', 1
        ),
    ),
    "hls-renamed-flac": ("talk.flac", lambda d, url: hls(f"{url}/segment.mp3")),
    "m3u-naming-a-local-file": (
        "talk.m3u",
        lambda d, url: f"#EXTM3U\n#EXTINF:11,jfk\n{d}/jfk.mp3\n",
    ),
    "ffconcat-naming-a-local-file": (
        "talk.ffconcat",
        lambda d, url: "ffconcat version 1.0\nfile 'jfk.mp3'\nfile 'jfk.wav'\n",
    ),
    "ffconcat-naming-an-absolute-path": (
        "talk.flac",
        lambda d, url: f"ffconcat version 1.0\nfile '{d}/jfk.mp3'\n",
    ),
    "ffconcat-naming-a-url": (
        "talk.flac",
        lambda d, url: f"ffconcat version 1.0\nfile '{url}/x.mp3'\n",
    ),
    "sdp-rtp-session": (
        "talk.sdp",
        lambda d, url: (
            "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=talk\nc=IN IP4 127.0.0.1\nt=0 0\n"
            "m=audio 5004 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
        ),
    ),
    "srt-subtitles": (
        "talk.srt",
        lambda d, url: (
            "1\n00:00:00,000 --> 00:00:02,500\nAnd so my fellow Americans\n\n"
            "2\n00:00:02,500 --> 00:00:11,000\nask not what your country can do for you\n"
        ),
    ),
    "ass-subtitles": (
        "talk.ass",
        lambda d, url: (
            "[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\n"
            "Format: Name, Fontname, Fontsize\nStyle: Default,Arial,20\n\n[Events]\n"
            "Format: Layer, Start, End, Style, Text\n"
            "Dialogue: 0,0:00:00.00,0:00:02.50,Default,And so my fellow Americans\n"
        ),
    ),
    "webvtt-subtitles": ("talk.vtt", lambda d, url: "WEBVTT\n\n00:00.000 --> 00:02.500\nAnd so\n"),
    "microdvd-subtitles": ("talk.sub", lambda d, url: "{1}{25}And so\n{26}{50}my fellow\n"),
    "ffmetadata": ("talk.flac", lambda d, url: ";FFMETADATA1\ntitle=talk\nartist=JFK\n"),
    "png": ("talk.flac", lambda d, url: png()),
    "svg": ("talk.mp3", lambda d, url: svg()),
    "html": (
        "talk.wav",
        lambda d, url: "<!doctype html><html><body>" + "hello " * 500 + "</body></html>",
    ),
    "plain-text-renamed-flac": (
        "talk.flac",
        lambda d, url: "And so my fellow Americans, ask not what your country can do.\n" * 60,
    ),
    "ansi-art-renamed-flac": ("talk.flac", lambda d, url: "\x1b[31mred\x1b[0m text\n" * 200),
}


@pytest.mark.parametrize("case", list(NOT_AUDIO))
def test_playlists_text_subtitles_and_images_are_refused_as_not_audio(beside, listener, case):
    name, content = NOT_AUDIO[case]
    body = content(beside, listener.url)
    path = beside / name
    path.write_bytes(body.encode() if isinstance(body, str) else body)

    answer = probe_within_budget(path)

    assert listener.hits == [], f"FFmpeg fetched {listener.hits} named in the upload"
    assert isinstance(answer, ApiError), f"accepted as audio: {answer}"
    assert_clean_refusal(answer, path, {415})
    assert answer.code == "not_audio"


# --- Through the HTTP API: refusals leave nothing behind ---------------------------------------


@pytest.fixture(autouse=True)
def _quick_passwords(settings) -> None:  # type: ignore[no-untyped-def]
    """Accounts are made for every example; their password hashing is not under test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def planted(settings, playlist_targets) -> set[str]:
    """Real audio in the upload temp folder, where Django spools an upload: a relative name in
    an uploaded playlist points here."""
    plant(Path(settings.UPLOAD_TEMP_DIR), playlist_targets)
    return set(playlist_targets)


def assert_nothing_left(planted: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    assert Audio.objects.count() == 0
    assert TranscriptRun.objects.count() == 0
    assert Job.objects.count() == 0
    assert stored_files() == []
    spooled = {p.name for p in Path(django_settings.UPLOAD_TEMP_DIR).iterdir()}
    assert spooled == set(planted), "upload temp files left behind"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "case",
    [
        "hls-naming-a-local-file",
        "hls-naming-an-absolute-path",
        "hls-naming-a-url",
        "ffconcat-naming-a-local-file",
        "sdp-rtp-session",
        "srt-subtitles",
        "svg",
        "plain-text-renamed-flac",
    ],
)
def test_uploads_that_are_not_audio_are_415_and_leave_nothing(
    alice, settings, planted, listener, case
):
    name, content = NOT_AUDIO[case]
    body = content(Path(settings.UPLOAD_TEMP_DIR), listener.url)

    response = post(alice.client, body.encode() if isinstance(body, str) else body, name)

    assert listener.hits == [], f"FFmpeg fetched {listener.hits} named in the upload"
    assert_refused(response, 415, "not_audio")
    assert_nothing_left(planted)


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["jfk.wav", "jfk.aiff", "jfk.mp3"])
def test_an_upload_cut_in_half_is_measured_at_half_its_header_length(alice, real_audio, name):
    data = real_audio[name].read_bytes()

    response = post(alice.client, data[: len(data) // 2], name)

    assert response.status_code == 202, response.content
    assert abs(response.json()["audio"]["durationMs"] - JFK_MS / 2) <= JFK_MS * 0.05
    assert Audio.objects.get().duration_ms == response.json()["audio"]["durationMs"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["jfk.m4a", "jfk.mp4", "jfk.flac", "jfk.wma"])
def test_an_upload_cut_short_is_refused_or_stored_and_a_refusal_leaves_nothing(
    alice, real_audio, name
):
    if name not in real_audio:
        pytest.skip(f"PyAV here cannot write {name}")
    data = real_audio[name].read_bytes()

    response = post(alice.client, data[:2000], name)

    if response.status_code == 202:
        assert response.json()["audio"]["durationMs"] <= JFK_MS
    else:
        assert response.status_code in {415, 422}, response.content
        assert_refused(response, response.status_code, response.json()["error"]["code"])
        assert_nothing_left()


@pytest.mark.django_db
@hypothesis_settings(FUZZ, max_examples=40)
@given(
    source=st.one_of(
        st.sampled_from(MAGIC_NUMBERS).map(lambda magic: ("magic", magic)),
        st.sampled_from(sorted(REAL_AUDIO)).map(lambda name: ("real", name)),
    ),
    cut=st.floats(min_value=0.0, max_value=1.0),
    noise=st.binary(max_size=2048),
)
def test_random_uploads_are_stored_whole_or_leave_nothing(alice, real_audio, source, cut, noise):
    kind, what = source
    if kind == "magic":
        content = what + noise
    else:
        assume(what in real_audio)
        data = real_audio[what].read_bytes()
        content = data[: max(1, int(len(data) * cut))] + noise
    cache.clear()  # the upload throttle counts every example

    response = post(alice.client, content, "upload.flac")

    assert response.status_code in {202, *CLEAN_REFUSALS}, response.content
    if response.status_code == 202:
        (audio,) = Audio.objects.all()
        assert stored_files() == [stored_path(audio)]
        Job.objects.all().delete()
        TranscriptRun.objects.all().delete()
        Audio.objects.all().delete()
        stored_path(audio).unlink(missing_ok=True)
    else:
        assert set(response.json()["error"]) == {"code", "message", "field"}
    assert_nothing_left()
