"""Events are written with the change they describe and reach the streams exactly once."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_eventstream.models import Event

from tests.conftest import queued_run
from transcription.events import deliver_outbox, deliver_stranded_events, publish
from transcription.models import RunEventOutbox, TranscriptRun

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(alice) -> TranscriptRun:  # type: ignore[no-untyped-def]
    return TranscriptRun.objects.select_related("audio").get(pk=queued_run(alice.client)["runId"])


def stored(run: TranscriptRun, event: str) -> dict[str, int]:
    channels = [f"run-{run.pk}", f"user-{run.owner_id}", "runs"]
    return {c: Event.objects.filter(channel=c, type=event).count() for c in channels}


def test_an_event_is_stored_on_all_its_channels_once_the_change_commits(run):
    with transaction.atomic():
        publish(run, "done")
        assert stored(run, "done") == {f"run-{run.pk}": 0, f"user-{run.owner_id}": 0, "runs": 0}

    assert set(stored(run, "done").values()) == {1}
    assert not RunEventOutbox.objects.exists()


def test_a_rolled_back_change_leaves_no_event(run):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(run, "done")
        raise RuntimeError("the change failed")

    assert set(stored(run, "done").values()) == {0}
    assert not RunEventOutbox.objects.exists()


def test_events_of_a_process_that_died_after_its_commit_are_swept_exactly_once(run, monkeypatch):
    # The process commits the finished run, then dies before delivering its events.
    monkeypatch.setattr(transaction, "on_commit", lambda callback: None)
    with transaction.atomic():
        publish(run, "done")
    monkeypatch.undo()
    assert set(stored(run, "done").values()) == {0}

    assert deliver_stranded_events() == 0  # too fresh: its writer may still deliver it
    with time_machine.travel(timezone.now() + timedelta(seconds=6)):
        assert deliver_stranded_events() == 1
        assert deliver_stranded_events() == 0

    assert set(stored(run, "done").values()) == {1}


def test_delivery_is_exactly_once_when_writer_and_sweeper_race(run, monkeypatch):
    monkeypatch.setattr(transaction, "on_commit", lambda callback: None)
    with transaction.atomic():
        publish(run, "update")
        publish(run, "done")
    monkeypatch.undo()
    ids = list(RunEventOutbox.objects.values_list("pk", flat=True))

    assert deliver_outbox(ids) == 2
    assert deliver_outbox(ids) == 0
    assert deliver_outbox(older_than=timedelta(0)) == 0
    assert set(stored(run, "done").values()) == {1}
    run_events = Event.objects.filter(channel=f"run-{run.pk}").exclude(eid=0).order_by("eid")
    assert [e.type for e in run_events][-2:] == ["update", "done"]


def test_a_late_event_about_an_unfinished_state_is_dropped_once_the_run_finished(run, monkeypatch):
    monkeypatch.setattr(transaction, "on_commit", lambda callback: None)
    with transaction.atomic():
        publish(run, "update")  # queued; its writer dies before delivering it
    monkeypatch.undo()
    with transaction.atomic():
        TranscriptRun.objects.filter(pk=run.pk).update(status="cancelled")
        run.refresh_from_db()
        publish(run, "done")

    # The `done`'s delivery took its run's undelivered update first (events of a run reach
    # the streams in the order they were written) and dropped it: nothing is left to sweep.
    with time_machine.travel(timezone.now() + timedelta(seconds=6)):
        assert deliver_stranded_events() == 0

    run_events = Event.objects.filter(channel=f"run-{run.pk}").exclude(eid=0).order_by("eid")
    assert [e.type for e in run_events][-1] == "done"
    assert not RunEventOutbox.objects.exists()


def run_events(run: TranscriptRun) -> list[tuple[str, int]]:
    rows = Event.objects.filter(channel=f"run-{run.pk}").exclude(eid=0).order_by("eid")
    return [(e.type, json.loads(json.loads(e.data)).get("n", -1)) for e in rows]


def test_delivering_twenty_events_costs_the_statements_of_one(run, monkeypatch):
    def written(count: int) -> list[int]:
        monkeypatch.setattr(transaction, "on_commit", lambda callback: None)
        with transaction.atomic():
            for n in range(count):
                publish(run, "update", n=n)
        monkeypatch.undo()
        return list(RunEventOutbox.objects.values_list("pk", flat=True))

    publish(run, "update", n=-1)  # the channels' counters exist, as for any running job
    ids = written(1)
    with CaptureQueriesContext(connection) as one:
        deliver_outbox(ids)
    ids = written(20)
    with CaptureQueriesContext(connection) as twenty:
        deliver_outbox(ids)

    # A batch stores each channel's events with a fixed number of statements, not django-
    # eventstream's seven for every event on every channel (60 events here).
    assert len(twenty) == len(one)
    assert [n for _, n in run_events(run)][-21:] == [0, *range(20)]
    assert not RunEventOutbox.objects.exists()


def test_the_events_of_one_transaction_are_delivered_together_in_their_order(run):
    with transaction.atomic():
        for n in range(5):
            publish(run, "update", n=n)
        assert RunEventOutbox.objects.count() == 5

    assert [n for _, n in run_events(run)][-5:] == list(range(5))
    assert not RunEventOutbox.objects.exists()


def test_a_rolled_back_savepoint_takes_only_its_own_events_with_it(run):
    with transaction.atomic():
        publish(run, "update", n=1)
        with pytest.raises(RuntimeError), transaction.atomic():
            publish(run, "update", n=2)
            raise RuntimeError("this part failed")
        publish(run, "update", n=3)
        with transaction.atomic():
            publish(run, "update", n=4)
        publish(run, "update", n=5)

    assert [n for _, n in run_events(run)][-4:] == [1, 3, 4, 5]
    assert not RunEventOutbox.objects.exists()


def test_an_event_delivered_first_takes_its_run_s_earlier_undelivered_events_first(
    run, monkeypatch
):
    # Two processes write one run in turn (a run split into chunks): the first commits its
    # event and is slow to deliver it; the second commits and delivers at once.
    monkeypatch.setattr(transaction, "on_commit", lambda callback: None)
    with transaction.atomic():
        publish(run, "update", progress_mark="first")
    with transaction.atomic():
        publish(run, "update", progress_mark="second")
    monkeypatch.undo()
    first, second = RunEventOutbox.objects.order_by("pk")

    assert deliver_outbox([second.pk]) == 2
    assert deliver_outbox([first.pk]) == 0  # delivered already, by the second

    updates = Event.objects.filter(channel=f"run-{run.pk}", type="update").order_by("eid")
    data = [decoded(update.data) for update in updates]
    marks = [item["progress_mark"] for item in data if "progress_mark" in item]
    assert marks == ["first", "second"]


def decoded(data: object) -> dict:
    """A stored event's data (JSON text, within JSON text as the event table keeps it)."""
    while isinstance(data, str):
        data = json.loads(data)
    assert isinstance(data, dict)
    return data
