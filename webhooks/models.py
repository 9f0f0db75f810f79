"""Webhooks: who is told when a run ends, and the record of every attempt to tell them.

A delivery is made for each destination when a run ends (its `callbackUrl`, and each standing
endpoint of its owner that asked for that event). Its body is fixed then, so every attempt
sends the same bytes under the same `webhook-id`; each attempt is a job of type `webhook` in
the job table (leases, retries and the queue admin come with it) and leaves a row here.
"""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class WebhookEvent(models.TextChoices):
    SUCCEEDED = "run.succeeded"
    FAILED = "run.failed"
    CANCELLED = "run.cancelled"
    PROCESSING = "run.processing"


# What a run's own `callbackUrl` is called for: the end of the run, however it ended.
END_EVENTS = (WebhookEvent.SUCCEEDED, WebhookEvent.FAILED, WebhookEvent.CANCELLED)

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    import base64

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookSecret(models.Model):
    """The key a user's deliveries are signed with; the account page shows and rotates it."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret"
    )
    secret = models.CharField(max_length=100, default=new_secret)
    rotated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "webhook_secret"

    def __str__(self) -> str:
        return f"webhook secret of {self.user}"

    @classmethod
    def of(cls, user_id: int) -> WebhookSecret:
        return cls.objects.get_or_create(user_id=user_id)[0]

    def rotate(self) -> None:
        self.secret = new_secret()
        self.rotated_at = timezone.now()
        self.save(update_fields=["secret", "rotated_at"])


class WebhookEndpoint(models.Model):
    """A standing destination: told of its chosen events for all of its owner's runs."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)  # WebhookEvent values
    description = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "webhook_endpoint"
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # an attempt is queued, running or waiting for its retry
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good: retries spent, or refused in a way no retry changes


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


class WebhookDelivery(models.Model):
    """One event for one destination. `message_id` is the `webhook-id` header: the same on
    every attempt and on a redelivery, so that a receiver can drop what it has seen."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    message_id = models.CharField(max_length=64, unique=True, default=new_message_id)
    run = models.ForeignKey(
        "transcription.TranscriptRun", on_delete=models.CASCADE, related_name="deliveries"
    )
    # None: the run's own callbackUrl. An endpoint deleted later keeps its deliveries' log.
    endpoint = models.ForeignKey(
        WebhookEndpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    url = models.URLField(max_length=2000)
    event = models.CharField(max_length=32, choices=WebhookEvent.choices)
    payload = models.TextField()  # the JSON body, as sent
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    # The job of the current (or last) try; a redelivery makes a new one.
    job = models.ForeignKey(
        "tasks_admin.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "webhook_delivery"
        ordering = ["created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="idx_delivery_status")]

    def __str__(self) -> str:
        return f"{self.event} → {self.url}"


class DeliveryAttempt(models.Model):
    """One try of a delivery: when, what came back, how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    attempted_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)  # None: no answer
    duration_ms = models.PositiveIntegerField()
    succeeded = models.BooleanField()
    error = models.CharField(max_length=300, blank=True, default="")  # why, in words
    response_excerpt = models.CharField(max_length=1000, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        db_table = "webhook_delivery_attempt"
        ordering = ["attempted_at", "pk"]

    def __str__(self) -> str:
        return f"{self.status_code or self.error} at {self.attempted_at:%Y-%m-%d %H:%M:%S}"
