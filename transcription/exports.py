"""A finished transcript as a file: txt, srt, vtt, tsv or json."""

from __future__ import annotations

import json
from typing import Any

from transcription.models import TranscriptRun
from transcription.representations import TranscriptJsonSerializer

CONTENT_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "json": "application/json",
}


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cues(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in segments if str(s.get("text", "")).strip()]


def to_txt(run: TranscriptRun) -> str:
    return run.text.strip() + "\n"


def to_srt(run: TranscriptRun) -> str:
    blocks = [
        f"{n}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
        for n, s in enumerate(_cues(run.segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(run: TranscriptRun) -> str:
    blocks = [
        f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text'].strip()}\n"
        for s in _cues(run.segments)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(run: TranscriptRun) -> str:
    rows = ["start\tend\ttext"]
    for s in _cues(run.segments):
        text = s["text"].strip().replace("\t", " ").replace("\n", " ")
        rows.append(f"{round(s['start'] * 1000)}\t{round(s['end'] * 1000)}\t{text}")
    return "\n".join(rows) + "\n"


def to_json(run: TranscriptRun) -> str:
    return json.dumps(TranscriptJsonSerializer(run).data, ensure_ascii=False, indent=2)


RENDERERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv, "json": to_json}
