from django.urls import path

from webhooks import api

api_urls = [
    path("webhooks", api.EndpointListView.as_view(), name="webhook-list"),
    path("webhooks/secret", api.SecretView.as_view(), name="webhook-secret"),
    path("webhooks/secret/rotate", api.SecretRotateView.as_view(), name="webhook-secret-rotate"),
    path("webhooks/<uuid:endpoint_id>", api.EndpointDetailView.as_view(), name="webhook-detail"),
    path("runs/<uuid:run_id>/deliveries", api.RunDeliveriesView.as_view(), name="run-deliveries"),
    path(
        "runs/<uuid:run_id>/deliveries/<uuid:delivery_id>/redeliver",
        api.RedeliverView.as_view(),
        name="run-redeliver",
    ),
]
