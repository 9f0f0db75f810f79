from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A delivery is a job of its own type; runs that start or end queue them.
        from tasks_admin.handlers import register
        from transcription.signals import run_finished, run_started
        from webhooks.deliveries import WebhookHandler, on_run_finished, on_run_started

        register(WebhookHandler())
        run_started.connect(on_run_started, dispatch_uid="webhooks.run_started")
        run_finished.connect(on_run_finished, dispatch_uid="webhooks.run_finished")
