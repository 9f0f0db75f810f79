"""Which runs a list shows: the runs page and `GET /api/runs` filter with the same function."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from transcription.models import RunStatus, TranscriptRun

SEARCH_MAX_LENGTH = 200
SEARCH_MAX_WORDS = 10


def search_words(q: str | None) -> list[str]:
    """The words of a search, at most SEARCH_MAX_WORDS of them from its first
    SEARCH_MAX_LENGTH characters."""
    return (q or "")[:SEARCH_MAX_LENGTH].split()[:SEARCH_MAX_WORDS]


def filter_runs(
    runs: QuerySet[TranscriptRun], *, status: str | None = None, q: str | None = None
) -> QuerySet[TranscriptRun]:
    """Only runs with this status (one of RunStatus; the caller checks it), and only runs
    whose file name or transcript contains every word of `q` (case-insensitive; the
    transcript as the model wrote it)."""
    if status:
        runs = runs.filter(status=status)
    for word in search_words(q):
        runs = runs.filter(Q(audio__original_filename__icontains=word) | Q(text__icontains=word))
    return runs


def valid_status(value: str | None) -> bool:
    return value in RunStatus.values
