"""Deliveries: queued when a run starts or ends, sent by a worker, each try recorded.

A run that ends queues one delivery for its `callbackUrl` (if it has one) and one for each of
its owner's endpoints that asked for the event; a run that starts an attempt, one for each
endpoint that asked for `run.processing`. They are written in the transaction that records
the change (the `run_started` / `run_finished` signals), so a rolled-back end sends nothing.

Each delivery's attempts are jobs of type `webhook`, retried on what may pass (no answer,
429, 5xx) after WEBHOOK_RETRY_DELAYS or the receiver's `Retry-After` if longer, and given up
at once on what will not (another 4xx, a redirect, an internal address).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urljoin
from uuid import UUID

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from lingoloop import metrics
from lingoloop.timefmt import iso_utc
from tasks_admin.handlers import Attempt, BaseJobHandler, PermanentError, RetryLater, Subject
from tasks_admin.models import Job, JobStatus
from tasks_admin.services import job_enqueue
from transcription.models import TranscriptRun
from transcription.representations import run_object
from webhooks import client
from webhooks.models import (
    END_EVENTS,
    DeliveryAttempt,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookSecret,
)
from webhooks.signing import signed_headers

JOB_TYPE_WEBHOOK = "webhook"
# Ahead of every transcription (staff priorities go up to 100): a delivery takes
# milliseconds, and a client waiting to hear that its run ended should not wait for the queue.
WEBHOOK_JOB_PRIORITY = 1000
# The longest `Retry-After` honoured: a receiver cannot park a delivery for longer.
MAX_RETRY_AFTER = timedelta(hours=12)
# The payload's data keeps these out: a receiver is not the run's owner.
PRIVATE_FIELDS = ("eventsToken",)
# Dropped, in this order, from a payload over WEBHOOK_MAX_PAYLOAD_BYTES (the transcript link
# stays): a receiver of a two-hour transcript fetches it.
BULKY_FIELDS = ("segments", "text")


def payload(run: TranscriptRun, event: str) -> str:
    """The body every destination of `event` gets: `{"type", "timestamp", "data"}` with the
    run as the API shows it (less its events token), its links absolute when PUBLIC_URL is
    set. Over WEBHOOK_MAX_PAYLOAD_BYTES the transcript itself is left out (`truncated`)."""
    data: dict[str, Any] = dict(run_object(run))
    for name in PRIVATE_FIELDS:
        data.pop(name, None)
    if settings.PUBLIC_URL:
        data["links"] = {
            name: urljoin(settings.PUBLIC_URL, link) for name, link in data["links"].items()
        }
    body = {"type": event, "timestamp": iso_utc(timezone.now()), "data": data}
    text = _dumps(body)
    if len(text.encode()) > settings.WEBHOOK_MAX_PAYLOAD_BYTES:
        for name in BULKY_FIELDS:
            data.pop(name, None)
        data["truncated"] = True
        text = _dumps(body)
    return text


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)


def queue_deliveries(run: TranscriptRun, event: str) -> list[WebhookDelivery]:
    """A delivery of `event` for each destination that wants it. Call it inside the
    transaction that records the change; a worker sends them once it commits."""
    destinations: list[tuple[WebhookEndpoint | None, str]] = []
    if run.callback_url and event in END_EVENTS:
        destinations.append((None, run.callback_url))
    endpoints = WebhookEndpoint.objects.filter(owner_id=run.owner_id)
    destinations += [(e, e.url) for e in endpoints if event in e.events]
    if not destinations:
        return []
    body = payload(run, event)
    return [
        _queue(WebhookDelivery(run=run, endpoint=endpoint, url=url, event=event, payload=body))
        for endpoint, url in destinations
    ]


def _queue(delivery: WebhookDelivery) -> WebhookDelivery:
    """Give `delivery` (saved or not) a new job and mark it pending."""
    delivery.job = job_enqueue(
        job_type=JOB_TYPE_WEBHOOK,
        priority=WEBHOOK_JOB_PRIORITY,
        max_attempts=len(settings.WEBHOOK_RETRY_DELAYS) + 1,
    )
    delivery.status = DeliveryStatus.PENDING
    delivery.finished_at = None
    delivery.next_attempt_at = delivery.job.run_after
    delivery.save()
    return delivery


class AlreadyPending(Exception):
    """A redelivery was asked for while the delivery still has attempts coming."""


def redeliver(delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a finished delivery again, with fresh attempts: the same body and `webhook-id`
    (a receiver that saw it may drop it), a new signature."""
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        live = Job.objects.filter(
            pk__in=[locked.job_id], status__in=[JobStatus.QUEUED, JobStatus.PROCESSING]
        )
        if locked.status == DeliveryStatus.PENDING and live.exists():
            raise AlreadyPending()
        return _queue(locked)


