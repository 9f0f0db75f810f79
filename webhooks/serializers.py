"""The webhook resources of the API: endpoints, the signing secret, deliveries."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from transcription.representations import UtcDateTimeField
from transcription.serializers import validate_destination
from webhooks.models import WebhookEndpoint, WebhookEvent


class EndpointSerializer(serializers.Serializer):
    """A standing destination for the events it names, for all of its owner's runs."""

    id = serializers.UUIDField(read_only=True)
    url = serializers.CharField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.values),
        allow_empty=False,
        max_length=len(WebhookEvent.values),
        help_text="Any of `run.succeeded`, `run.failed`, `run.cancelled`, `run.processing`.",
    )
    description = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default=""
    )
    createdAt = UtcDateTimeField(source="created_at", read_only=True)

    def validate_url(self, value: str) -> str:
        return validate_destination(value)

    def validate_events(self, value: list[str]) -> list[str]:
        return sorted(set(value), key=WebhookEvent.values.index)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        owner = self.context["request"].user
        if WebhookEndpoint.objects.filter(owner=owner).count() >= settings.WEBHOOK_MAX_ENDPOINTS:
            raise serializers.ValidationError(
                f"At most {settings.WEBHOOK_MAX_ENDPOINTS} endpoints per user.",
                code="too_many_endpoints",
            )
        return attrs


class SecretSerializer(serializers.Serializer):
    secret = serializers.CharField(
        help_text="`whsec_` and base64: the key of the `webhook-signature` HMAC (Standard "
        "Webhooks)."
    )
    rotatedAt = UtcDateTimeField(source="rotated_at")


class AttemptSerializer(serializers.Serializer):
    attemptedAt = UtcDateTimeField(source="attempted_at")
    statusCode = serializers.IntegerField(
        source="status_code", allow_null=True, help_text="Null: no answer (see `error`)."
    )
    durationMs = serializers.IntegerField(source="duration_ms")
    succeeded = serializers.BooleanField()
    error = serializers.CharField(allow_blank=True)
    response = serializers.CharField(
        source="response_excerpt", allow_blank=True, help_text="The answer's first bytes."
    )


class DeliverySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    webhookId = serializers.CharField(source="message_id", help_text="The `webhook-id` header.")
    event = serializers.ChoiceField(choices=WebhookEvent.values)
    url = serializers.CharField()
    endpointId = serializers.UUIDField(
        source="endpoint_id", allow_null=True, help_text="Null: the run's own `callbackUrl`."
    )
    status = serializers.ChoiceField(choices=["pending", "succeeded", "failed"])
    createdAt = UtcDateTimeField(source="created_at")
    nextAttemptAt = UtcDateTimeField(source="next_attempt_at", allow_null=True)
    finishedAt = UtcDateTimeField(source="finished_at", allow_null=True)
    attempts = AttemptSerializer(many=True, source="attempts.all")
