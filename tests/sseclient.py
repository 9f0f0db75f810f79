"""A small Server-Sent Events client for tests: reads a stream in a thread, keeps every event.

It speaks HTTP through http.client so that `close()` can shut the socket down under the
reading thread: the connection really drops, as when a browser tab goes away.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Event:
    name: str
    id: str | None
    data: dict[str, Any]
    # When this client had read the whole event (time.time()), to compare with when it was made.
    received_at: float = 0.0


class EventStream:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.headers = {"Accept": "text/event-stream", **(headers or {})}
        self.events: list[Event] = []
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.body = b""
        self.ended = threading.Event()
        self._closing = False
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._connected.wait(15):
            raise AssertionError(f"no answer from {url}")

    def _read(self) -> None:
        try:
            self.connection.request("GET", self.path, headers=self.headers)
            response = self.connection.getresponse()
            self.status = response.status
            self.response_headers = {k.lower(): v for k, v in response.getheaders()}
            self._connected.set()
            if response.status != 200:
                self.body = response.read()
                return
            if self.connection.sock is not None:
                self.connection.sock.settimeout(None)  # an idle stream is not an error
            self._parse(response)
        except (OSError, http.client.HTTPException, ValueError):
            if not self._closing:
                raise
        finally:
            self._connected.set()
            self.ended.set()

    def _parse(self, response: http.client.HTTPResponse) -> None:
        name, event_id, data = "message", None, []
        while not self._closing:
            raw = response.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data and not self._closing:
                    self.events.append(
                        Event(name, event_id, json.loads("\n".join(data)), time.time())
                    )
                name, event_id, data = "message", None, []
            elif not line.startswith(":"):
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
        """Drop the connection now; no event is recorded after this returns."""
        self._closing = True
        sock = self.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self.connection.close()
