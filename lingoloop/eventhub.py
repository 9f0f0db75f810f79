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
* Few database connections, whatever the number of streams: every read runs in one of
  DB_THREADS threads, each keeping its connection while work keeps coming and closing it
  when idle, so an idle stream holds none and a busy process at most DB_THREADS.
* Cheap fan-out: reads that many streams ask for at once (an opening, a catch-up) are handed
  to one thread call together (`db_batch`), so a thousand streams that connect or fall behind
  at once cost a few reads, not a thousand; an event is encoded once for all its streams.
* Publishing that survives Redis going away: django-eventstream's `send_event` retries a dead
  Redis for seconds on every event, which stalls the job that sends it. Here a failed publish
  opens a breaker for a few seconds; the event is stored either way, and the database poller
  delivers it.

The hub knows nothing about runs: a channel is a string, an event's data is JSON text. The
rest of the project speaks to it through `store`, `store_many`, `announce`, `current_id`,
`events_after`, `Subscription`, `payload`, `encode`, `encode_stored`, `db_call` and
`db_batch`. Each django-eventstream internal it relies on is reached through one small
function in the next section, and each has a contract test (tests/test_eventhub_contract.py),
so that an upgrade that moves or changes one fails a test instead of silently changing
behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connections, transaction
from django_eventstream import views as eventstream_views
from django_eventstream.event import Event
from django_eventstream.storage import DjangoModelStorage, EventDoesNotExist

from lingoloop.database import CommitMark, committed_since, sqlite_commit_mark

logger = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")


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

# The message keys of django-eventstream's own Redis publisher and subscriber
# (eventstream.send_event, views.RedisListener): the hub speaks the same protocol, on a
# channel of its own (settings.EVENTS_REDIS_CHANNEL), not eventstream's fixed
# "events_channel": pub/sub ignores Redis's database numbers, so two installations on one
# Redis would otherwise hear each other's events (users with the same id, the same channels).
DJANGO_EVENTSTREAM_CHANNEL = "events_channel"


def redis_channel() -> str:
    return str(settings.EVENTS_REDIS_CHANNEL)


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


async def _woken(listener: Any, timeout: float | None) -> bool:
    """Wait until the registry queues something for the listener, or `timeout` seconds."""
    return await _set_within(listener.aevent, timeout)


