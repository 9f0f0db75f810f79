"""Where audio is kept: the `audio` storage of STORAGES, through Django's storage API.

Everything that reads or writes stored audio comes through here, so the rest of the code is
the same on a local folder and on an object store:

- `store_file` keeps a local file (an upload as Django spooled it, a piece of a long one);
- `local_file` gives a job a local path to decode: the stored file itself on a local folder,
  else a temporary copy in UPLOAD_TEMP_DIR, removed when the job is done with it;
- `delete_later` removes objects once the transaction that removed their rows commits, and
  leaves a `PendingDeletion` row for each one the store refused, which the worker clusters'
  housekeeping deletes when the store is back: a deleted run leaves no object behind;
- `signed_url` is the one way a store serves audio itself: a short-lived URL for the owner's
  player, on stores that sign them.

Errors of the store (down, timing out, refusing our credentials) become `StorageUnavailable`:
a 503 for a request, a retried attempt for a job. An object that is not there is
`StoredFileMissing`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from lingoloop.refusals import Unavailable
from transcription.models import PendingDeletion

logger = logging.getLogger(__name__)

# A pending deletion younger than this is still the committing request's own to make.
PENDING_GRACE = timedelta(minutes=1)
# Housekeeping deletes at most this many pending objects per turn.
PENDING_BATCH = 100


class StorageUnavailable(Unavailable):
    """The audio store could not be reached or refused the request."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "storage_unavailable",
            "The audio store cannot be reached just now; nothing was kept. Try again shortly.",
        )
        self.detail = detail


class StoredFileMissing(LookupError):
    """The store has no object of that name."""


class UploadFolderStorage(FileSystemStorage):
    """UPLOAD_DIR, read when used (tests give each test its own), files readable by the
    service's user only."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("file_permissions_mode", 0o600)
        kwargs.setdefault("directory_permissions_mode", 0o700)
        super().__init__(**kwargs)

    @property  # type: ignore[override]
    def base_location(self) -> str:
        return str(settings.UPLOAD_DIR)

    @property  # type: ignore[override]
    def location(self) -> str:
        return os.path.abspath(self.base_location)


def audio_storage() -> Storage:
    return storages["audio"]


def is_local(storage: Storage | None = None) -> bool:
    """Whether stored files are files on this machine (`path()` works)."""
    return isinstance(storage or audio_storage(), FileSystemStorage)


@contextlib.contextmanager
def _store_errors(action: str, name: str) -> Iterator[None]:
    """The store's own errors as StorageUnavailable (or StoredFileMissing), logged once."""
    try:
        yield
    except (StorageUnavailable, StoredFileMissing, FileNotFoundError):
        raise
    except Exception as exc:
        if _is_missing(exc):
            raise StoredFileMissing(name) from exc
        if is_local():  # the machine's own disk: its errors are not the store being away
            raise
        logger.warning("audio store: %s %s failed: %s", action, name, exc)
        raise StorageUnavailable(str(exc)) from exc


def _is_missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        return code in {"404", "NoSuchKey", "NotFound"}
    return False


def store_file(name: str, path: Path) -> None:
    """Keep the local file at `path` as `name`. On a local folder it is moved there (one
    rename); elsewhere it is uploaded and `path` stays for the caller to remove. A store
    that fails leaves nothing under `name`."""
    storage = audio_storage()
    if is_local(storage):
        target = Path(storage.path(name))
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(path, target)
        os.chmod(target, 0o600)
        return
    try:
        with _store_errors("write", name), path.open("rb") as handle:
            saved = storage.save(name, File(handle, name=name))
    except StorageUnavailable:
        # A write whose answer was lost may have landed: deleted now, or by the housekeeping
        # once the store is back.
        discard(name)
        raise
    if saved != name:  # file_overwrite=True: a backend that renamed it is misconfigured
        discard(saved)
        raise StorageUnavailable(f"the store kept {name!r} as {saved!r}")


# Files this process holds a local copy of already (a sync upload it is transcribing): a job
# it runs itself reads them instead of fetching them back from the store.
_known_local: dict[str, Path] = {}
_known_lock = threading.Lock()


@contextlib.contextmanager
def known_local_copy(name: str, path: Path) -> Iterator[None]:
    """While the block runs, `local_file(name)` in this process gives `path`."""
    with _known_lock:
        _known_local[name] = path
    try:
        yield
    finally:
        with _known_lock:
            _known_local.pop(name, None)


