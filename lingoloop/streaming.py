"""Long-lived responses (the SSE streams), served beside Django's request handler.

A stream is opened once and then held for minutes, and a thousand watchers of a run open a
thousand of them at once, so what each opening costs adds up. Through Django's handler a
stream paid for the whole middleware chain, and each MiddlewareMixin hook of it (sessions,
CSRF, messages, security headers, axes…) runs in a thread of its own under ASGI
(`sync_to_async`), as do the request_started/request_finished signals: measured, 1,000
streams took 6.4 s to open on 2 cores, 6.5 ms of web CPU each, most of it thread hand-offs for
hooks a stream does not need. Here a view marked `long_lived` is called straight from ASGI:

* the query is checked for control characters, as RequestGuards does for every request;
* the session and the user are attached lazily, as Django's middleware does (the view reads
  them in a database thread, only when no token is given);
* the response gets the headers Django's SecurityMiddleware and XFrameOptionsMiddleware set;
* a disconnecting client cancels the stream, as Django's handler does;
* an exception is logged and answered 500 in the API's error shape; a database that does not
  answer, 503.

The view must authenticate and authorize by itself (no CSRF: streams are GET only) and must
not touch the database on the event loop. Every other request goes to Django as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, get_resolver
from django.utils.log import log_response

from lingoloop import metrics
from lingoloop.errors import machine_refusal_response, status_error
from lingoloop.middleware import refuse_bad_query

logger = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[..., Awaitable[None]]
View = TypeVar("View", bound=Callable[..., Awaitable[HttpResponseBase]])


def long_lived(view: View) -> View:
    """Mark an async view to be served by `LongLivedRoutes`, outside the middleware chain."""
    view.long_lived = True  # type: ignore[attr-defined]
    return view


class EventStreamResponse(StreamingHttpResponse):
    """A `text/event-stream` response whose body is an async iterator of text. Served by
    `LongLivedRoutes`, its chunks are sent as they come, without the per-chunk conversion
    Django's response iteration adds (a sixth of the web process's work while it fanned an
    event out to 1,000 streams); through Django's handler (the test client) it is an
    ordinary streaming response."""

    def __init__(self, chunks: AsyncIterator[str]) -> None:
        super().__init__(chunks, content_type="text/event-stream")
        self.chunks = chunks
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"


def _unused(request: HttpRequest) -> HttpResponseBase:
    raise AssertionError("only the middleware's hooks are called")


# Django's own hooks, called in place: none of these does I/O (the session and the user are
# lazy), so they need no thread of their own.
_session = SessionMiddleware(_unused)
_auth = AuthenticationMiddleware(_unused)
_security = SecurityMiddleware(_unused)
_frames = XFrameOptionsMiddleware(_unused)


class LongLivedRoutes:
    """ASGI: GET requests for a `long_lived` view are served here, the rest by `app`."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        match = self._match(scope)
        if match is None:
            await self.app(scope, receive, send)
            return
        view, kwargs, route = match
        started = time.perf_counter()
        request = ASGIRequest(scope, io.BytesIO())
        response = await self._respond(request, view, kwargs)
        # Its opening: Django's middleware (lingoloop.metrics.RequestMetrics) never sees it.
        metrics.http_request_finished(
            route, "GET", response.status_code, time.perf_counter() - started
        )
        try:
            await _send(response, receive, send)
        finally:
            response.close()

    @staticmethod
    def _match(scope: MutableMapping[str, Any]) -> tuple[Any, dict[str, Any], str] | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        # The path below the prefix the service is mounted at, as Django resolves it.
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        try:
            found = get_resolver().resolve(path)
        except Resolver404:
            return None
        if not getattr(found.func, "long_lived", False):
            return None
        return found.func, found.kwargs, str(found.route)

    @staticmethod
    async def _respond(
        request: HttpRequest, view: Callable[..., Awaitable[HttpResponseBase]], kwargs: Any
    ) -> HttpResponseBase:
        response = refuse_bad_query(request)
        if response is None:
            _session.process_request(request)
            _auth.process_request(request)
            try:
                response = await view(request, **kwargs)
            except Exception as exc:
                # The database away (a restart, say): 503, and the client tries again.
                response = machine_refusal_response(request, exc)  # type: ignore[assignment]
                if response is None:
                    logger.exception("stream %s failed to open", request.path)
                    response = status_error(500)
        response = _security.process_response(request, response)  # type: ignore[arg-type]
        response = _frames.process_response(request, response)
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response)
        return response


async def _send(response: HttpResponseBase, receive: Receive, send: Send) -> None:
    """Send the response; a streaming body is cancelled when the client goes away."""
    headers = [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()
    ]
    headers += [
        (b"set-cookie", cookie.output(header="").encode("ascii").strip())
        for cookie in response.cookies.values()
    ]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if not isinstance(response, StreamingHttpResponse):
        await send({"type": "http.response.body", "body": response.content})  # type: ignore[attr-defined]
        return
    body = asyncio.ensure_future(_stream_body(response, send))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait([body, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not body.done():
            body.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([body])
    if body.cancelled():
        return  # the client went away: nothing more to send
    if body.exception() is not None:
        # The stream ends, properly: the client reconnects with its Last-Event-ID.
        logger.error("stream failed", exc_info=body.exception())
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": b""})


async def _stream_body(response: StreamingHttpResponse, send: Send) -> None:
    content: AsyncIterator[str | bytes] = (
        response.chunks if isinstance(response, EventStreamResponse) else aiter(response)
    )
    try:
        async for chunk in content:
            body = chunk.encode() if isinstance(chunk, str) else chunk
            await send({"type": "http.response.body", "body": body, "more_body": True})
    finally:
        closing = getattr(content, "aclose", None)
        if closing is not None:
            await closing()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
