"""The event hub: the one door to django-eventstream.

django-eventstream stores each event (DjangoModelStorage: a counter per channel, ids that grow
by one) and keeps, per process, a registry of listeners that an event wakes. The hub uses both
and adds what they lack (DESIGN.md, "Events", items 1 to 3):

* Delivery of events stored by *another* process when there is no Redis: one poller per web
  process reads the event counters of the channels someone watches, and fans new events out
  to the local listeners. With Redis it runs too, slower, as a safety net for pub/sub
  messages lost while Redis was away.
* No lost event at connect: a subscription starts from an id read before the caller's
  snapshot, reads the stored events after that id, and keeps its own last id, so each event
  is delivered once and in order, whichever path brought it.
* No pinned database connection: every read runs in a pool thread that closes its
  connection afterwards, so an idle stream holds none.
* Publishing that survives Redis going away: django-eventstream's `send_event` retries a dead
  Redis for seconds on every event, which stalls the job that sends it. Here a failed publish
  opens a breaker for a few seconds; the event is stored either way, and the database poller
  delivers it.

The hub knows nothing about runs: a channel is a string, an event's data is JSON text. The
rest of the project speaks to it through `store`, `announce`, `current_id`, `events_after`,
`Subscription`, `payload`, `encode` and `db_call`. Each django-eventstream internal it relies
on is reached through one small function in the next section, and each has a contract test
(tests/test_eventhub_contract.py), so that an upgrade that moves or changes one fails a test
instead of silently changing behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django_eventstream import views as eventstream_views
from django_eventstream.event import Event
from django_eventstream.storage import DjangoModelStorage, EventDoesNotExist

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StoredEvent(Protocol):
    """An event as django-eventstream hands it over: `data` is the JSON text it was stored
    with (`payload` reads it)."""

    channel: str
    type: str
    data: Any
    id: int | None


# --- django-eventstream internals, one function each ------------------------------------

# Events per listener that django-eventstream queues between two wake-ups before it marks
# the listener overflowed, which costs the stream a database read. Its own 10 is less than a
# burst (queue positions announced to a user channel).
MAX_PENDING = 200

# The pub/sub channel and message keys of django-eventstream's own Redis publisher and
# subscriber (eventstream.send_event, views.RedisListener): the hub speaks the same protocol.
REDIS_PUBSUB_CHANNEL = "events_channel"

_storage = DjangoModelStorage()


def _set_max_pending(limit: int) -> None:
    """`ListenerManager.add_to_queues` reads the module global `views.MAX_PENDING` on every
    event; there is no setting for it."""
    eventstream_views.MAX_PENDING = limit


def _listener_manager() -> Any:
    """The process's listener registry: `lock`, `add_listener`, `remove_listener`,
    `add_to_queues`."""
    return eventstream_views.get_listener_manager()


def _new_listener(channel: str) -> Any:
    """A listener for one channel, bound to the running event loop (the registry wakes it
    with a thread-safe call into that loop)."""
    listener = eventstream_views.Listener()
    listener.channels = {channel}
    listener.assign_loop()
    return listener


def _take_pending(listener: Any, channel: str) -> tuple[list[StoredEvent], bool]:
    """Empty the listener's queue: the events it holds for `channel`, and whether some did
    not fit (overflow). Under the registry's lock and in the order django-eventstream's own
    stream uses, so an event queued meanwhile wakes the listener again."""
    with _listener_manager().lock:
        items = listener.channel_items.pop(channel, [])
        overflow = bool(listener.overflow)
        listener.channel_items = {}
        listener.overflow = False
        listener.aevent.clear()
    return items, overflow


async def _woken(listener: Any, timeout: float) -> bool:
    """Wait until the registry queues something for the listener, or `timeout` seconds."""
    try:
        await asyncio.wait_for(listener.aevent.wait(), timeout)
        return True
    except TimeoutError:
        return False


def _make_event(channel: str, event_type: str, data: str, event_id: int) -> StoredEvent:
    return Event(channel, event_type, data, id=event_id)  # type: ignore[no-any-return]


def _ensure_counter(channel: str) -> None:
    """django-eventstream creates a channel's counter on first use and, when another process
    created it first, recovers from the IntegrityError without a savepoint, which aborts a
    PostgreSQL transaction. Django's get_or_create uses one."""
    from django_eventstream.models import EventCounter

    EventCounter.objects.get_or_create(name=channel)


