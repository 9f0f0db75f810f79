"""The whole async path on real processes: web server, worker cluster, SSE client."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import JFK_REFERENCE, make_account, redis_reachable, words
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


def submit_async(base: str, token: str, path) -> httpx.Response:  # type: ignore[no-untyped-def]
    with path.open("rb") as handle:
        return httpx.post(
            f"{base}/api/transcribe",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": (path.name, handle, "audio/flac")},
            data={"mode": "async"},
            timeout=30,
        )


@pytest.mark.slow
@pytest.mark.parametrize("delivery", DELIVERY)
def test_async_run_streams_live_progress_from_a_real_worker(processes, jfk, delivery, monkeypatch):
    import os

    if not delivery:
        # The embedded default: events cross processes through the database alone.
        monkeypatch.delenv("REDIS_URL", raising=False)
    # With Redis, the database poller is pushed far out so only pub/sub can deliver in time.
    only_redis = {"EVENTS_DB_POLL_MS": "600000", "REDIS_SAFETY_POLL_MS": "600000"}
    env = {"REDIS_URL": os.environ["REDIS_URL"], **only_redis} if delivery else {}
    account = make_account("alice")
    base = processes.web(**env)

    response = submit_async(base, account.token, jfk)
    assert response.status_code == 202, response.text
    run = response.json()
    assert response.headers["Location"] == f"/api/runs/{run['runId']}"
    assert run["status"] == "queued" and run["queuePosition"] == 1

    # Connected before any worker exists, with the read-only events token.
    stream = EventStream(f"{base}{run['links']['events']}?access_token={run['eventsToken']}")
    try:
        assert stream.status == 200
        assert stream.response_headers["content-type"].startswith("text/event-stream")
        assert stream.response_headers["x-accel-buffering"] == "no"
        assert stream.response_headers["cache-control"] == "no-cache"
        stream.wait_for("init", timeout=10)

        processes.worker(**env)
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
    headers = {"Authorization": f"Bearer {account.token}"}
    fetched = httpx.get(f"{base}/api/runs/{run['runId']}", headers=headers).json()
    assert words(fetched["text"]) == words(JFK_REFERENCE)
    for fmt, marker in [("txt", "fellow"), ("srt", "-->"), ("vtt", "WEBVTT"), ("json", "segments")]:
        export = httpx.get(
            f"{base}/api/runs/{run['runId']}/transcript", params={"format": fmt}, headers=headers
        )
        assert export.status_code == 200 and marker in export.text


@pytest.mark.slow
def test_connecting_to_a_finished_run_gives_init_and_done_at_once(processes, jfk):
    account = make_account("alice")
    base = processes.web()
    processes.worker()
    run = submit_async(base, account.token, jfk).json()
    events_url = f"{base}{run['links']['events']}"
    headers = {"Authorization": f"Bearer {account.token}"}

    first = EventStream(events_url, headers=headers)
    first.wait_for("done", timeout=120)
    first.close()

    late = EventStream(events_url, headers=headers)
    late.ended.wait(10)
    late.close()

    assert late.names() == ["init", "done"]
    assert late.events[1].data["status"] == "succeeded"
    assert words(late.events[1].data["text"]) == words(JFK_REFERENCE)


@pytest.mark.slow
def test_reconnecting_with_last_event_id_replays_what_was_missed(processes, jfk):
    account = make_account("alice")
    base = processes.web()
    processes.worker()
    run = submit_async(base, account.token, jfk).json()
    events_url = f"{base}{run['links']['events']}"
    headers = {"Authorization": f"Bearer {account.token}"}
    whole = EventStream(events_url, headers=headers)
    whole.wait_for("done", timeout=120)
    whole.close()
    sent = [(e.id, e.name) for e in whole.events[1:]]

    resumed = EventStream(events_url, headers={**headers, "Last-Event-ID": whole.events[1].id})
    resumed.ended.wait(10)
    resumed.close()

    assert resumed.names()[0] == "init"
    assert [(e.id, e.name) for e in resumed.events[1:]] == sent[1:]