def on_run_started(sender: object, run: TranscriptRun, **kwargs: Any) -> None:
    queue_deliveries(run, WebhookEvent.PROCESSING)


def on_run_finished(sender: object, run: TranscriptRun, **kwargs: Any) -> None:
    queue_deliveries(run, f"run.{run.status}")


class WebhookHandler(BaseJobHandler[tuple[WebhookDelivery, client.Answer]]):
    """One attempt of one delivery. A success is recorded in the transaction whose
    compare-and-set finished the job, so a delivery succeeds once however many workers tried;
    a failed try is recorded as it ends."""

    job_type = JOB_TYPE_WEBHOOK

    def retry_delay(self, job: Job) -> timedelta:
        delays = settings.WEBHOOK_RETRY_DELAYS
        return timedelta(milliseconds=delays[min(max(job.attempts, 1), len(delays)) - 1])

    def run(self, attempt: Attempt) -> tuple[WebhookDelivery, client.Answer]:
        delivery = _delivery_of(attempt.job)
        if delivery is None:
            raise PermanentError("delivery_missing", "The delivery was deleted.")
        secret = WebhookSecret.of(delivery.run.owner_id).secret
        headers = signed_headers(secret, delivery.message_id, delivery.payload, timezone.now())
        answer = client.post(delivery.url, delivery.payload.encode(), headers)
        retry = not answer.ok and not answer.refused and _worth_retrying(answer)
        metrics.webhook_delivery_finished(
            _outcome(answer, retry, attempt.job), answer.duration_ms / 1000
        )
        if answer.ok:
            return delivery, answer
        _record(delivery, answer, attempt.worker_id)
        code, message = _why(answer)
        if not retry:
            raise PermanentError(code, message)
        raise RetryLater(code, message, after=_capped(answer.retry_after))

    def succeeded(self, attempt: Attempt, result: tuple[WebhookDelivery, client.Answer]) -> None:
        delivery, answer = result
        _record(delivery, answer, attempt.worker_id)
        _finish(attempt.job, DeliveryStatus.SUCCEEDED)

    def retrying(self, job: Job, error: str, retry_at: datetime) -> None:
        WebhookDelivery.objects.filter(job=job).update(next_attempt_at=retry_at)

    def failed(self, job: Job, code: str, error: str) -> None:
        _finish(job, DeliveryStatus.FAILED)

    def cancelled(self, job: Job) -> None:
        _finish(job, DeliveryStatus.FAILED)

    def describe_many(self, jobs: Sequence[Job]) -> dict[UUID, Subject]:
        deliveries = WebhookDelivery.objects.filter(job__in=jobs).select_related("run__owner")
        return {
            delivery.job_id: Subject(
                label=delivery.event,
                url=reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk]),
                owner=delivery.run.owner.get_username(),
                name=delivery.url,
            )
            for delivery in deliveries
            if delivery.job_id is not None
        }


def _delivery_of(job: Job) -> WebhookDelivery | None:
    return WebhookDelivery.objects.select_related("run").filter(job=job).first()


def _finish(job: Job, status: str) -> None:
    WebhookDelivery.objects.filter(job=job).update(
        status=status, finished_at=timezone.now(), next_attempt_at=None
    )


def _record(delivery: WebhookDelivery, answer: client.Answer, worker_id: str) -> None:
    DeliveryAttempt.objects.create(
        delivery=delivery,
        status_code=answer.status_code,
        duration_ms=answer.duration_ms,
        succeeded=answer.ok,
        error=answer.error[:300],
        response_excerpt=answer.excerpt,
        worker=worker_id,
    )


def _worth_retrying(answer: client.Answer) -> bool:
    """No answer, 429 or 5xx: the receiver may take it later. Another 4xx or a redirect
    (never followed) will be answered the same way again."""
    code = answer.status_code
    return code is None or code == 429 or code >= 500


def _outcome(answer: client.Answer, retry: bool, job: Job) -> str:
    """The attempt as lingoloop_webhook_deliveries_total counts it."""
    if answer.ok:
        return "delivered"
    if answer.refused:
        return "refused"
    return "retrying" if retry and job.retries_left > 0 else "failed"


def _why(answer: client.Answer) -> tuple[str, str]:
    if answer.refused:
        return "unsafe_callback_url", answer.error
    if answer.status_code is None:
        return "no_answer", answer.error
    if 300 <= answer.status_code < 400:
        return (
            "redirected",
            f"The receiver answered {answer.status_code}; redirects are not followed.",
        )
    return "receiver_error", f"The receiver answered {answer.status_code}."


def _capped(retry_after: timedelta | None) -> timedelta | None:
    """A receiver's `Retry-After`, up to MAX_RETRY_AFTER."""
    return None if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
