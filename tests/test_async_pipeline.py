"""The whole async path on real processes: web server, worker cluster, SSE client."""

from __future__ import annotations

import pytest

from tests.conftest import JFK_REFERENCE, Service, redis_reachable, words
from tests.sseclient import EventStream
from transcription.models import TranscriptRun

DELIVERY = [
    pytest.param({}, id="embedded-database"),
    pytest.param(
        {"redis": True},
        id="redis",
        marks=pytest.mark.skipif(
            not redis_reachable(), reason="REDIS_URL is not set or Redis is not reachable"
        ),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("delivery", DELIVERY)
def test_async_run_streams_live_progress_from_a_real_worker(service, jfk, delivery, monkeypatch):
    import os

    if not delivery:
        # The embedded default: events cross processes through the database alone.
        monkeypatch.delenv("REDIS_URL", raising=False)
    # With Redis, the database poller is pushed far out so only pub/sub can deliver in time.
    only_redis = {"EVENTS_DB_POLL_MS": "600000", "REDIS_SAFETY_POLL_MS": "600000"}
    env = {"REDIS_URL": os.environ["REDIS_URL"], **only_redis} if delivery else {}
    service.start_web(**env)

    response = service.post(jfk, mode="async")
    assert response.status_code == 202, response.text
    run = response.json()
    assert response.headers["Location"] == f"/api/runs/{run['runId']}"
    assert run["status"] == "queued" and run["queuePosition"] == 1

    # Connected before any worker exists, with the read-only events token.
    stream = service.events(run)
    try:
        assert stream.status == 200
        assert stream.response_headers["content-type"].startswith("text/event-stream")
        assert stream.response_headers["x-accel-buffering"] == "no"
        assert stream.response_headers["cache-control"] == "no-cache"
        stream.wait_for("init", timeout=10)

        service.worker(**env)
        done = stream.wait_for("done", timeout=120)
    finally:
        stream.close()

    names = stream.names()
    assert names[0] == "init"
    assert names[-1] == "done"
    assert stream.events[0].data["status"] == "queued"
    updates = [e for e in stream.events if e.name == "update"]
    assert updates, names
    progress = [e.data["progress"] for e in updates]
    assert progress == sorted(progress) and progress[-1] == 100.0
    assert any(0 < p < 100 for p in progress) or len(progress) >= 2
    # Each event carries an id, and ids rise.
    ids = [int(e.id) for e in stream.events if e.id is not None]
    assert len(ids) == len(stream.events)
    assert ids[1:] == sorted(ids[1:]) and len(set(ids[1:])) == len(ids) - 1
    # The transcript arrives with `done` and grew through the updates' newSegments.
    assert done.data["status"] == "succeeded"
    assert words(done.data["text"]) == words(JFK_REFERENCE)
    grown = " ".join(s["text"] for e in updates for s in e.data.get("newSegments", []))
    assert words(grown) == words(JFK_REFERENCE)

    stored = TranscriptRun.objects.get(pk=run["runId"])
    assert stored.status == "succeeded" and stored.mode == "async"
    assert stored.jobs.get().attempts == 1

    # The same result through the API, with every export format.
    fetched = service.api("GET", f"/api/runs/{run['runId']}").json()
    assert words(fetched["text"]) == words(JFK_REFERENCE)
    for fmt, marker in [("txt", "fellow"), ("srt", "-->"), ("vtt", "WEBVTT"), ("json", "segments")]:
        export = service.api("GET", f"/api/runs/{run['runId']}/transcript", params={"format": fmt})
        assert export.status_code == 200 and marker in export.text


def watched_to_the_end(service: Service) -> tuple[str, dict[str, str], EventStream]:
    """A run that a real worker finished while a client (a script, its API token in a header)
    watched the whole stream: the stream's URL, the headers, and the closed stream."""
    base = service.start_web()
    service.worker()
    run = service.submit()
    events_url = f"{base}{run['links']['events']}"
    headers = {"Authorization": f"Bearer {service.account.token}"}
    whole = EventStream(events_url, headers=headers)
    whole.wait_for("done", timeout=120)
    whole.close()
    return events_url, headers, whole


@pytest.mark.slow
def test_connecting_to_a_finished_run_gives_init_and_done_at_once(service):
    events_url, headers, _ = watched_to_the_end(service)

    late = EventStream(events_url, headers=headers)
    late.ended.wait(10)
    late.close()

    assert late.names() == ["init", "done"]
    assert late.events[1].data["status"] == "succeeded"
    assert words(late.events[1].data["text"]) == words(JFK_REFERENCE)


@pytest.mark.slow
def test_reconnecting_with_last_event_id_replays_what_was_missed(service):
    events_url, headers, whole = watched_to_the_end(service)
    sent = [(e.id, e.name) for e in whole.events[1:]]

    resumed = EventStream(events_url, headers={**headers, "Last-Event-ID": whole.events[1].id})
    resumed.ended.wait(10)
    resumed.close()

    assert resumed.names()[0] == "init"
    assert [(e.id, e.name) for e in resumed.events[1:]] == sent[1:]
