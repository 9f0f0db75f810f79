"""A small Server-Sent Events client for tests: reads a stream in a thread, keeps every event."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    name: str
    id: str | None
    data: dict[str, Any]


class EventStream:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.events: list[Event] = []
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.body = b""
        self.ended = threading.Event()
        self.connected = threading.Event()
        self._response: httpx.Response | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self.connected.wait(15):
            raise AssertionError(f"no answer from {url}")

    def _read(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                self._response = response
                self.status = response.status_code
                self.response_headers = response.headers
                self.connected.set()
                if response.status_code != 200:
                    self.body = response.read()
                    return
                self._parse(response)
        except (httpx.HTTPError, RuntimeError, ValueError):
            if not self._closing:
                raise
        finally:
            self.connected.set()
            self.ended.set()

    def _parse(self, response: httpx.Response) -> None:
        name, event_id, data = "message", None, []
        for line in response.iter_lines():
            if line == "":
                if data:
                    self.events.append(Event(name, event_id, json.loads("\n".join(data))))
                name, event_id, data = "message", None, []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    name = value
                elif field == "id":
                    event_id = value
                elif field == "data":
                    data.append(value)

    def names(self) -> list[str]:
        return [event.name for event in self.events]

    def wait_for(self, name: str, timeout: float = 30) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.name == name:
                    return event
            if self.ended.is_set():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} event within {timeout}s; got {self.names()}")

    def close(self) -> None:
        self._closing = True
        if self._response is not None:
            self._response.close()
        self._thread.join(timeout=5)
