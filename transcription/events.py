"""Run events: how they are published (their `data` is the progress object of
transcription/representations.py), and the queue-position announcements.

Every event goes to three django-eventstream channels: the run's own, its owner's and the
staff-wide one. An event is written to an outbox in the transaction that makes the change it
describes and moved into the streams' storage right after the commit (DESIGN.md, item 5: no
event describes a state the database does not have), exactly once, even if the process dies
in between (a worker cluster sweeps what a dead process left). Publishing to Redis comes last
and may fail without harm: web processes also read stored events from the database.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Subquery
from django.utils import timezone

from lingoloop import metrics
from lingoloop.eventhub import announce, store_many
from lingoloop.timefmt import iso_utc
from transcription.models import (
    TERMINAL_RUN_STATUSES,
    QueueSnapshot,
    RunEventOutbox,
    RunStatus,
    TranscriptRun,
)
from transcription.representations import progress_object, with_relations
from transcription.signals import run_finished

logger = logging.getLogger(__name__)

ALL_RUNS_CHANNEL = "runs"


def run_channel(run_id: object) -> str:
    return f"run-{run_id}"


def user_channel(user_id: object) -> str:
    return f"user-{user_id}"


def publish(
    run: TranscriptRun,
    event: str,
    *,
    queue: QueueSnapshot | None = None,
    channels: tuple[str, ...] | None = None,
    **extra: Any,
) -> None:
    """Record `event` for `run` in the current transaction; deliver it once that commits.

    Call it inside the transaction that makes the change it describes: the event is written
    to the outbox with the change, so it exists exactly when the change does, even if this
    process dies right after the commit. The payload is built now, from the state this
    transaction sees. `queue`: the queue as the caller read it already, covering `run`.
    """
    data = progress_object(run, queue=queue)
    data.update(extra)
    data["event"] = event
    if channels is None:
        channels = (run_channel(run.id), user_channel(run.owner_id), ALL_RUNS_CHANNEL)
    row = RunEventOutbox.objects.create(
        run_id=run.id,
        event=event,
        channels=list(channels),
        data=json.dumps(data, cls=DjangoJSONEncoder),
    )
    _deliver_on_commit(row.pk)


def publish_finished(run: TranscriptRun, **extra: Any) -> None:
    """`run` ended (succeeded, failed or cancelled): its `done` event, and the `run_finished`
    signal to the apps that act on it (webhooks). Call it as `publish`, inside the
    transaction that records the end."""
    publish(run, "done", **extra)
    run_finished.send(sender=TranscriptRun, run=run)


def publish_attempt_error(
    run: TranscriptRun, *, attempt: int, code: str, message: str, retry_at: datetime | None
) -> None:
    """An attempt at `run` failed: an `error` event saying whether (`retry_at`: when) it will
    be tried again. Call it as `publish`, inside the transaction that records the failure."""
    publish(
        run,
        "error",
        attempt=attempt,
        willRetry=retry_at is not None,
        retryAt=iso_utc(retry_at),
        error={"code": code, "message": message},
    )


class _Delivery:
    """The outbox rows of one transaction (or savepoint), delivered together on its commit."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def __call__(self) -> None:
        deliver_outbox(self.ids)


def _deliver_on_commit(pk: int) -> None:
    """Deliver outbox row `pk` once the current transaction commits, with the rows published
    before it in the same transaction: a job's `update` and `done`, or a queue announcement's
    fifty updates, are stored in one go. A row joins the delivery registered last only when
    that one belongs to the same savepoint: Django drops the callbacks of a savepoint that
    rolls back, which must not take rows of the outer transaction with them."""
    connection = transaction.get_connection()
    pending = connection.run_on_commit[-1] if connection.run_on_commit else None
    if (
        pending
        and isinstance(pending[1], _Delivery)
        and pending[0] == set(connection.savepoint_ids)
    ):
        pending[1].ids.append(pk)
        return
    delivery = _Delivery()
    delivery.ids.append(pk)
    transaction.on_commit(delivery)


# Outbox rows delivered in one transaction: a queue announcement's fifty runs at most.
DELIVERY_BATCH = 100


def deliver_outbox(ids: list[int] | None = None, *, older_than: timedelta | None = None) -> int:
    """Move outbox rows into the event streams, each exactly once, oldest first; then announce
    them. `ids`: the rows a transaction just committed. `older_than`: the sweep for rows left
    by a process that died before delivering them. Never raises: a job must not fail because
    an event could not be delivered now (the sweep will).

    Rows go DELIVERY_BATCH to a transaction, each taken under a row lock (PostgreSQL; SQLite
    has one writer at a time), stored on all their channels and deleted before the commit.

    `ids` also takes the rows of the same runs committed before them and not delivered yet,
    waiting for a deliverer that holds one: a run split into chunks is written by several
    processes, one after the other under the run's row lock, and each delivers after its
    commit; without this, a process that committed second could store its event first, and
    a client would see progress go back or segments out of order. The sweep skips locked
    rows instead: they are being delivered.
    """
    rows = RunEventOutbox.objects.order_by("pk")
    if ids is not None:
        if not ids:
            return 0
        runs = RunEventOutbox.objects.filter(pk__in=ids).values("run_id")
        rows = rows.filter(run_id__in=Subquery(runs), pk__lte=max(ids))
    if older_than is not None:
        rows = rows.filter(created_at__lt=timezone.now() - older_than)
    pks = list(rows.values_list("pk", flat=True)[:1000])
    delivered = 0
    for start in range(0, len(pks), DELIVERY_BATCH):
        batch = pks[start : start + DELIVERY_BATCH]
        try:
            with transaction.atomic():
                taken = list(
                    RunEventOutbox.objects.select_for_update(skip_locked=ids is None)
                    .filter(pk__in=batch)
                    .order_by("pk")
                )
                overtaken = _overtaken(taken)
                stored = store_many(
                    [
                        (channel, row.event, row.data)
                        for row in taken
                        if row.pk not in overtaken
                        for channel in row.channels
                    ]
                )
                RunEventOutbox.objects.filter(pk__in=[row.pk for row in taken]).delete()
        except Exception:
            logger.warning("could not deliver events %s yet", batch, exc_info=True)
            metrics.event_delivery_failed()
            continue
        for event in stored:
            try:
                announce(event)
            except Exception:
                logger.warning("could not announce event %s", event.id, exc_info=True)
        delivered += len(taken)
        metrics.events_delivered(len(taken) - len(overtaken), overtaken=len(overtaken))
    return delivered


