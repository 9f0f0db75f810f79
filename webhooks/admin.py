"""The Django admin for webhooks: each delivery with its attempts, and a redeliver action."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from lingoloop.admin import ReadOnlyModelAdmin
from webhooks.deliveries import AlreadyPending, redeliver
from webhooks.models import DeliveryAttempt, WebhookDelivery, WebhookEndpoint


class AttemptInline(admin.TabularInline):  # type: ignore[type-arg]
    model = DeliveryAttempt
    fields = readonly_fields = (
        "attempted_at",
        "status_code",
        "duration_ms",
        "succeeded",
        "error",
        "response_excerpt",
        "worker",
    )
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyModelAdmin):
    list_display = [
        "event",
        "url",
        "status",
        "attempt_count",
        "run",
        "created_at",
        "next_attempt_at",
        "finished_at",
    ]
    list_filter = ["status", "event"]
    search_fields = ["message_id", "url", "run__id"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "message_id",
        "run",
        "endpoint",
        "url",
        "event",
        "status",
        "job",
        "created_at",
        "next_attempt_at",
        "finished_at",
        "payload",
    ]
    inlines = [AttemptInline]
    actions = ["redeliver_deliveries"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookDelivery]:
        return super().get_queryset(request).annotate(attempt_count=Count("attempts"))

    @admin.display(description="attempts", ordering="attempt_count")
    def attempt_count(self, delivery: WebhookDelivery) -> int:
        return delivery.attempt_count  # type: ignore[attr-defined, no-any-return]

    @admin.action(description="Redeliver the selected deliveries")
    def redeliver_deliveries(
        self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]
    ) -> None:
        queued = pending = 0
        for delivery in queryset:
            try:
                redeliver(delivery)
                queued += 1
            except AlreadyPending:
                pending += 1
        if queued:
            self.message_user(request, f"{queued} delivery(ies) queued again.", messages.SUCCESS)
        if pending:
            self.message_user(
                request, f"{pending} still had attempts coming: left as they are.", messages.WARNING
            )


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnlyModelAdmin):
    list_display = ["url", "owner", "events", "description", "created_at"]
    list_filter = [("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["url", "description"]
    list_select_related = ["owner"]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Deleting an endpoint only stops future deliveries; their log stays.
        return super(ReadOnlyModelAdmin, self).has_delete_permission(request, obj)
