"""`python -m lingoloop.server [daphne options]`: daphne, made fit for uploads from the internet.

* The access log never shows tokens carried in query strings (see lingoloop.logs); with
  LOG_FORMAT=json its entries are lines of the JSON log (logger `lingoloop.access`). Each
  entry carries the answer's X-Request-ID, so it is the one line a 4xx gets (Django's own
  "Not Found: …" warnings are dropped: lingoloop.logs.ServerErrorsOnly).
* A form body is not parsed by Twisted (see `_parsePOSTFormSubmission` below).
* At most two malloc arenas (see lingoloop.malloc): RSS that does not grow with every thread.
* What the application loads at start is frozen out of the garbage collector's reach.
* PostgreSQL connections come from a pool (see lingoloop.database).
* An oversized request body is refused while it streams: daphne (Twisted) would otherwise
  receive a whole body, to a temporary file, before the application sees any of it. A body
  announced or grown past MAX_UPLOAD_BYTES (plus the multipart envelope) gets a 413 in the
  API's error shape at once, and the connection is closed.
* So is a body the disk has no room for: one that would leave a watched folder (the data
  folder, DATA_DIR/tmp, the system's temporary folder, where Twisted spools it) below
  MIN_FREE_DISK_BYTES is answered 507 before a byte of it is read, and a write of Twisted's
  temporary file that fails for want of room is answered 507 too, the file closed at once.

Takes daphne's own options (`-b 0.0.0.0 -p 8000 …`); the application defaults to
`lingoloop.asgi:application`.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import http
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from daphne import cli, http_protocol
from daphne.access import AccessLogGenerator

from lingoloop import disk
from lingoloop.logs import redact, short_id
from lingoloop.malloc import limit_arenas

if TYPE_CHECKING:
    from lingoloop.errors import ApiError

APPLICATION = "lingoloop.asgi:application"


logger = logging.getLogger(__name__)
access_log = logging.getLogger("lingoloop.access")
# The X-Request-ID of the answer daphne is finishing: it writes the access log entry while
# LimitedWebRequest.handle_reply runs, and gives the log only method, path, status and size.
_answering = contextvars.ContextVar[str | None]("answering", default=None)


class RedactingAccessLog(AccessLogGenerator):
    """daphne's access log, redacted, with the request id; with LOG_FORMAT=json, lines of the
    JSON log instead."""

    def write_entry(  # type: ignore[no-untyped-def]
        self, host, date, request, status=None, length=None, ident=None, user=None
    ) -> None:
        # An entry that cannot be written (a full disk under standard output) is lost, and
        # nothing else: the answer it records has gone out already.
        with contextlib.suppress(Exception):
            self._write_entry(host, date, request, status, length, ident, user)

    def _write_entry(  # type: ignore[no-untyped-def]
        self, host, date, request, status, length, ident, user
    ) -> None:
        from django.conf import settings

        request_id = _answering.get()
        if settings.LOG_FORMAT == "json":
            access_log.info(
                "%s %s",
                redact(request),
                status or "-",
                extra={"client": host, "status": status, "bytes": length, "request_id": request_id},
            )
            return
        # daphne's NCSA-style line, the request id after it as the other lines show it.
        self.stream.write(
            f"{host} {ident or '-'} {user or '-'} [{date.strftime('%d/%b/%Y:%H:%M:%S')}] "
            f'"{redact(request)}" {status or "-"} {length or "-"}'
            + (f" [req={short_id(request_id)}]" if request_id else "")
            + "\n"
        )


def _body_limit() -> int:
    from django.conf import settings

    from transcription.uploads import LimitedTemporaryFileUploadHandler

    return int(settings.MAX_UPLOAD_BYTES) + LimitedTemporaryFileUploadHandler.ENVELOPE_BYTES


# Twisted keeps a body shorter than this in memory (twisted.web.http._getContentFile); a longer
# one, or one of unknown length, goes to a temporary file.
SPOOLED_BODY_BYTES = 100_000


def _no_room_for(length: int | None) -> disk.FolderSpace | None:
    """A watched folder (lingoloop.disk) that a body of `length` bytes would leave below
    MIN_FREE_DISK_BYTES, if any: such a body is refused before a byte of it is read. A body
    small enough to stay in memory is never refused for that (a login, a cancel).

    Each copy the request makes counts on the file system it lands on: daphne's spool and
    Django's (past FILE_UPLOAD_MAX_MEMORY_SIZE) in the system's temporary folder, the upload
    handler's in DATA_DIR/tmp; the move into the upload folder takes no more room."""
    if length is not None and length < SPOOLED_BODY_BYTES:
        return None
    from django.conf import settings

    needed = length or 0
    copies = {"systemTemp": 1 + (needed > settings.FILE_UPLOAD_MAX_MEMORY_SIZE), "uploadTemp": 1}
    by_device: dict[int, int] = {}
    folders = disk.space()
    for folder in folders:
        device = disk.device_of(folder.path)
        by_device[device] = by_device.get(device, 0) + needed * copies.get(folder.name, 0)
    for folder in folders:
        if folder.free_bytes is None:
            continue
        if folder.free_bytes - by_device[disk.device_of(folder.path)] < _min_free():
            return folder
    return None