@contextlib.contextmanager
def local_file(name: str) -> Iterator[Path]:
    """A local path holding the stored file `name`, for as long as the block runs.

    Raises StoredFileMissing when the store has no such file, StorageUnavailable when it
    cannot be reached. A copy fetched from an object store is removed when the block ends,
    however it ends.
    """
    with _known_lock:
        known = _known_local.get(name)
    if known is not None and known.exists():
        yield known
        return
    storage = audio_storage()
    if is_local(storage):
        path = Path(storage.path(name))
        if not path.is_file():
            raise StoredFileMissing(name)
        yield path
        return
    handle, temporary = tempfile.mkstemp(dir=settings.UPLOAD_TEMP_DIR, suffix=".fetched")
    copy = Path(temporary)
    try:
        with (
            os.fdopen(handle, "wb") as out,
            _store_errors("read", name),
            storage.open(name, "rb") as stored,
        ):
            shutil.copyfileobj(stored, out, 1024 * 1024)
        yield copy
    finally:
        copy.unlink(missing_ok=True)


def size(name: str) -> int:
    """The stored file's size in bytes; StoredFileMissing when there is none."""
    with _store_errors("measure", name):
        try:
            return int(audio_storage().size(name))
        except FileNotFoundError:
            raise StoredFileMissing(name) from None


def read_range(name: str, start: int, length: int, *, piece: int = 256 * 1024) -> Iterator[bytes]:
    """The bytes `start` to `start + length` of a stored file, a piece at a time (blocking:
    iterate it off the event loop)."""
    storage = audio_storage()
    if is_local(storage):
        with open(storage.path(name), "rb") as handle:
            handle.seek(start)
            while length > 0 and (data := handle.read(min(piece, length))):
                length -= len(data)
                yield data
        return
    from storages.utils import clean_name

    # django-storages names the object this way for every call; it has no public range read.
    key = storage._normalize_name(clean_name(name))  # type: ignore[attr-defined]
    with _store_errors("read", name):
        body = storage.bucket.Object(key).get(Range=f"bytes={start}-{start + length - 1}")["Body"]  # type: ignore[attr-defined]
    try:
        yield from body.iter_chunks(piece)
    finally:
        body.close()


def signed_url(name: str, *, content_type: str) -> str | None:
    """A short-lived URL at which the store itself serves `name`, or None where the web
    process serves it: a local folder, or a store browsers cannot reach (AUDIO_URL_SECONDS=0)."""
    storage = audio_storage()
    if is_local(storage) or settings.AUDIO_URL_SECONDS == 0:
        return None
    with _store_errors("sign", name):
        return str(
            storage.url(  # type: ignore[call-arg]
                name,
                parameters={"ResponseContentType": content_type or "application/octet-stream"},
                expire=settings.AUDIO_URL_SECONDS,
            )
        )


def delete_later(names: Iterable[str]) -> None:
    """Delete these stored files once the current transaction commits (now, outside one).

    Each is first recorded as a PendingDeletion in the transaction, so a store that is down
    at commit time loses nothing: the worker clusters' housekeeping deletes it later.
    """
    names = [name for name in dict.fromkeys(names) if name]
    if not names:
        return
    PendingDeletion.objects.bulk_create(
        [PendingDeletion(name=name) for name in names], ignore_conflicts=True
    )
    transaction.on_commit(lambda: _delete_now(names))


def discard(name: str) -> None:
    """Delete a stored file that no row names (an upload refused after it was kept): now,
    or, when the store refuses, later by the housekeeping."""
    try:
        with _store_errors("delete", name):
            audio_storage().delete(name)
    except StoredFileMissing:
        pass
    except StorageUnavailable:
        PendingDeletion.objects.get_or_create(
            name=name, defaults={"attempts": 1, "last_tried_at": timezone.now()}
        )


def stored_row_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    """post_delete of a row that names a stored file (Audio): however the row goes (the API,
    a user deleted with everything they own), its file goes after the commit."""
    delete_later([instance.stored_name])


def _delete_now(names: list[str]) -> int:
    """Delete the files and their PendingDeletion rows; a file the store refuses keeps its
    row. Returns how many went."""
    storage = audio_storage()
    deleted: list[str] = []
    for name in names:
        try:
            with _store_errors("delete", name):
                storage.delete(name)
        except StoredFileMissing:
            pass
        except StorageUnavailable:
            PendingDeletion.objects.filter(name=name).update(
                attempts=F("attempts") + 1, last_tried_at=timezone.now()
            )
            continue
        deleted.append(name)
    PendingDeletion.objects.filter(name__in=deleted).delete()
    return len(deleted)


def delete_pending() -> int:
    """Housekeeping: delete the stored files whose deletion the store refused before."""
    cutoff = timezone.now() - PENDING_GRACE
    names = list(
        PendingDeletion.objects.filter(created_at__lt=cutoff)
        .order_by("last_tried_at", "created_at")
        .values_list("name", flat=True)[:PENDING_BATCH]
    )
    return _delete_now(names) if names else 0
