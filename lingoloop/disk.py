"""Free disk space, and telling a full disk from other failures.

An upload is written three times before it is kept: by daphne (Twisted spools a body of
100 kB or more to a temporary file in the system's temporary folder), by Django's ASGI
handler (its copy of the body, in the same folder, once it passes FILE_UPLOAD_MAX_MEMORY_SIZE)
and by the upload handler (DATA_DIR/tmp, from where it is moved into the upload folder). A
full disk can fail any of these, or SQLite's own writes, or the log. So the service watches
each of these folders (`watched_folders`), refuses uploads before it streams them when one
is below MIN_FREE_DISK_BYTES, and answers `507 Insufficient Storage` wherever else a write
fails for want of room (`is_disk_full`).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# "No space left on device" and "Disk quota exceeded": both mean no room for this write.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How SQLite says so (SQLITE_FULL), through sqlite3.OperationalError.
_SQLITE_FULL = "database or disk is full"


@dataclass(frozen=True)
class FolderSpace:
    name: str  # what health and /metrics call it; never the path (health needs no login)
    path: Path
    free_bytes: int | None  # None: it could not be measured (the folder is gone)

    @property
    def low(self) -> bool:
        return self.free_bytes is not None and self.free_bytes < settings.MIN_FREE_DISK_BYTES


def free_bytes(path: Path | str) -> int | None:
    """Bytes an unprivileged process may still write on the file system holding `path`."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def device_of(path: Path | str) -> int:
    """The file system `path` is on (its st_dev); -1 when it cannot be read."""
    try:
        return os.stat(path).st_dev
    except OSError:
        return -1


def watched_folders() -> dict[str, Path]:
    """The folders whose file systems must have room for the service to work: the data folder
    (SQLite, the upload folder), the upload handler's temporary folder and the system's
    temporary folder (where daphne and Django spool request bodies)."""
    return {
        "data": Path(settings.DATA_DIR),
        "uploadTemp": Path(settings.UPLOAD_TEMP_DIR),
        "systemTemp": Path(tempfile.gettempdir()),
    }


def space(folders: dict[str, Path] | None = None) -> list[FolderSpace]:
    return [
        FolderSpace(name, path, free_bytes(path))
        for name, path in (folders or watched_folders()).items()
    ]


def low_folders(folders: dict[str, Path] | None = None) -> list[FolderSpace]:
    return [folder for folder in space(folders) if folder.low]


def size_label(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def describe_low(folder: FolderSpace) -> str:
    return (
        f"{size_label(folder.free_bytes or 0)} free in the {folder.name} folder, below "
        f"MIN_FREE_DISK_BYTES ({size_label(settings.MIN_FREE_DISK_BYTES)})"
    )


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from or during, is a write that failed
    for want of room: ENOSPC/EDQUOT, SQLite's SQLITE_FULL, PostgreSQL's disk_full (53100)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if _SQLITE_FULL in str(exc) and type(exc).__name__ == "OperationalError":
            return True
        if getattr(exc, "sqlstate", None) == "53100":  # psycopg's errors.DiskFull
            return True
        exc = exc.__cause__ or exc.__context__
    return False
