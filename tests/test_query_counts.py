"""Answers about runs cost a fixed number of queries, however many runs they hold: queue
positions come from one window query per answer, not a count per run."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import set_script_prefix

from tasks_admin.models import Worker
from tests.test_queue_announcements import queued, recent_speed_is
from transcription import representations
from transcription.models import TranscriptRun
from transcription.representations import RunUrlField, progress_object

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


@pytest.mark.django_db
def test_the_progress_object_of_a_run_read_without_its_jobs_reads_them_once(
    alice, django_assert_num_queries
):
    """What an event about a run costs inside the transaction that changes it (an upload's,
    a job start's): its jobs once, not once for each field that shows them."""
    run = queue_of(alice.user, 3)[-1]
    bare = TranscriptRun.objects.select_related("audio").get(pk=run.pk)

    # Its jobs; the queue positions and the live worker processes.
    with django_assert_num_queries(3):
        data = progress_object(bare)

    job = run.jobs.get()
    assert data["queuePosition"] == 3
    assert (data["attempts"], data["maxAttempts"]) == (0, job.max_attempts)
    assert [item["id"] for item in data["jobs"]] == [str(job.pk)]


@pytest.mark.django_db
def test_a_page_of_runs_resolves_each_kind_of_link_once_whatever_its_length(alice, monkeypatch):
    runs = queue_of(alice.user, 20)
    real_reverse = representations.reverse
    resolved: list[str] = []

    def counting_reverse(view_name: str, *args: Any, **kwargs: Any) -> str:
        resolved.append(view_name)
        return real_reverse(view_name, *args, **kwargs)

    monkeypatch.setattr(representations, "reverse", counting_reverse)
    monkeypatch.setattr(RunUrlField, "_paths", {})

    page = alice.client.get("/api/runs").json()

    assert sorted(resolved) == ["run-detail", "run-events", "run-transcript"]
    assert {run["links"]["self"] for run in page["results"]} == {f"/api/runs/{r.pk}" for r in runs}
    assert {run["links"]["events"] for run in page["results"]} == {
        f"/api/runs/{r.pk}/events" for r in runs
    }


@pytest.mark.django_db
def test_run_links_follow_the_script_prefix_the_service_is_mounted_under(alice, monkeypatch):
    run = queue_of(alice.user, 1)[0]
    monkeypatch.setattr(RunUrlField, "_paths", {})
    assert progress_object(run)["links"]["self"] == f"/api/runs/{run.pk}"

    set_script_prefix("/speech/")
    try:
        links = progress_object(run)["links"]
    finally:
        set_script_prefix("/")

    assert links == {
        "self": f"/speech/api/runs/{run.pk}",
        "events": f"/speech/api/runs/{run.pk}/events",
        "transcript": f"/speech/api/runs/{run.pk}/transcript",
    }