def _overtaken(rows: list[RunEventOutbox]) -> set[int]:
    """The late events among `rows` (their writer was slow or died) that describe an
    unfinished run which has finished since: storing one now would put a stale state after
    the run's `done`."""
    late = {
        row.pk: row.run_id
        for row in rows
        if row.event != "done" and json.loads(row.data).get("status") not in TERMINAL_RUN_STATUSES
    }
    if not late:
        return set()
    finished = set(
        TranscriptRun.objects.filter(
            pk__in=set(late.values()), status__in=TERMINAL_RUN_STATUSES
        ).values_list("pk", flat=True)
    )
    return {pk for pk, run_id in late.items() if run_id in finished}


def deliver_stranded_events() -> int:
    """Housekeeping: deliver outbox rows a process committed but died before delivering."""
    return deliver_outbox(older_than=timedelta(seconds=5))


# Each move of the queue re-announces the places of the runs among this many jobs at its head,
# on their own and their owner's streams (not the staff-wide one); runs further back learn
# theirs as they come within reach, or from GET /progress. (A soak run showed announcing 100
# runs on all three channels made queue positions 95% of all events.)
QUEUE_ANNOUNCE_LIMIT = 50


def announce_queue_positions() -> None:
    """The queue moved (a job started, was cancelled, jumped ahead): once the current
    transaction commits, send each queued run at the head of the queue an `update` with its
    new `queuePosition`.

    After the commit, not inside it: the pass reads and writes up to QUEUE_ANNOUNCE_LIMIT runs,
    which must not lengthen the transaction of every job start (on SQLite, the write lock is
    held until the commit). And once per transaction: many moves (a batch of cancels) make
    one pass, which reads the queue as the last of them left it.

    A sync run's job is in nobody's way (it is not counted in queue positions): its moves
    need no announcing, and callers do not announce them.
    """
    if _announcement_pending():
        return
    transaction.on_commit(_request_pass, robust=True)


def _announcement_pending() -> bool:
    """Whether a pass is already waiting for the current transaction's commit.

    Read from the connection's own list of commit callbacks (Django's `run_on_commit`, of
    (savepoint ids, callback, robust) since Django 4.2), not from a flag of ours: Django drops
    the callbacks of a transaction or savepoint that rolls back, so the answer stays right
    after a rollback, where a flag would stay set and silence every later pass
    (tests/test_queue_announcements.py has both cases).
    """
    connection = transaction.get_connection()
    return any(callback is _request_pass for _, callback, _ in connection.run_on_commit)


def _request_pass() -> None:
    """After the commit: the pass itself, or a request for one to the announcer thread."""
    if settings.QUEUE_ANNOUNCE_INTERVAL_MS <= 0:
        _announce_pass()
    else:
        _announcer.request()


class Announcer:
    """Runs the announcement passes of this process in a thread of its own, at most one per
    QUEUE_ANNOUNCE_INTERVAL_MS: the job whose start moved the queue does not wait for the
    pass (with a long queue, 50 runs read, serialised and stored: most of the per-job cost of
    many small files, bench/async_path.py), and a worker starting job after job makes one
    pass per interval, not one per job. A move during a pass or the interval after it gets a
    pass of its own once the interval is over, so the last move is always announced."""

    def __init__(self) -> None:
        self.wanted = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.lock = threading.Lock()

    def request(self) -> None:
        self.wanted.set()
        with self.lock:
            # A forked worker process inherits no thread: it starts its own.
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()
                self.thread = threading.Thread(
                    target=self._run, name="queue-announcer", daemon=True
                )
                self.thread.start()

    def _run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            try:
                _announce_pass()
            except Exception:
                logger.exception("announcing queue positions failed")
            finally:
                connection.close()
            time.sleep(settings.QUEUE_ANNOUNCE_INTERVAL_MS / 1000)


_announcer = Announcer()


def _announce_pass() -> None:
    """After the commit of a move; a failure is logged, never raised into the request or job
    whose transaction it follows."""
    queue = QueueSnapshot.head(QUEUE_ANNOUNCE_LIMIT)
    waiting = queue.in_order()
    runs = with_relations(TranscriptRun.objects.filter(pk__in=waiting, status=RunStatus.QUEUED))
    by_id = {run.pk: run for run in runs}
    # Its own short transaction: the outbox rows of the whole pass, delivered on its commit.
    with transaction.atomic():
        for run_id in waiting:
            run = by_id.get(run_id)
            if run is not None:
                publish(
                    run,
                    "update",
                    queue=queue,
                    channels=(run_channel(run.id), user_channel(run.owner_id)),
                )
