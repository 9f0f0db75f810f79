"""A finished transcript as a file: txt, srt, vtt, tsv or json.

Each format comes in two versions (`?version=`): with the owner's corrections (the default) or
as the model made it, and, for runs transcribed with word timestamps, at two levels
(`?level=`): one cue per segment, or one per word. A corrected segment has no word times of
its own (the model's words timed the model's text), so at the word level it is one cue, with
the segment's times and its corrected text; `version=original` has the model's words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from transcription.models import Transcript
from transcription.representations import TranscriptJsonSerializer

CONTENT_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "json": "application/json",
}
VERSIONS = ("edited", "original")
LEVELS = ("segment", "word")

Cue = dict[str, Any]  # start, end (seconds), text, speaker (channels=separate; else "")


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _one_line(text: str) -> str:
    # A line break or tab inside a cue would end it, or shift a TSV column.
    return " ".join(str(text).split())


def _word_cues(segment: dict[str, Any]) -> Iterator[Cue]:
    if segment.get("edited") or not segment.get("words"):
        yield segment
        return
    for word in segment["words"]:
        yield {
            "start": word["start"],
            "end": word["end"],
            "text": word["word"],
            "speaker": segment.get("speaker", ""),
        }


def cues(transcript: Transcript, level: str = "segment") -> list[Cue]:
    """The timed lines of a transcript at `level`, those without words left out."""
    lines: Iterable[Cue] = transcript.segments
    if level == "word":
        lines = (cue for segment in transcript.segments for cue in _word_cues(segment))
    return [
        {
            "start": cue["start"],
            "end": cue["end"],
            "text": _one_line(cue.get("text", "")),
            "speaker": _one_line(cue.get("speaker", "")),
        }
        for cue in lines
        if _one_line(cue.get("text", ""))
    ]


def _spoken(cue: Cue) -> str:
    """The cue's text, said by its speaker when there is one (`Alice: …`)."""
    return f"{cue['speaker']}: {cue['text']}" if cue["speaker"] else cue["text"]


def _vtt_text(text: str) -> str:
    # WebVTT cue text is markup: `<` opens a tag, `&` an entity, and `-->` may not appear.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt_voice(cue: Cue) -> str:
    """The cue's text, in a voice span when it has a speaker (`<v Alice>…`)."""
    text = _vtt_text(cue["text"])
    return f"<v {_vtt_text(cue['speaker'])}>{text}" if cue["speaker"] else text


def to_txt(transcript: Transcript, level: str) -> str:
    """The text; with speakers, one line per segment, each said by its speaker."""
    if any(segment.get("speaker") for segment in transcript.segments):
        return "".join(_spoken(cue) + "\n" for cue in cues(transcript))
    return transcript.text.strip() + "\n"


def to_srt(transcript: Transcript, level: str) -> str:
    blocks = [
        f"{n}\n{_timestamp(c['start'], ',')} --> {_timestamp(c['end'], ',')}\n{_spoken(c)}\n"
        for n, c in enumerate(cues(transcript, level), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript, level: str) -> str:
    blocks = [
        f"{_timestamp(c['start'], '.')} --> {_timestamp(c['end'], '.')}\n{_vtt_voice(c)}\n"
        for c in cues(transcript, level)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(transcript: Transcript, level: str) -> str:
    lines = cues(transcript, level)
    if any(c["speaker"] for c in lines):  # a column more, after the three everyone reads
        rows = ["start\tend\ttext\tspeaker"]
        rows += [
            f"{round(c['start'] * 1000)}\t{round(c['end'] * 1000)}\t{c['text']}\t{c['speaker']}"
            for c in lines
        ]
    else:
        rows = ["start\tend\ttext"]
        rows += [
            f"{round(c['start'] * 1000)}\t{round(c['end'] * 1000)}\t{c['text']}" for c in lines
        ]
    return "\n".join(rows) + "\n"


def to_json(transcript: Transcript, level: str) -> str:
    """The same at both levels: the segments carry their words."""
    return json.dumps(TranscriptJsonSerializer(transcript).data, ensure_ascii=False, indent=2)


RENDERERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv, "json": to_json}


def render(transcript: Transcript, fmt: str, level: str = "segment") -> str:
    return RENDERERS[fmt](transcript, level)
