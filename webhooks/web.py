"""The webhooks part of the account page: the signing secret, and the standing endpoints."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest
from rest_framework import serializers

from webhooks.models import WebhookEndpoint, WebhookEvent, WebhookSecret
from webhooks.serializers import EndpointSerializer

ACTIONS = ("rotate-secret", "add-endpoint", "delete-endpoint")


def account_context(user_id: int) -> dict[str, Any]:
    return {
        "webhook_secret": WebhookSecret.of(user_id),
        "webhook_endpoints": WebhookEndpoint.objects.filter(owner_id=user_id),
        "webhook_events": WebhookEvent.choices,
    }


def handle_account_post(request: HttpRequest, action: str) -> None:
    """One of ACTIONS, from the account page's forms; the outcome goes to `messages`."""
    user_id = int(request.user.pk or 0)
    if action == "rotate-secret":
        with transaction.atomic():
            WebhookSecret.of(user_id).rotate()
        messages.success(
            request, "A new signing secret was made. Deliveries are signed with it from now on."
        )
    elif action == "delete-endpoint":
        endpoint_id = _uuid_or_none(request.POST.get("endpoint", ""))
        deleted, _ = WebhookEndpoint.objects.filter(pk__in=[endpoint_id], owner_id=user_id).delete()
        if deleted:
            messages.success(request, "The endpoint was removed.")
    elif action == "add-endpoint":
        data = {
            "url": request.POST.get("url", "").strip(),
            "events": request.POST.getlist("events"),
            "description": request.POST.get("description", "").strip(),
        }
        serializer = EndpointSerializer(data=data, context={"request": request})
        try:
            serializer.is_valid(raise_exception=True)
        except serializers.ValidationError:
            messages.error(
                request, "The endpoint was not added: " + _first_error(serializer.errors)
            )
            return
        WebhookEndpoint.objects.create(owner_id=user_id, **serializer.validated_data)
        messages.success(request, "The endpoint was added.")


def _first_error(errors: Any) -> str:
    """The first message of DRF's error tree, as a sentence."""
    while isinstance(errors, dict | list) and errors:
        errors = next(iter(errors.values())) if isinstance(errors, dict) else errors[0]
    text = str(errors)
    return text if text.endswith(".") else text + "."


def _uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
