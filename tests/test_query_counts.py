"""Answers about runs cost a fixed number of queries, however many runs they hold: queue
positions come from one window query per answer, not a count per run."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tasks_admin.models import Worker
from tests.test_queue_announcements import queued, recent_speed_is
from transcription.models import TranscriptRun

# Bearer token and its user; the page's count and rows, their jobs; the queue positions and
# live worker processes (recent speed is cached: known_speed); the owner's events token.
RUN_LIST_QUERIES = 7
# Token and user; the run, its jobs; positions, worker processes; the events token.
RUN_DETAIL_QUERIES = 6
# As the run, without the events token.
PROGRESS_QUERIES = 5
# Session and user; the stream's last event id; the page's count and rows.
RUNS_PAGE_QUERIES = 5


@pytest.fixture(autouse=True)
def known_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    recent_speed_is(monkeypatch, 1.0)


@pytest.fixture(autouse=True)
def queue_read_per_answer(settings) -> None:  # type: ignore[no-untyped-def]
    """The counts of an answer that reads the queue itself (QUEUE_SNAPSHOT_TTL_MS=0): with a
    recent read to reuse, it costs two queries less (tests/test_queue_snapshot.py)."""
    settings.QUEUE_SNAPSHOT_TTL_MS = 0


def queue_of(owner: Any, length: int) -> list[TranscriptRun]:
    Worker.objects.create(id="w1", host="box", pid=1, processes=1)
    return [queued(owner) for _ in range(length)]


@pytest.mark.parametrize("length", [1, 20])
@pytest.mark.django_db
def test_a_page_of_queued_runs_costs_the_same_queries_whatever_its_length(
    alice, django_assert_num_queries, length
):
    queue_of(alice.user, length)

    with django_assert_num_queries(RUN_LIST_QUERIES):
        page = alice.client.get("/api/runs").json()

    assert sorted(run["queuePosition"] for run in page["results"]) == list(range(1, length + 1))
    assert all(run["estimatedTimeRemaining"] is not None for run in page["results"])


@pytest.mark.parametrize("length", [1, 20])
@pytest.mark.django_db
def test_a_queued_run_and_its_progress_cost_the_same_queries_whatever_the_queue(
    alice, django_assert_num_queries, length
):
    last = queue_of(alice.user, length)[-1]

    with django_assert_num_queries(RUN_DETAIL_QUERIES):
        run = alice.client.get(f"/api/runs/{last.pk}").json()
    with django_assert_num_queries(PROGRESS_QUERIES):
        progress = alice.client.get(f"/api/runs/{last.pk}/progress").json()

    assert run["queuePosition"] == progress["queuePosition"] == length
    assert progress["estimatedTimeRemaining"] == 11 * length


@pytest.mark.parametrize("length", [1, 20])
@pytest.mark.django_db
def test_the_runs_page_costs_the_same_queries_whatever_its_length(
    alice, django_assert_num_queries, length
):
    queue_of(alice.user, length)
    browser = Client()
    browser.force_login(alice.user)

    with django_assert_num_queries(RUNS_PAGE_QUERIES):
        response = browser.get("/runs/")

    assert response.status_code == 200
    assert response.content.count(b"data-run-id=") == length
