from django.urls import URLPattern, URLResolver, include, path

from transcription import api, openai_api, streams, web

# One run's resources, below /api/runs/<run_id>/.
run_urls = [
    path("progress", api.RunProgressView.as_view(), name="run-progress"),
    path("cancel", api.RunCancelView.as_view(), name="run-cancel"),
    path("retry", api.RunRetryView.as_view(), name="run-retry"),
    path("transcript", api.RunTranscriptView.as_view(), name="run-transcript"),
    path("events", streams.run_events, name="run-events"),
    path("segments/<int:segment_id>", api.RunSegmentView.as_view(), name="run-segment"),
]

api_urls: list[URLPattern | URLResolver] = [
    path("auth/token", api.TokenView.as_view(), name="auth-token"),
    path("transcribe", api.TranscribeView.as_view(), name="transcribe"),
    path("models", api.ModelListView.as_view(), name="model-list"),
    path("detect-language", api.DetectLanguageView.as_view(), name="detect-language"),
    path("runs", api.RunListView.as_view(), name="run-list"),
    path("runs/events", streams.user_events, name="user-events"),
    path("runs/<uuid:run_id>", api.RunDetailView.as_view(), name="run-detail"),
    path("runs/<uuid:run_id>/", include(run_urls)),
]

# Below /v1/: OpenAI's audio API.
openai_urls = [
    path("audio/transcriptions", openai_api.transcriptions, name="openai-transcriptions"),
    path("audio/translations", openai_api.translations, name="openai-translations"),
    path("models", openai_api.ModelsView.as_view(), name="openai-models"),
    path("models/<str:model>", openai_api.ModelView.as_view(), name="openai-model"),
]

web_urls = [
    path("", web.upload_page, name="upload"),
    path("runs/", web.runs_page, name="runs-page"),
    path("runs/delete", web.runs_delete, name="runs-delete"),
    path("runs/<uuid:run_id>/", web.run_page, name="run-page"),
    path("runs/<uuid:run_id>/retry", web.run_action, {"action": "retry"}, name="run-page-retry"),
    path("runs/<uuid:run_id>/cancel", web.run_action, {"action": "cancel"}, name="run-page-cancel"),
    path("runs/<uuid:run_id>/audio", web.run_audio, name="run-audio"),
    path("accounts/token/", web.token_page, name="account-token"),
]
