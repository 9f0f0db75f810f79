"""`manage.py register_model NAME PATH`: offer a folder of CTranslate2 Whisper weights under a
name, beside the bundled models (transcription/catalogue.py). `--remove NAME` withdraws it.

The folder is loaded once here, to refuse one that is not a Whisper model and to learn
whether it is multilingual; every machine that runs jobs needs it at the same path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from transcription import catalogue
from transcription.models import WhisperModelEntry

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NEEDED = ("model.bin", "config.json")


class Command(BaseCommand):
    help = "Offer a local folder of CTranslate2 Whisper weights under a model name."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="What `model` will take, e.g. small-de.")
        parser.add_argument("path", nargs="?", help="The folder (model.bin, config.json, …).")
        parser.add_argument("--description", default="", help="Shown in GET /api/models.")
        parser.add_argument("--remove", action="store_true", help="Withdraw the name.")

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        if options["remove"]:
            deleted, _ = WhisperModelEntry.objects.filter(name=name).delete()
            if not deleted:
                raise CommandError(f"No model is registered as {name!r}.")
            self.stdout.write(f"{name} is no longer offered.")
            return
        if not NAME.match(name):
            raise CommandError(
                f"{name!r} is not a model name: lower-case letters, digits, '.', '_' and '-'."
            )
        if name in (catalogue.BUNDLED_MODEL, catalogue.BASE_MODEL):
            raise CommandError(f"{name!r} is the name of a bundled model.")
        if not options["path"]:
            raise CommandError("Give the folder of the model's weights.")
        folder = Path(options["path"]).expanduser().resolve()
        missing = [file for file in NEEDED if not (folder / file).is_file()]
        if missing:
            raise CommandError(
                f"{folder} is not a CTranslate2 model folder: no {', '.join(missing)}."
            )
        multilingual = self._load(folder)
        size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
        entry, created = WhisperModelEntry.objects.update_or_create(
            name=name,
            defaults={
                "path": str(folder),
                "multilingual": multilingual,
                "languages": list(catalogue.languages_of(folder)) if multilingual else ["en"],
                "size_bytes": size,
                "description": options["description"][:200],
            },
        )
        kind = "multilingual" if multilingual else "English only"
        verb = "registered" if created else "updated"
        self.stdout.write(f"{entry.name} {verb}: {folder} ({kind}, {size / 2**20:.0f} MiB).")

    @staticmethod
    def _load(folder: Path) -> bool:
        from faster_whisper import WhisperModel

        try:
            model = WhisperModel(
                str(folder), device="cpu", compute_type="int8", local_files_only=True
            )
        except Exception as exc:
            raise CommandError(f"{folder} does not load as a Whisper model: {exc}") from exc
        return bool(model.model.is_multilingual)
