"""One run followed to its end: over its event stream, resumed where it broke off, or by
polling its progress when no stream can be had.

The stream's events are `init` (the state on every connect), `update` (with `newSegments`),
`error` (a failed attempt) and `done`. A dropped connection is opened again with the
`Last-Event-ID` of the last event seen, so the server sends what was missed; segments are kept
by `id`, so a segment sent twice (an event replayed across a reconnect) is shown once, and they
are handed on in order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from lingoloop.client.api import Api, ClientError, StreamUnavailable, check

FINISHED = ("succeeded", "failed", "cancelled")
# Heartbeats come every 15 s by default: a minute of silence is a dead connection.
READ_TIMEOUT = 60.0
# After this many failed connects in a row, the stream is given up for polling.
STREAM_ATTEMPTS = 5
POLL_SECONDS = 1.0


@dataclass
class RunState:
    """What is known of one run, as its events tell it."""

    run_id: str
    status: str = "queued"
    progress: float = 0.0
    queue_position: int | None = None
    eta: float | None = None
    error: str | None = None
    segments: dict[int, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    live: bool = True  # False once following fell back to polling
    last_event_id: str | None = None  # where a new connection takes up the stream

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def apply(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """Take in a progress object (an event's data or a poll's answer); the segments it
        brought that were not known yet, in order."""
        self.data = {**self.data, **data}
        self.status = str(data.get("status") or self.status)
        if isinstance(data.get("progress"), int | float):
            # Never backwards within an attempt; a new attempt starts again from its own.
            self.progress = float(data["progress"])
        self.queue_position = data.get("queuePosition")
        eta = data.get("estimatedTimeRemaining")
        self.eta = float(eta) if isinstance(eta, int | float) else None
        error = data.get("error")
        self.error = str(error.get("message")) if isinstance(error, dict) else None
        fresh = []
        for segment in data.get("newSegments") or data.get("segments") or []:
            if not isinstance(segment, dict) or not isinstance(segment.get("id"), int):
                continue
            if segment["id"] not in self.segments:
                self.segments[segment["id"]] = segment
                fresh.append(segment)
        return sorted(fresh, key=lambda s: s["id"])


def follow(
    api: Api,
    state: RunState,
    on_change: Callable[[RunState, list[dict[str, Any]]], None],
    *,
    stop: threading.Event | None = None,
) -> RunState:
    """Follow `state`'s run until it has finished (or `stop` is set); `on_change` gets the
    state and the new segments after every event."""
    stop = stop or threading.Event()
    failures = 0
    connections = 0  # more than one: a stream broke and was taken up again
    while not stop.is_set() and not state.finished:
        try:
            connections += 1
            _read_stream(api, state, on_change, stop)
            failures = 0
        except StreamUnavailable:
            _poll(api, state, on_change, stop)
            break
        except (httpx.TransportError, SSEError, ClientError) as error:
            if isinstance(error, ClientError) and not (error.status or 0) >= 500:
                raise  # refused (401, 404…): asking again will not help
            failures += 1
            if failures >= STREAM_ATTEMPTS:
                _poll(api, state, on_change, stop)  # its errors are the caller's
                break
            stop.wait(min(0.25 * 2**failures, 5.0))
    if connections > 1 and state.status == "succeeded":
        # A stream taken up again after the run finished starts at its end (`init`, `done`):
        # the segments sent while it was away come from the finished run instead.
        with contextlib.suppress(ClientError):  # the end is known; this only fills gaps
            fresh = state.apply({"segments": api.run(state.run_id).get("segments") or []})
            if fresh:
                on_change(state, fresh)
    return state


def _read_stream(
    api: Api,
    state: RunState,
    on_change: Callable[[RunState, list[dict[str, Any]]], None],
    stop: threading.Event,
) -> None:
    """Read the run's stream until `done`; the id of each event is kept as it arrives, so a
    connection that breaks is taken up after the last event handled."""
    headers = {"Last-Event-ID": state.last_event_id} if state.last_event_id else {}
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
    with connect_sse(
        api.http, "GET", f"/api/runs/{state.run_id}/events", headers=headers, timeout=timeout
    ) as source:
        check(source.response)  # a refusal (401, 404…) is an error, not a reason to retry
        if "text/event-stream" not in source.response.headers.get("content-type", ""):
            raise StreamUnavailable("The server's event stream is not an event stream here.")
        for event in source.iter_sse():
            if event.event in ("init", "update", "error", "done"):
                try:
                    data = event.json()
                except ValueError:
                    continue
                if isinstance(data, dict):
                    fresh = state.apply(data) if event.event != "error" else []
                    if event.event == "error":
                        _note_failed_attempt(state, data)
                    on_change(state, fresh)
            if event.id:
                state.last_event_id = event.id  # handled: a reconnect starts after it
            if event.event == "done" or state.finished or stop.is_set():
                break


def _note_failed_attempt(state: RunState, data: dict[str, Any]) -> None:
    error = data.get("error")
    if isinstance(error, dict) and error.get("message"):
        state.error = str(error["message"])


def _poll(
    api: Api,
    state: RunState,
    on_change: Callable[[RunState, list[dict[str, Any]]], None],
    stop: threading.Event,
) -> None:
    """The fallback: the progress object every POLL_SECONDS, then the whole run once it has
    finished (for its segments)."""
    state.live = False
    while not stop.is_set():
        on_change(state, state.apply(api.progress(state.run_id)))
        if state.finished:
            break
        stop.wait(POLL_SECONDS)
    if state.finished:
        on_change(state, state.apply(api.run(state.run_id)))


__all__ = ["FINISHED", "ClientError", "RunState", "follow"]
