"""What lingoloop/eventhub.py relies on in django-eventstream, exercised through the hub's own
small functions, so that an upgrade that moves or changes one of them fails here instead of
silently changing how events are delivered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.db import transaction
from django_eventstream import eventstream, views

from lingoloop import eventhub

CHANNEL = "contract"


def _queue(channel: str, event_id: int) -> None:
    event = eventhub._make_event(channel, "update", json.dumps({"n": event_id}), event_id)
    eventhub._listener_manager().add_to_queues(channel, event)


def _with_listener(check: Any) -> None:
    """Run `check(listener)` inside an event loop, with a listener registered on CHANNEL."""

    async def main() -> None:
        listener = eventhub._new_listener(CHANNEL)
        eventhub._listener_manager().add_listener(listener)
        try:
            check(listener)
        finally:
            eventhub._listener_manager().remove_listener(listener)

    asyncio.run(main())


def test_max_pending_is_what_caps_a_listeners_queue():
    # Fails when `views.MAX_PENDING` is no longer the name add_to_queues reads (say views.py
    # became a package): the queue would overflow at django-eventstream's own 10.
    def check(listener: Any) -> None:
        for event_id in range(1, eventhub.MAX_PENDING + 1):
            _queue(CHANNEL, event_id)
        items, overflow = eventhub._take_pending(listener, CHANNEL)
        assert [e.id for e in items] == list(range(1, eventhub.MAX_PENDING + 1))
        assert not overflow

        for event_id in range(1, eventhub.MAX_PENDING + 2):
            _queue(CHANNEL, event_id)
        items, overflow = eventhub._take_pending(listener, CHANNEL)
        assert len(items) == eventhub.MAX_PENDING
        assert overflow

    assert views.MAX_PENDING == eventhub.MAX_PENDING
    _with_listener(check)


def test_a_queued_event_wakes_its_channels_listeners_until_taken():
    def check(listener: Any) -> None:
        assert listener.loop is asyncio.get_running_loop()  # assign_loop binds the running loop
        _queue("another-channel", 1)
        assert listener.channel_items == {}
        _queue(CHANNEL, 1)
        assert [e.id for e in listener.channel_items[CHANNEL]] == [1]

        items, overflow = eventhub._take_pending(listener, CHANNEL)
        assert [e.id for e in items] == [1] and not overflow
        assert listener.channel_items == {} and not listener.aevent.is_set()

    async def woken_by_a_thread() -> bool:
        # add_to_queues may run in any thread (a poller's, a request's); the wake-up is a
        # thread-safe call into the listener's loop.
        listener = eventhub._new_listener(CHANNEL)
        eventhub._listener_manager().add_listener(listener)
        try:
            await asyncio.to_thread(_queue, CHANNEL, 7)
            return await eventhub._woken(listener, 5)
        finally:
            eventhub._listener_manager().remove_listener(listener)

    _with_listener(check)
    assert asyncio.run(woken_by_a_thread())


def test_a_removed_listener_gets_nothing():
    async def main() -> Any:
        listener = eventhub._new_listener(CHANNEL)
        manager = eventhub._listener_manager()
        manager.add_listener(listener)
        manager.remove_listener(listener)
        _queue(CHANNEL, 1)
        return listener

    listener = asyncio.run(main())
    assert listener.channel_items == {} and not listener.aevent.is_set()
    assert CHANNEL not in eventhub._listener_manager().listeners_by_channel


@pytest.mark.django_db(transaction=True)
def test_storage_numbers_a_channels_events_and_reads_them_after_an_id():
    assert eventhub.current_id(CHANNEL) == 0
    assert eventhub.events_after(CHANNEL, 0) == ([], None)

    with transaction.atomic():  # the outbox stores inside its transaction
        stored = [eventhub.store(CHANNEL, "update", json.dumps({"n": n})) for n in range(3)]
    assert [(e.channel, e.type, e.id) for e in stored] == [
        (CHANNEL, "update", n) for n in (1, 2, 3)
    ]
    assert eventhub.payload(stored[0]) == {"n": 0}

    assert eventhub.current_id(CHANNEL) == 3
    assert eventhub._counter_values([CHANNEL, "no-such-channel"]) == {CHANNEL: 3}
    events, reset_to = eventhub.events_after(CHANNEL, 1)
    assert reset_to is None
    assert [(e.id, e.type, eventhub.payload(e)) for e in events] == [
        (2, "update", {"n": 1}),
        (3, "update", {"n": 2}),
    ]
    from_start, _ = eventhub.events_after(CHANNEL, 0, limit=1)
    assert [e.id for e in from_start] == [1]  # 0 is the placeholder, readable "after"
    assert eventhub.events_after(CHANNEL, 3) == ([], None)


@pytest.mark.django_db(transaction=True)
def test_a_batch_numbers_each_channel_in_order_as_django_eventstream_does():
    other = CHANNEL + "-other"
    items = [(CHANNEL, "update", '{"n": 0}'), (other, "update", '{"n": 1}')]
    items += [(CHANNEL, "done", '{"n": 2}')]
    stored = eventhub.store_many(items)
    assert [(e.channel, e.type, e.id, e.data) for e in stored] == [
        (CHANNEL, "update", 1, '{"n": 0}'),
        (other, "update", 1, '{"n": 1}'),
        (CHANNEL, "done", 2, '{"n": 2}'),
    ]
    # django-eventstream's own writer and reader agree with the batch's rows and counters.
    storage = eventhub._storage
    assert storage.append_event(CHANNEL, "update", '{"n": 3}').id == 3
    assert eventhub.store(CHANNEL, "update", '{"n": 4}').id == 4
    assert storage.get_current_id(CHANNEL) == 4 and storage.get_current_id(other) == 1
    assert [(e.id, e.type, e.data) for e in storage.get_events(CHANNEL, 0)] == [
        (1, "update", '{"n": 0}'),
        (2, "done", '{"n": 2}'),
        (3, "update", '{"n": 3}'),
        (4, "update", '{"n": 4}'),
    ]
    assert eventhub.store_many([]) == []


@pytest.mark.django_db(transaction=True)
def test_an_id_that_is_not_stored_answers_the_current_id():
    for _ in range(2):
        eventhub.store(CHANNEL, "update", "{}")
    # EventDoesNotExist.current_id: a client's Last-Event-ID from another database, or trimmed.
    assert eventhub.events_after(CHANNEL, 99) == ([], 2)


@pytest.mark.django_db(transaction=True)
def test_a_counter_that_exists_already_is_reused():
    with transaction.atomic():
        eventhub._locked_counter(CHANNEL)
    with transaction.atomic():
        eventhub._locked_counter(CHANNEL)
    assert eventhub._counter_values([CHANNEL]) == {CHANNEL: 0}
    assert eventhub.store(CHANNEL, "update", "{}").id == 1


def test_an_event_carries_what_it_was_made_with():
    event = eventhub._make_event(CHANNEL, "done", '{"a": 1}', 5)
    assert (event.channel, event.type, event.data, event.id) == (CHANNEL, "done", '{"a": 1}', 5)


class _Publisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []

    def publish(self, channel: str, message: str) -> None:
        self.published.append((channel, message))


@pytest.mark.django_db(transaction=True)
def test_the_hub_reads_what_django_eventstreams_publisher_sends(monkeypatch):
    publisher = _Publisher()
    monkeypatch.setattr(eventstream, "redis_client", publisher)
    eventstream.send_event(CHANNEL, "update", {"n": 1})

    [(redis_channel, message)] = publisher.published
    assert redis_channel == eventhub.DJANGO_EVENTSTREAM_CHANNEL  # the format is the contract
    event = eventhub._event_from_redis_message(message)
    assert (event.channel, event.type, event.id) == (CHANNEL, "update", 1)
    assert eventhub.payload(event) == {"n": 1}


class _PubSub:
    """Hands django-eventstream's subscriber one message, as Redis would."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.subscribed: list[str] = []

    async def subscribe(self, channel: str) -> None:
        self.subscribed.append(channel)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "message", "data": self.message.encode()}


def test_django_eventstreams_subscriber_reads_what_the_hub_publishes():
    sent = eventhub._make_event(CHANNEL, "update", '{"n": 1}', 4)
    pubsub = _PubSub(eventhub._redis_message(sent))
    subscriber = object.__new__(views.RedisListener)  # its __init__ connects to Redis
    subscriber.pubsub = pubsub

    async def main() -> list[Any]:
        listener = eventhub._new_listener(CHANNEL)
        eventhub._listener_manager().add_listener(listener)
        try:
            await subscriber.listen()
            items, _ = eventhub._take_pending(listener, CHANNEL)
            return items
        finally:
            eventhub._listener_manager().remove_listener(listener)

    [received] = asyncio.run(main())
    assert pubsub.subscribed == [
        eventhub.DJANGO_EVENTSTREAM_CHANNEL
    ]  # its own; the format is shared
    assert (received.channel, received.type, received.data) == (CHANNEL, "update", '{"n": 1}')
    assert int(received.id) == 4
