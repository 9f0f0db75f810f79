"""`python manage.py worker`: a django-q2 cluster working through the job table."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection


class Command(BaseCommand):
    help = "Start a worker cluster that claims jobs from the job table."

    def handle(self, *args: Any, **options: Any) -> None:
        db = settings.DATABASES["default"]
        where = (
            db["NAME"]
            if db["ENGINE"].endswith("sqlite3")
            else (
                f"{db.get('USER') or ''}@{db.get('HOST') or 'localhost'}:{db.get('PORT') or ''}"
                f"/{db['NAME']}"
            )
        )
        self.stdout.write(
            f"LingoLoop worker: polling the job table on {connection.vendor} ({where}) "
            f"every {settings.POLL_INTERVAL} ms with {settings.MAX_CONCURRENT_JOBS} worker "
            f"process(es), model {settings.WHISPER_MODEL}, events via "
            f"{'Redis' if settings.REDIS_URL else 'the database'}."
        )
        self.stdout.flush()
        # CTranslate2 is not fork-safe: nothing here may load the model. Each worker process
        # loads it lazily on its first job and keeps it.
        connection.close()
        call_command("qcluster")