async def _set_within(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set, or `timeout` seconds. asyncio.timeout, not wait_for:
    wait_for wraps the wait in a task of its own, a cost paid by every stream for every
    event."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


def _make_event(channel: str, event_type: str, data: str, event_id: int) -> StoredEvent:
    return Event(channel, event_type, data, id=event_id)  # type: ignore[no-any-return]


def _locked_counter(channel: str) -> Any:
    """A channel's event counter, created on first use and locked until the transaction ends.
    django-eventstream creates one and, when another process created it first, recovers from
    the IntegrityError without a savepoint, which aborts a PostgreSQL transaction; Django's
    get_or_create uses one."""
    from django_eventstream.models import EventCounter

    return EventCounter.objects.select_for_update().get_or_create(name=channel)[0]


def _event_rows(channel: str, first_id: int, events: Sequence[tuple[str, str]]) -> list[Any]:
    """django-eventstream's rows of `events` (type, JSON text) numbered from `first_id`, as
    its Event.save writes them: the data JSON-encoded again, and before a new channel's
    first event a placeholder numbered 0, which lets a stream start "after 0"."""
    from django_eventstream.models import Event as EventRow

    rows = [EventRow(channel=channel)] if first_id == 1 else []
    rows += [
        EventRow(
            channel=channel, type=event_type, data=json.dumps(text, cls=DjangoJSONEncoder), eid=eid
        )
        for eid, (event_type, text) in enumerate(events, start=first_id)
    ]
    return rows


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
    return store_many([(channel, event_type, text)])[0]


def store_many(items: Sequence[tuple[str, str, str]]) -> list[StoredEvent]:
    """Append many events at once, each (channel, event type, data as JSON text), as `store`
    would one by one: each channel's in the order given, with its next ids. Inside a
    transaction, the counters it moved stay locked until the commit.

    django-eventstream's own `append_event` costs seven statements an event (the counter read
    twice, locked and written, the row, a pass of its trimming); this costs three a channel,
    one insert for all and one trimming pass.
    """
    from django_eventstream.models import Event as EventRow

    by_channel: dict[str, list[int]] = {}
    for index, (channel, _, _) in enumerate(items):
        by_channel.setdefault(channel, []).append(index)
    stored: list[StoredEvent | None] = [None] * len(items)
    rows: list[Any] = []
    with transaction.atomic(savepoint=False):
        # Every batch locks counters in one order, so that two of them cannot deadlock.
        for channel in sorted(by_channel):
            counter = _locked_counter(channel)
            first_id = counter.value + 1
            indexes = by_channel[channel]
            rows += _event_rows(channel, first_id, [items[i][1:] for i in indexes])
            for eid, index in enumerate(indexes, start=first_id):
                stored[index] = _make_event(channel, items[index][1], items[index][2], eid)
            counter.value = first_id + len(indexes) - 1
            counter.save(update_fields=["value", "updated"])
        EventRow.objects.bulk_create(rows)
        if items:
            _storage.trim_event_log()
    return stored  # type: ignore[return-value]  # every index was filled


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


def encode_stored(stored: StoredEvent) -> str:
    """A stored or published event as one Server-Sent Event. Its data is sent as the JSON
    text it was stored with, not decoded and encoded again for each of its streams (a
    thousand streams of one run cost a thousand encodings per event otherwise)."""
    data = stored.data
    if not isinstance(data, str) or "\n" in data or "\r" in data:
        return encode(stored.type, payload(stored), stored.id)
    return f"event: {stored.type}\nid: {stored.id}\ndata: {data}\n\n"


# --- Database threads ---------------------------------------------------------------------

# The hub's reads run in this many threads. Each keeps its database connection while work
# keeps coming, so a burst of streams does not open and close a connection per read (that
# was most of a stream's connect); this is also the most connections the hub holds.
DB_THREADS = 3
# A thread closes its connection after this long without work, so a quiet process holds
# none (and a test database can be dropped soon after its last stream).
DB_IDLE_SECONDS = 1.0

Batch = Callable[[list[Item]], Sequence[T | Exception]]


class _Call(Generic[Item, T]):
    """Work for a database thread: `fn` over the items of every caller that joined before a
    thread took it, each caller answered with its item's result (an Exception is raised)."""

    def __init__(self, fn: Batch[Item, T], loop: asyncio.AbstractEventLoop | None) -> None:
        self.fn = fn
        self.loop = loop
        self.items: list[Item] = []
        self.futures: list[asyncio.Future[T]] = []

    def join(self, item: Item) -> asyncio.Future[T]:
        assert self.loop is not None
        future: asyncio.Future[T] = self.loop.create_future()
        self.items.append(item)
        self.futures.append(future)
        return future

    def run(self) -> None:
        results: Sequence[T | Exception]
        try:
            results = self.fn(self.items)
        except Exception as exc:
            if isinstance(exc, DatabaseError):
                connections.close_all()  # it may be the connection that broke
            results = [exc] * len(self.items)
        if self.loop is None:
            return  # nobody waits for an answer
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
            self.loop.call_soon_threadsafe(self._answer, results)

    def _answer(self, results: Sequence[T | Exception]) -> None:
        for future, result in zip(self.futures, results, strict=True):
            if future.done():
                continue  # its caller was cancelled (the client went away)
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class DatabaseThreads:
    """A fixed pool of threads for the hub's database work, with keep-alive connections and
    batching: callers of `batch` with the same function join the call that is still waiting
    for a thread. A call a thread has taken is never joined, so a caller's read always
    starts after the caller asked for it (a subscription relies on that: see `catch_up`)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: queue.SimpleQueue[_Call[Any, Any]] = queue.SimpleQueue()
        self._waiting: dict[tuple[Any, asyncio.AbstractEventLoop | None], _Call[Any, Any]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    async def batch(self, fn: Batch[Item, T], item: Item) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            call = self._waiting.get((fn, loop))
            if call is None:
                call = self._waiting[(fn, loop)] = self._submit(fn, loop)
            future = call.join(item)
        return await future

    async def one(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            call: _Call[None, T] = self._submit(lambda items: [fn()], loop)
            future = call.join(None)
        return await future

    def close_connections(self) -> None:
        """Have every thread close its connection now, without waiting DB_IDLE_SECONDS (a
        test database is about to be dropped)."""
        barrier = threading.Barrier(len(self._threads) + 1)

        def close(items: list[None]) -> list[Exception | None]:
            connections.close_all()
            barrier.wait(5)  # so that each thread takes one of these calls
            return list(items)

        for _ in self._threads:
            self._queue.put(_Call(close, None))
        with contextlib.suppress(threading.BrokenBarrierError):  # a thread busy for 5 s
            barrier.wait(5)

    def _submit(self, fn: Batch[Item, T], loop: asyncio.AbstractEventLoop | None) -> _Call[Item, T]:
        call = _Call(fn, loop)
        self._queue.put(call)
        while len(self._threads) < self._size:
            thread = threading.Thread(target=self._work, name="eventhub-db", daemon=True)
            self._threads.append(thread)
            thread.start()
        return call

    def _work(self) -> None:
        while True:
            try:
                call = self._queue.get(timeout=DB_IDLE_SECONDS)
            except queue.Empty:
                connections.close_all()
                continue
            with self._lock:
                key = (call.fn, call.loop)
                if self._waiting.get(key) is call:
                    del self._waiting[key]
            call.run()


_db_threads = DatabaseThreads(DB_THREADS)


async def db_call(fn: Callable[..., T], *args: Any) -> T:
    """Run a database function in one of the hub's database threads, off the event loop."""
    return await _db_threads.one(lambda: fn(*args))


def close_connections() -> None:
    """Close the database threads' connections now (see DatabaseThreads)."""
    _db_threads.close_connections()


async def db_batch(fn: Batch[Item, T], item: Item) -> T:
    """Run `fn([item, ...])` in a database thread together with the items of other callers of
    `fn` that are still waiting for a thread, and return this item's result. `fn` reads what
    its items share once (a run's snapshot for all its watchers); an Exception in its answer
    is raised to that item's caller."""
    return await _db_threads.batch(fn, item)


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


class _Tap:
    """This process's subscriptions to one channel, behind one django-eventstream listener.

    django-eventstream wakes each of its listeners with `call_soon_threadsafe`, a write to
    the event loop's wake-up pipe: with a listener per stream, a thousand writes per event
    (measured: a sixth of the web process's CPU while it fanned an event out to 1,000
    streams). A tap is woken once per burst and hands the events to its subscriptions
    inside the loop."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.subscriptions: set[Subscription] = set()
        self.listener = _new_listener(channel)
        _listener_manager().add_listener(self.listener)
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        while True:
            await _woken(self.listener, None)
            items, overflow = _take_pending(self.listener, self.channel)
            for subscription in self.subscriptions:
                subscription.receive(items, overflow)

    def close(self) -> None:
        self.task.cancel()
        _listener_manager().remove_listener(self.listener)


_taps: dict[tuple[str, asyncio.AbstractEventLoop], _Tap] = {}


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
        self._pending: list[StoredEvent] = []
        self._overflow = False
        self._arrived = asyncio.Event()
        self._tap: _Tap | None = None

    async def __aenter__(self) -> Subscription:
        key = (self.channel, asyncio.get_running_loop())
        if key not in _taps:
            _taps[key] = _Tap(self.channel)
        self._tap = _taps[key]
        self._tap.subscriptions.add(self)
        _poller.watch(self.channel, self.last_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tap is not None
        self._tap.subscriptions.discard(self)
        if not self._tap.subscriptions:
            self._tap.close()
            _taps.pop((self.channel, asyncio.get_running_loop()), None)
        _poller.unwatch(self.channel)

    def receive(self, items: list[StoredEvent], overflow: bool) -> None:
        """Events its tap took for it; past MAX_PENDING waiting, it will read storage."""
        if overflow or len(self._pending) + len(items) > MAX_PENDING:
            self._overflow = True
        else:
            self._pending.extend(items)
        self._arrived.set()

    async def wait(self, timeout: float) -> bool:
        """Sleep until something arrives for this channel, or `timeout` seconds pass."""
        return await _set_within(self._arrived, timeout)

    async def next_events(self) -> list[tuple[int, StoredEvent]]:
        """The events after `last_id`, in order: from memory when contiguous, else storage."""
        items, overflow = self._pending, self._overflow
        self._pending, self._overflow = [], False
        self._arrived.clear()
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
        # Batched with the catch-ups of other streams: a thousand streams that connect or
        # overflow at once read each (channel, id) once. A batch starts after its callers
        # joined it, so this read starts after the listener was registered: an event is in
        # the read, or in memory, or both (never neither).
        events, reset_to = await db_batch(_events_after_each, (self.channel, self.last_id))
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
            self._redis().publish(redis_channel(), _redis_message(stored))
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
                    await pubsub.subscribe(redis_channel())
                    self.connected, backoff = True, 0.5
                    # One read now: what was stored between the last poll and the
                    # subscription was published to nobody.
                    _poller.wake()
                    await self._receive(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    logger.warning("lost Redis (%s); reading events from the database", exc)
            finally:
                if self.connected:
                    # The poller slept for REDIS_SAFETY_POLL_MS: from now on it is the
                    # delivery path, at once (measured: with Redis killed, no event reached
                    # a stream until that sleep ended).
                    _poller.wake()
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
        self.woken: asyncio.Event | None = None

    def wake(self) -> None:
        """Poll now, not at the end of the current interval (Redis just went or came)."""
        if self.woken is not None:
            self.woken.set()

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
        self.woken = woken = asyncio.Event()
        failing = False
        while self.watchers:
            interval = (
                settings.REDIS_SAFETY_POLL_MS
                if _subscriber.connected
                else settings.EVENTS_DB_POLL_MS
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), interval / 1000)
            woken.clear()
            try:
                await self.poll_once()
            except Exception:
                # Once an outage (the database restarting): not a traceback every poll.
                if not failing:
                    logger.exception("event poller failed; retrying")
                failing = True
            else:
                if failing:
                    logger.info("event poller reads events again")
                failing = False

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


def _events_after_each(
    wanted: list[tuple[str, int]],
) -> list[tuple[list[StoredEvent], int | None]]:
    """`events_after` for each (channel, last id), reading each distinct one once."""
    read: dict[tuple[str, int], tuple[list[StoredEvent], int | None]] = {}
    for key in wanted:
        if key not in read:
            read[key] = events_after(*key)
    return [read[key] for key in wanted]


# A poll that SQLite says nothing was committed for still reads at least this often: a commit
# made on the poll's own connection (none is, today) is not one that PRAGMA data_version counts.
UNCHANGED_READ_SECONDS = 1.0


class _LastRead(threading.local):
    """What this database thread's last read of the counters was made at."""

    mark: CommitMark | None = None
    known: dict[str, int] | None = None
    at = 0.0


_last_read = _LastRead()


def _new_events(known: dict[str, int]) -> dict[str, tuple[list[StoredEvent], int | None]]:
    """The events stored after the known id of each channel that has newer ones.

    On SQLite, nothing when no other connection has committed since this thread last read
    the same channels from the same ids (`committed_since`): the poll runs every
    EVENTS_DB_POLL_MS in every web process that has a stream open, and its read cost a
    millisecond or more of Python each time (a web process following a run shared by two
    worker clusters used 1.6 CPU-s of the run's 29 s; now 1.0, where Redis takes 0.5)."""
    now = time.monotonic()
    if (
        _last_read.mark is not None  # kept on SQLite only
        and now - _last_read.at < UNCHANGED_READ_SECONDS
        and _last_read.known == known
        and not committed_since(_last_read.mark)
    ):
        return {}
    mark = sqlite_commit_mark()  # before the read: a commit during it is seen by the next poll
    out: dict[str, tuple[list[StoredEvent], int | None]] = {}
    names = list(known)
    for start in range(0, len(names), 500):
        for name, value in _counter_values(names[start : start + 500]).items():
            if value > known[name]:
                out[name] = events_after(name, known[name])
    if mark is not None:  # elsewhere nothing tells a poll it may skip: no copy to keep
        _last_read.mark, _last_read.known, _last_read.at = mark, dict(known), now
    return out


_set_max_pending(MAX_PENDING)
_publisher = RedisPublisher()
_subscriber = RedisSubscriber()
_poller = DatabasePoller()
