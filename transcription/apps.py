from django.apps import AppConfig


class TranscriptionConfig(AppConfig):
    name = "transcription"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The queue runs jobs by type; this app brings the transcription handlers.
        from tasks_admin.handlers import register, register_housekeeping
        from transcription.events import deliver_stranded_events
        from transcription.jobs import (
            JOB_TYPE_ASYNC,
            JOB_TYPE_SYNC,
            PURGE_EVERY,
            PurgeAudioHandler,
            TranscribeHandler,
        )

        register(TranscribeHandler(JOB_TYPE_ASYNC))
        register(TranscribeHandler(JOB_TYPE_SYNC))
        register(PurgeAudioHandler(), every=PURGE_EVERY)
        register_housekeeping(deliver_stranded_events)
