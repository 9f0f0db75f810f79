from django.urls import URLPattern, path

from tasks_admin import api

# Below /api/.
queue_urls: list[URLPattern] = [
    path("stats", api.StatsView.as_view(), name="stats"),
    path("admin/worker", api.WorkerControlView.as_view(), name="worker-control"),
    path("health", api.HealthView.as_view(), name="health"),
]