def _min_free() -> int:
    from django.conf import settings

    return int(settings.MIN_FREE_DISK_BYTES)


def insufficient_storage(low: disk.FolderSpace | None = None) -> ApiError:
    from lingoloop.errors import ApiError
    from lingoloop.refusals import InsufficientStorage

    if low is not None:
        logger.warning("upload refused before it was read: %s", disk.describe_low(low))
    return ApiError.from_refusal(InsufficientStorage())


class LimitedWebRequest(http_protocol.WebRequest):  # type: ignore[misc]
    """daphne's request, refusing a body past the upload limit as soon as that is known."""

    refused = False
    received = 0
    request_id: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Twisted parses a POSTed form body into `request.args` before daphne sees the
        # request: a multipart upload read whole into memory and copied many times over (a
        # 19 MB upload took the web process from 135 to 380 MiB). Daphne never reads `args`;
        # Django parses the body itself and streams uploads to disk.
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > _body_limit():
            self._refuse()
            length = 0  # nothing of the body will be kept
        elif (low := _no_room_for(length)) is not None:
            self._refuse(insufficient_storage(low))
            length = 0
        super().gotLength(length)

    def handle_reply(self, message: dict[str, Any]) -> None:
        if message.get("type") == "http.response.start":
            self.request_id = next(
                (
                    value.decode("latin-1")
                    for name, value in message.get("headers", ())
                    if name.lower() == b"x-request-id"
                ),
                None,
            )
        token = _answering.set(getattr(self, "request_id", None))
        try:
            super().handle_reply(message)
        finally:
            _answering.reset(token)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        if self.received > _body_limit():
            self._refuse()
            return
        try:
            super().handleContentChunk(data)
        except OSError as exc:
            if not disk.is_disk_full(exc):
                raise
            # Twisted's temporary file is unlinked already: closing it gives its room back.
            with contextlib.suppress(OSError):
                self.content.close()
            logger.error("request refused with insufficient_storage: spooling its body: %s", exc)
            self._refuse(insufficient_storage())

    def _refuse(self, error: ApiError | None = None) -> None:
        from transcription.uploads import too_large

        self.refused = True
        error = error or too_large()
        if (getattr(self.channel, "_path", b"") or b"").startswith(b"/v1/"):
            from transcription.openai_api import error_body

            body = json.dumps(error_body(error)).encode()  # OpenAI's shape for its clients
        else:
            body = json.dumps(error.as_dict()).encode()
        retry_after = "".join(f"Retry-After: {v}\r\n" for v in error.headers.values())
        head = (
            f"HTTP/1.1 {error.status_code} {http.HTTPStatus(error.status_code).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{retry_after}"
            "Connection: close\r\n\r\n"
        ).encode()
        transport: Any = self.channel.transport
        transport.write(head + body)
        transport.loseConnection()


class CommandLineInterface(cli.CommandLineInterface):  # type: ignore[misc]
    def load_asgi_app(self, path: str) -> Any:
        """The application, set up before its first request: PostgreSQL connections from a
        pool, its URL patterns loaded, and every object made so far frozen out of the garbage
        collector's reach. Those live as long as the process, and a full collection walked
        them all: with 1,000 open streams, pauses of a few hundred ms in the middle of
        fanning an event out."""
        application = super().load_asgi_app(path)
        from django.urls import get_resolver

        from lingoloop.database import use_connection_pool

        use_connection_pool()

        from lingoloop.metrics import prepare_folder

        prepare_folder()

        get_resolver().url_patterns  # noqa: B018 (imports every view module now)
        gc.collect()
        gc.freeze()
        return application


def main(argv: list[str] | None = None) -> None:
    limit_arenas()
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(":" in arg and not arg.startswith("-") for arg in args):
        args.append(APPLICATION)
    cli.AccessLogGenerator = RedactingAccessLog  # type: ignore[misc]
    http_protocol.WebRequest = LimitedWebRequest  # type: ignore[misc]
    CommandLineInterface().run(args)


if __name__ == "__main__":
    main()
