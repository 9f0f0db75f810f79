"""Upload handling: stream to a temporary file, refuse past MAX_UPLOAD_BYTES while streaming."""

from __future__ import annotations

import contextlib
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from rest_framework import status

from lingoloop.errors import ApiError


def too_large() -> ApiError:
    limit_mib = settings.MAX_UPLOAD_BYTES / (1024 * 1024)
    return ApiError(
        "file_too_large",
        f"The file is larger than the {limit_mib:g} MiB this service accepts.",
        field="file",
        status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Django's temporary-file handler with a size limit.

    A request that announces more than the limit is refused before any of its body is read;
    one that sends more than it announced is refused at the chunk that crosses the limit, and
    its partial file is deleted; so is the partial file of a write that failed (a full disk).
    """

    # Room for the multipart boundaries and the small form fields beside the file.
    ENVELOPE_BYTES = 64 * 1024

    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        if content_length > settings.MAX_UPLOAD_BYTES + self.ENVELOPE_BYTES:
            raise too_large()
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received = getattr(self, "received", 0) + len(raw_data)
        if self.received > settings.MAX_UPLOAD_BYTES:
            self.file.close()  # a NamedTemporaryFile: closing deletes the partial upload
            raise too_large()
        try:
            return super().receive_data_chunk(raw_data, start)  # type: ignore[no-any-return]
        except OSError:
            self._discard()  # a full disk: the partial file goes now, freeing what it took
            raise

    def file_complete(self, file_size: int) -> Any:
        try:
            return super().file_complete(file_size)  # its last buffered bytes are written here
        except OSError:
            self._discard()
            raise

    def _discard(self) -> None:
        with contextlib.suppress(OSError):  # its buffer cannot be written either
            self.file.close()