def _counter_values(names: list[str]) -> dict[str, int]:
    """The current event id of each named channel that has one."""
    from django_eventstream.models import EventCounter

    rows = EventCounter.objects.filter(name__in=names).values_list("name", "value")
    return {name: int(value) for name, value in rows}


# --- Storage ------------------------------------------------------------------------------

# Stored events read at once (at connect, after an overflow, by the poller).
EVENTS_PAGE = 200


def store(channel: str, event_type: str, text: str) -> StoredEvent:
    """Append an event (its data already JSON text) to a channel's stored events; it gets
    the channel's next id. Call `announce` with the result once the transaction commits."""
    _ensure_counter(channel)
    return _storage.append_event(channel, event_type, text)  # type: ignore[no-any-return]


def current_id(channel: str) -> int:
    """The id of the channel's newest stored event (0 for a channel that has none)."""
    return int(_storage.get_current_id(channel))


def events_after(
    channel: str, last_id: int, limit: int = EVENTS_PAGE
) -> tuple[list[StoredEvent], int | None]:
    """Up to `limit` stored events after `last_id`, and None; or [] and the current id when
    `last_id` is no longer stored (too old, or never was)."""
    try:
        return _storage.get_events(channel, last_id, limit=limit), None
    except EventDoesNotExist as exc:
        return [], int(exc.current_id)


def payload(stored: StoredEvent) -> dict[str, Any]:
    """The data of a stored or published event: django-eventstream keeps it as JSON text."""
    data = stored.data
    if isinstance(data, str):
        data = json.loads(data)
    return data  # type: ignore[no-any-return]


