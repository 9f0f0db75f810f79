from django.apps import AppConfig
from django.db.models.signals import post_delete


class TranscriptionConfig(AppConfig):
    name = "transcription"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The queue runs jobs by type; this app brings the transcription handlers, and the
        # outbox sweep and the stored files still to delete, which every worker cluster's loop
        # runs (tasks_admin never imports us).
        from tasks_admin.handlers import register, register_housekeeping, register_machine_check
        from transcription.catalogue import default_model_problems
        from transcription.chunks import ChunkHandler, SplitHandler
        from transcription.events import deliver_stranded_events
        from transcription.jobs import (
            JOB_TYPE_ASYNC,
            JOB_TYPE_SYNC,
            PURGE_EVERY,
            PurgeAudioHandler,
            TranscribeHandler,
            retention_is_on,
        )
        from transcription.models import Audio
        from transcription.storage import delete_pending, stored_row_deleted

        register(TranscribeHandler(JOB_TYPE_ASYNC))
        register(TranscribeHandler(JOB_TYPE_SYNC))
        register(SplitHandler())
        register(ChunkHandler())
        # Periodic only while retention is on: with AUDIO_RETENTION_HOURS=0 it has nothing to do.
        register(PurgeAudioHandler(), every=PURGE_EVERY, when=retention_is_on)
        register_housekeeping(deliver_stranded_events)
        register_housekeeping(delete_pending)
        register_machine_check(default_model_problems)
        post_delete.connect(stored_row_deleted, sender=Audio, dispatch_uid="audio-file")
