"""Server-Sent Events plumbing over django-eventstream's storage and listeners.

django-eventstream stores each event (DjangoModelStorage) and wakes listeners in the process
that sent it, or in every process when Redis is configured. What it does not do, and this
module adds (DESIGN.md, "Events", items 1 to 3):

* Delivery of events stored by *another* process when there is no Redis: one poller per web
  process reads the event counters of the channels someone watches, and fans new events out
  to the local listeners. With Redis it runs too, slower, as a safety net for pub/sub
  messages lost while Redis was away.
* No lost event at connect: a stream reads its starting id before its snapshot, then reads
  the stored events after that id, and keeps per-channel ids so that each event is delivered
  once and in order, whichever path brought it.
* No pinned database connection: every read runs in a pool thread that closes its
  connection afterwards, so an idle stream holds none.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django_eventstream.storage import DjangoModelStorage, EventDoesNotExist
from django_eventstream.views import Listener, get_listener_manager

logger = logging.getLogger(__name__)

T = TypeVar("T")

_storage = DjangoModelStorage()


async def db_call(fn: Callable[..., T], *args: Any) -> T:
    """Run a database function off the event loop and give its connection back at once."""

    def call() -> T:
        try:
            return fn(*args)
        finally:
            connections.close_all()

    return await sync_to_async(call, thread_sensitive=False)()


def current_event_id(channel: str) -> int:
    return int(_storage.get_current_id(channel))


def stored_events_after(
    channel: str, last_id: int, limit: int = 200
) -> tuple[list[Any], int | None]:
    """Events after `last_id`, and None; or [] and the current id when `last_id` is gone."""
    try:
        return _storage.get_events(channel, last_id, limit=limit), None
    except EventDoesNotExist as exc:
        return [], int(exc.current_id)


def encode(event: str, data: dict[str, Any], event_id: int | None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


def event_payload(stored: Any) -> dict[str, Any]:
    """The data of a stored or published event: django-eventstream keeps it as JSON text."""
    data = stored.data
    if isinstance(data, str):
        data = json.loads(data)
    return data  # type: ignore[no-any-return]


class Watch:
    """One stream's subscription to one channel, delivering each event once and in order."""

    def __init__(self, channel: str, last_id: int) -> None:
        self.channel = channel
        self.last_id = last_id
        self.listener = Listener()
        self.listener.channels = {channel}

    async def __aenter__(self) -> Watch:
        self.listener.assign_loop()
        get_listener_manager().add_listener(self.listener)
        poller.watch(self.channel, self.last_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        get_listener_manager().remove_listener(self.listener)
        poller.unwatch(self.channel)

    async def wait(self, timeout: float) -> bool:
        """Sleep until something arrives for this channel, or `timeout` seconds pass."""
        try:
            await asyncio.wait_for(self.listener.aevent.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def next_events(self) -> list[tuple[int, Any]]:
        """The events after `last_id`, in order: from memory when contiguous, else storage."""
        manager = get_listener_manager()
        with manager.lock:
            items = self.listener.channel_items.pop(self.channel, [])
            overflow = self.listener.overflow
            self.listener.channel_items = {}
            self.listener.overflow = False
            self.listener.aevent.clear()

        fresh: list[tuple[int, Any]] = []
        expected = self.last_id + 1
        for item in sorted(items, key=lambda e: int(e.id or 0)):
            event_id = int(item.id or 0)
            if event_id < expected:
                continue  # already delivered (two paths brought it)
            if event_id > expected:
                overflow = True  # a gap: something went missing in memory
                break
            fresh.append((event_id, item))
            expected += 1
        if overflow:
            return await self.catch_up()
        if fresh:
            self.last_id = fresh[-1][0]
        return fresh

    async def catch_up(self) -> list[tuple[int, Any]]:
        """Everything stored after `last_id` (used at connect and whenever memory has a gap)."""
        events, reset_to = await db_call(stored_events_after, self.channel, self.last_id)
        if reset_to is not None:
            # Too old to replay: the caller has just sent a fresh snapshot; carry on from now.
            self.last_id = reset_to
            return []
        out = [(int(e.id), e) for e in events]
        if out:
            self.last_id = out[-1][0]
            if len(out) >= 200:
                out.extend(await self.catch_up())
        return out


class DatabasePoller:
    """Brings events stored by other processes to this process's listeners."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}
        self.watchers: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None

    def watch(self, channel: str, since: int) -> None:
        self.watchers[channel] = self.watchers.get(channel, 0) + 1
        self.known[channel] = min(self.known.get(channel, since), since)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    def unwatch(self, channel: str) -> None:
        count = self.watchers.get(channel, 0) - 1
        if count <= 0:
            self.watchers.pop(channel, None)
            self.known.pop(channel, None)
        else:
            self.watchers[channel] = count

    async def run(self) -> None:
        interval = settings.EVENTS_DB_POLL_MS / 1000
        while self.watchers:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:
                logger.exception("event poller failed; retrying")

    async def poll_once(self) -> None:
        known = dict(self.known)
        if not known:
            return
        fresh = await db_call(_new_events, known)
        manager = get_listener_manager()
        for channel, (events, reset_to) in fresh.items():
            if channel not in self.known:
                continue
            for event in events:
                manager.add_to_queues(channel, event)
            newest = int(events[-1].id) if events else reset_to
            if newest is not None:
                self.known[channel] = max(self.known[channel], newest)


def _new_events(known: dict[str, int]) -> dict[str, tuple[list[Any], int | None]]:
    from django_eventstream.models import EventCounter

    out: dict[str, tuple[list[Any], int | None]] = {}
    names = list(known)
    for start in range(0, len(names), 500):
        counters = EventCounter.objects.filter(name__in=names[start : start + 500]).values_list(
            "name", "value"
        )
        for name, value in counters:
            if value > known[name]:
                out[name] = stored_events_after(name, known[name])
    return out


poller = DatabasePoller()
