"""Webhooks over the API: a user's endpoints and secret, a run's deliveries."""

from __future__ import annotations

import uuid

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lingoloop.errors import ApiError
from lingoloop.openapi import error_responses
from transcription.api import get_run
from webhooks.deliveries import AlreadyPending, redeliver
from webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookSecret
from webhooks.serializers import DeliverySerializer, EndpointSerializer, SecretSerializer


def _user_id(request: Request) -> int:
    """Every view here requires a signed-in user (DEFAULT_PERMISSION_CLASSES)."""
    return int(request.user.pk or 0)


def _endpoint(request: Request, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, owner_id=_user_id(request)).first()
    if endpoint is None:
        raise ApiError("not_found", "No such endpoint.", status_code=status.HTTP_404_NOT_FOUND)
    return endpoint


class EndpointListView(APIView):
    @extend_schema(
        operation_id="listWebhookEndpoints",
        tags=["webhooks"],
        responses={200: EndpointSerializer(many=True), **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        endpoints = WebhookEndpoint.objects.filter(owner_id=_user_id(request))
        return Response(EndpointSerializer(endpoints, many=True).data)

    @extend_schema(
        operation_id="createWebhookEndpoint",
        tags=["webhooks"],
        request=EndpointSerializer,
        responses={201: EndpointSerializer, **error_responses(400, 401, 403, 415)},
    )
    def post(self, request: Request) -> Response:
        serializer = EndpointSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        endpoint = WebhookEndpoint.objects.create(
            owner_id=_user_id(request), **serializer.validated_data
        )
        return Response(EndpointSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class EndpointDetailView(APIView):
    @extend_schema(
        operation_id="getWebhookEndpoint",
        tags=["webhooks"],
        responses={200: EndpointSerializer, **error_responses(401, 404)},
    )
    def get(self, request: Request, endpoint_id: uuid.UUID) -> Response:
        return Response(EndpointSerializer(_endpoint(request, endpoint_id)).data)

    @extend_schema(
        operation_id="deleteWebhookEndpoint",
        tags=["webhooks"],
        description="Deliveries already queued for it are still sent; their log stays.",
        responses={204: None, **error_responses(401, 403, 404)},
    )
    def delete(self, request: Request, endpoint_id: uuid.UUID) -> Response:
        _endpoint(request, endpoint_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class SecretView(APIView):
    @extend_schema(
        operation_id="getWebhookSecret",
        tags=["webhooks"],
        description="The key every delivery to you is signed with.",
        responses={200: SecretSerializer, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        return Response(SecretSerializer(WebhookSecret.of(_user_id(request))).data)


class SecretRotateView(APIView):
    @extend_schema(
        operation_id="rotateWebhookSecret",
        tags=["webhooks"],
        description="A new key; attempts from now on are signed with it alone.",
        request=None,
        responses={200: SecretSerializer, **error_responses(401, 403)},
    )
    def post(self, request: Request) -> Response:
        with transaction.atomic():
            secret = WebhookSecret.of(_user_id(request))
            secret.rotate()
        return Response(SecretSerializer(secret).data)


def _deliveries(run_id: uuid.UUID) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(run_id=run_id).prefetch_related("attempts"))


class RunDeliveriesView(APIView):
    @extend_schema(
        operation_id="listRunDeliveries",
        tags=["webhooks"],
        description="Every webhook delivery of the run, oldest first, with each attempt.",
        responses={200: DeliverySerializer(many=True), **error_responses(401, 404)},
    )
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        run = get_run(request, run_id)
        return Response(DeliverySerializer(_deliveries(run.pk), many=True).data)


class RedeliverView(APIView):
    @extend_schema(
        operation_id="redeliver",
        tags=["webhooks"],
        description="Send a delivery again, with fresh attempts: the same body and "
        "`webhook-id`, a new signature.",
        request=None,
        responses={
            202: DeliverySerializer,
            **error_responses(401, 403, 404, 409, e409="The delivery still has attempts coming."),
        },
    )
    def post(self, request: Request, run_id: uuid.UUID, delivery_id: uuid.UUID) -> Response:
        run = get_run(request, run_id)
        delivery = WebhookDelivery.objects.filter(pk=delivery_id, run=run).first()
        if delivery is None:
            raise ApiError("not_found", "No such delivery.", status_code=status.HTTP_404_NOT_FOUND)
        try:
            delivery = redeliver(delivery)
        except AlreadyPending:
            raise ApiError(
                "delivery_pending",
                "The delivery still has attempts coming; redeliver it once it has ended.",
                status_code=status.HTTP_409_CONFLICT,
            ) from None
        delivery = WebhookDelivery.objects.prefetch_related("attempts").get(pk=delivery.pk)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
