from django.urls import path

from tasks_admin import api as queue_api
from transcription import api, streams, web

api_urls = [
    path("auth/token", api.TokenView.as_view(), name="auth-token"),
    path("transcribe", api.TranscribeView.as_view(), name="transcribe"),
    path("runs", api.RunListView.as_view(), name="run-list"),
    path("runs/events", streams.user_events, name="user-events"),
    path("runs/<uuid:run_id>", api.RunDetailView.as_view(), name="run-detail"),
    path("runs/<uuid:run_id>/progress", api.RunProgressView.as_view(), name="run-progress"),
    path("runs/<uuid:run_id>/cancel", api.RunCancelView.as_view(), name="run-cancel"),
    path("runs/<uuid:run_id>/retry", api.RunRetryView.as_view(), name="run-retry"),
    path("runs/<uuid:run_id>/transcript", api.RunTranscriptView.as_view(), name="run-transcript"),
    path("runs/<uuid:run_id>/events", streams.run_events, name="run-events"),
    path("stats", queue_api.StatsView.as_view(), name="stats"),
    path("admin/worker", queue_api.WorkerControlView.as_view(), name="worker-control"),
    path("health", queue_api.HealthView.as_view(), name="health"),
]

web_urls = [
    path("", web.upload_page, name="upload"),
    path("runs/", web.runs_page, name="runs-page"),
    path("runs/<uuid:run_id>/", web.run_page, name="run-page"),
    path("runs/<uuid:run_id>/audio", web.run_audio, name="run-audio"),
    path("accounts/token/", web.token_page, name="account-token"),
]