def encode(event: str, data: dict[str, Any], event_id: int | None) -> str:
    """One Server-Sent Event."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


async def db_call(fn: Callable[..., T], *args: Any) -> T:
    """Run a database function off the event loop and give its connection back at once."""

    def call() -> T:
        try:
            return fn(*args)
        finally:
            connections.close_all()

    return await sync_to_async(call, thread_sensitive=False)()


# --- Delivery -----------------------------------------------------------------------------


def announce(stored: StoredEvent) -> None:
    """Bring a stored event to listeners: over Redis to every web process when configured and
    up, else to this process's own listeners (other processes' pollers read it from the
    database)."""
    if getattr(settings, "EVENTS_REDIS", None) and _publisher.publish(stored):
        return
    _deliver_here(stored)


def _deliver_here(event: StoredEvent) -> None:
    """Hand an event to this process's listeners, and tell the poller it has been delivered,
    so the poller never sends it again (which would overflow every listener's queue)."""
    _poller.delivered(event.channel, int(event.id or 0))
    _listener_manager().add_to_queues(event.channel, event)


def _redis_message(stored: StoredEvent) -> str:
    return json.dumps(
        {
            "channel": stored.channel,
            "event_type": stored.type,
            "data": stored.data,
            "pub_id": str(stored.id),
        }
    )


def _event_from_redis_message(raw: bytes | str) -> StoredEvent:
    item = json.loads(raw)
    return _make_event(item["channel"], item["event_type"], item["data"], int(item["pub_id"]))


class Subscription:
    """One stream's subscription to one channel from an event id, delivering each later
    event once and in order:

        async with Subscription(channel, last_id) as subscription:
            pending = await subscription.catch_up()
            while True:
                ...  # send `pending`
                await subscription.wait(heartbeat)
                pending = await subscription.next_events()
    """

    def __init__(self, channel: str, last_id: int) -> None:
        self.channel = channel
        self.last_id = last_id
        self._listener: Any = None

    async def __aenter__(self) -> Subscription:
        self._listener = _new_listener(self.channel)
        _listener_manager().add_listener(self._listener)
        _poller.watch(self.channel, self.last_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        _listener_manager().remove_listener(self._listener)
        _poller.unwatch(self.channel)

    async def wait(self, timeout: float) -> bool:
        """Sleep until something arrives for this channel, or `timeout` seconds pass."""
        return await _woken(self._listener, timeout)

    async def next_events(self) -> list[tuple[int, StoredEvent]]:
        """The events after `last_id`, in order: from memory when contiguous, else storage."""
        items, overflow = _take_pending(self._listener, self.channel)
        fresh: list[tuple[int, StoredEvent]] = []
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

    async def catch_up(self) -> list[tuple[int, StoredEvent]]:
        """Everything stored after `last_id` (used at connect and whenever memory has a gap)."""
        events, reset_to = await db_call(events_after, self.channel, self.last_id)
        if reset_to is not None:
            # Too old to replay: the caller has just sent a fresh snapshot; carry on from now.
            self.last_id = reset_to
            return []
        out = [(int(e.id or 0), e) for e in events]
        if out:
            self.last_id = out[-1][0]
            if len(out) >= EVENTS_PAGE:
                out.extend(await self.catch_up())
        return out


# --- Redis --------------------------------------------------------------------------------

REDIS_BREAKER_SECONDS = 5.0
# An idle subscriber pings Redis this often, and gives the connection up when a ping goes
# unanswered for as long.
REDIS_PING_SECONDS = 5.0
REDIS_CLIENT_NAME_PREFIX = "lingoloop-events-"


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

    def publish(self, stored: StoredEvent) -> bool:
        if time.monotonic() < self._open_until:
            return False
        try:
            self._redis().publish(REDIS_PUBSUB_CHANNEL, _redis_message(stored))
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


class RedisSubscriber:
    """Receives events published by any process over Redis and hands them to this process's
    listeners. Reconnects by itself (with backoff) when Redis goes away and comes back.

    It waits for messages with `get_message(timeout=…)`, never `listen()`: redis-py 5.x reads a
    blocking pub/sub message with the connection's `socket_timeout` (the command timeout in
    EVENTS_REDIS), so an idle subscriber timed out every few seconds, reconnected, and
    events published in the gap waited for the safety poll (DESIGN.md, "Events", item 13).
    An idle round pings instead, and a ping left unanswered gives the connection up, so a
    Redis that hangs or vanishes without closing the connection is still noticed.
    """

    def __init__(self) -> None:
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if not getattr(settings, "EVENTS_REDIS", None):
            return
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        from redis.asyncio import Redis

        backoff = 0.5
        while True:
            # Named, so that `CLIENT LIST` shows which web process holds each subscription.
            options: dict[str, Any] = {
                **settings.EVENTS_REDIS,
                "client_name": f"{REDIS_CLIENT_NAME_PREFIX}{os.getpid()}",
            }
            client = Redis(**options)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(REDIS_PUBSUB_CHANNEL)
                    self.connected, backoff = True, 0.5
                    await self._receive(pubsub)
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

    async def _receive(self, pubsub: Any) -> None:
        """Deliver messages until the connection fails or stops answering pings."""
        ping_unanswered = False
        while True:
            message = await pubsub.get_message(timeout=REDIS_PING_SECONDS)
            if message is None:
                if ping_unanswered:
                    raise ConnectionError(f"no answer to PING in {REDIS_PING_SECONDS:.0f} s")
                await pubsub.ping()
                ping_unanswered = True
                continue
            ping_unanswered = False  # anything read (a message, a pong) proves Redis is there
            if message.get("type") == "message":
                _deliver_here(_event_from_redis_message(message["data"]))


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
        _subscriber.ensure_running()
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
                if _subscriber.connected
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
        manager = _listener_manager()
        for channel, (events, reset_to) in fresh.items():
            if channel not in self.known:
                continue
            for event in events:
                manager.add_to_queues(channel, event)
            newest = int(events[-1].id or 0) if events else reset_to
            if newest is not None:
                self.known[channel] = max(self.known[channel], newest)


def _new_events(known: dict[str, int]) -> dict[str, tuple[list[StoredEvent], int | None]]:
    """The events stored after the known id of each channel that has newer ones."""
    out: dict[str, tuple[list[StoredEvent], int | None]] = {}
    names = list(known)
    for start in range(0, len(names), 500):
        for name, value in _counter_values(names[start : start + 500]).items():
            if value > known[name]:
                out[name] = events_after(name, known[name])
    return out


_set_max_pending(MAX_PENDING)
_publisher = RedisPublisher()
_subscriber = RedisSubscriber()
_poller = DatabasePoller()
