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
* Publishing that survives Redis going away (`send`): django-eventstream's `send_event`
  retries a dead Redis for seconds on every event, which stalls the job that sends it. Here
  a failed publish opens a breaker for a few seconds; the event is stored either way, and the
  database poller delivers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django_eventstream import views as eventstream_views
from django_eventstream.storage import DjangoModelStorage, EventDoesNotExist
from django_eventstream.views import Listener, get_listener_manager

logger = logging.getLogger(__name__)

T = TypeVar("T")

_storage = DjangoModelStorage()

# django-eventstream queues at most MAX_PENDING events per listener between two wake-ups and
# marks it overflowed past that, which costs the stream a database read. 10 is less than a
# burst (queue positions announced to a user channel), so allow more.
eventstream_views.MAX_PENDING = 200

# The pub/sub channel every web process subscribes to (django-eventstream's name for it).
REDIS_PUBSUB_CHANNEL = "events_channel"
REDIS_BREAKER_SECONDS = 5.0


class RedisPublisher:
    """Publishes stored events with no retries and a breaker, so a dead Redis costs one
    refused connection every few seconds instead of seconds of retries per event."""

    def __init__(self) -> None:
        self._client: Any = None
        self._open_until = 0.0
        self._lock = threading.Lock()

    def _redis(self) -> Any:
        if self._client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            options: dict[str, Any] = {**settings.EVENTS_REDIS, "socket_connect_timeout": 1}
            self._client = redis.Redis(**options, retry=Retry(NoBackoff(), 0))
        return self._client

    def publish(self, channel: str, event_type: str, data: str, event_id: int) -> bool:
        if time.monotonic() < self._open_until:
            return False
        message = {
            "channel": channel,
            "event_type": event_type,
            "data": data,
            "pub_id": str(event_id),
        }
        try:
            self._redis().publish(REDIS_PUBSUB_CHANNEL, json.dumps(message))
            return True
        except Exception as exc:
            with self._lock:
                if time.monotonic() >= self._open_until:
                    logger.warning(
                        "Redis publish failed (%s); events go through the database for %.0f s",
                        exc,
                        REDIS_BREAKER_SECONDS,
                    )
                self._open_until = time.monotonic() + REDIS_BREAKER_SECONDS
            return False


_publisher = RedisPublisher()


def store(channel: str, event_type: str, text: str) -> Any:
    """Append an event (its data already JSON) to a channel's stored events; the event gets
    the channel's next id."""
    from django_eventstream.models import EventCounter

    # django-eventstream creates a channel's counter on first use and, when another process
    # created it first, recovers from the IntegrityError without a savepoint, which aborts a
    # PostgreSQL transaction. Django's get_or_create uses one.
    EventCounter.objects.get_or_create(name=channel)
    return _storage.append_event(channel, event_type, text)


def announce(stored: Any) -> None:
    """Bring a stored event to listeners: over Redis to every web process when configured and
    up, else to this process's own listeners (other processes' pollers read it from the
    database)."""
    if getattr(settings, "EVENTS_REDIS", None) and _publisher.publish(
        stored.channel, stored.type, stored.data, stored.id
    ):
        return
    dispatch(stored.channel, stored)


def send(channel: str, event_type: str, data: dict[str, Any]) -> int:
    """Store an event and announce it at once. Returns the event id."""
    stored = store(channel, event_type, json.dumps(data, cls=DjangoJSONEncoder))
    announce(stored)
    return int(stored.id)


def dispatch(channel: str, event: Any) -> None:
    """Hand an event to this process's listeners, and tell the poller it has been delivered,
    so the poller never sends it again (which would overflow every listener's queue)."""
    poller.delivered(channel, int(event.id))
    get_listener_manager().add_to_queues(channel, event)


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


class RedisSubscriber:
    """Receives events published by any process over Redis and hands them to this process's
    listeners. Reconnects by itself (with backoff) when Redis goes away and comes back."""

    def __init__(self) -> None:
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if not getattr(settings, "EVENTS_REDIS", None):
            return
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        from django_eventstream.event import Event
        from redis.asyncio import Redis

        backoff = 0.5
        while True:
            options: dict[str, Any] = settings.EVENTS_REDIS
            client = Redis(**options)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(REDIS_PUBSUB_CHANNEL)
                    self.connected, backoff = True, 0.5
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        item = json.loads(message["data"])
                        event = Event(
                            item["channel"], item["event_type"], item["data"], id=item["pub_id"]
                        )
                        dispatch(item["channel"], event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    logger.warning("lost Redis (%s); reading events from the database", exc)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


class DatabasePoller:
    """Brings events stored by other processes to this process's listeners.

    Without Redis it is the delivery path (every EVENTS_DB_POLL_MS); with Redis connected it
    only checks now and then (REDIS_SAFETY_POLL_MS) for anything pub/sub lost.
    """

    def __init__(self) -> None:
        self.known: dict[str, int] = {}
        self.watchers: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None

    def watch(self, channel: str, since: int) -> None:
        self.watchers[channel] = self.watchers.get(channel, 0) + 1
        self.known[channel] = min(self.known.get(channel, since), since)
        subscriber.ensure_running()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    def delivered(self, channel: str, event_id: int) -> None:
        """Another path (Redis, this process) delivered `event_id`: poll from after it."""
        if channel in self.known:
            self.known[channel] = max(self.known[channel], event_id)

    def unwatch(self, channel: str) -> None:
        count = self.watchers.get(channel, 0) - 1
        if count <= 0:
            self.watchers.pop(channel, None)
            self.known.pop(channel, None)
        else:
            self.watchers[channel] = count

    async def run(self) -> None:
        while self.watchers:
            interval = (
                settings.REDIS_SAFETY_POLL_MS
                if subscriber.connected
                else settings.EVENTS_DB_POLL_MS
            )
            await asyncio.sleep(interval / 1000)
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


subscriber = RedisSubscriber()
poller = DatabasePoller()
