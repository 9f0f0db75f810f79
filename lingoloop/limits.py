"""Refuse oversized request bodies while they stream, before Django reads them; answer a body
that the disk has no room for with 507.

Django's ASGI handler reads a whole request body (into a temporary file) before any view or
upload handler sees it, so a 10 GB upload would be written to disk in full only to be
refused. This ASGI middleware answers 413 as soon as the declared Content-Length, or the bytes
actually received, pass MAX_UPLOAD_BYTES (plus room for the multipart envelope).
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

from lingoloop import disk
from lingoloop.errors import ApiError
from lingoloop.refusals import InsufficientStorage
from transcription.uploads import LimitedTemporaryFileUploadHandler, too_large

logger = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[..., Awaitable[None]]


async def _send_413(send: Send) -> None:
    await _send_error(send, too_large())


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.as_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = settings.MAX_UPLOAD_BYTES + LimitedTemporaryFileUploadHandler.ENVELOPE_BYTES
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > limit:
            await _send_413(send)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    # Django stops reading and answers nothing; we answer below.
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if exceeded and not started:
            await _send_413(send)


class DiskFullAnswer:
    """A full disk met before any view runs, while Django's ASGI handler copies the body to
    its temporary file: a 507 in the API's error shape instead of daphne's bare 500, and that
    temporary file freed at once (the traceback held it, and with it the disk space)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if scope["type"] != "http" or not disk.is_disk_full(exc):
                raise
            traceback.clear_frames(exc.__traceback__)
            logger.error("request refused with insufficient_storage: %s", exc)
            if not started:
                await _send_error(send, ApiError.from_refusal(InsufficientStorage()))
