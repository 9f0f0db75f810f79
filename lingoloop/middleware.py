"""Three guards around every request: the API's error shape, no control characters, and no
upload left behind.

* Under /api/, an error that Django answers itself (a URL that matches nothing, a request
  over a parsing limit, an exception no view caught and, with DEBUG on, its debug pages) is
  turned into the API's error shape. A client of the API never sees an HTML page, a traceback,
  a setting or a path, whatever DEBUG says.
* A query parameter holding a NUL byte or another control character is refused with 400
  before any view sees it: PostgreSQL cannot store or compare NUL (it raised a 500 from a
  token lookup), and no parameter of this service needs one. Form and JSON fields are refused
  the same way by DRF's and Django's own field validation.
* The temporary files of a request's uploads are deleted before its answer leaves, not after
  (Django closes them only once the response is sent). A view keeps an upload by moving it; a
  client that reads a refusal finds nothing of its upload on disk, not for a moment. That
  holds for an upload whose parsing failed half-way too (a full disk).
* An exception a view meets from the machine under the service, a full disk or a database
  that does not answer, is a 507 or a 503 (`process_exception`), not a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBadRequest, JsonResponse
from django.http.response import HttpResponseBase

from lingoloop.characters import has_control_characters
from lingoloop.errors import ApiError, machine_refusal_response, status_error


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def refuse_bad_query(request: HttpRequest) -> HttpResponseBase | None:
    """A 400 for a query with a control character in it, else None."""
    for key, values in request.GET.lists():
        bad_key = has_control_characters(key)
        if bad_key or any(map(has_control_characters, values)):
            message = "Query parameters may not contain NUL or other control characters."
            if _is_api(request):
                error = ApiError("invalid_characters", message, field=None if bad_key else key)
                return JsonResponse(error.as_dict(), status=400)
            return HttpResponseBadRequest(message, content_type="text/plain")
    return None


def _as_api_error(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    if (
        not _is_api(request)
        or response.status_code < 400
        or response.streaming
        or response.get("Content-Type", "").startswith("application/json")
    ):
        return response
    converted = status_error(response.status_code)
    for header in ("Allow", "Retry-After", "WWW-Authenticate"):
        if header in response:
            converted[header] = response[header]
    return converted


class SyncAndAsyncMiddleware:
    """A middleware that takes the mode of the chain it is put in, so that an async chain
    (the event streams) stays on the event loop: a subclass writes `handle` (sync) and
    `__acall__` (async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self.handle(request)

    def handle(self, request: HttpRequest) -> HttpResponseBase:
        raise NotImplementedError

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        raise NotImplementedError


def close_upload_files(request: HttpRequest) -> None:
    """Close (and so delete) the temporary files of the request's upload handlers.

    `request.close()` closes the files of a body that was parsed; a parse that failed half-way
    (a full disk, a client gone) leaves its partial file in the handler only, and it stayed on
    disk as long as anything held the request: on a full disk, every later upload failed too.
    """
    for handler in getattr(request, "_upload_handlers", None) or ():
        file = getattr(handler, "file", None)
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


class RequestGuards(SyncAndAsyncMiddleware):
    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponseBase | None:
        """A full disk or an unreachable database met by a view: 507 or 503, not a 500."""
        return machine_refusal_response(request, exception)

    def handle(self, request: HttpRequest) -> HttpResponseBase:
        refused = refuse_bad_query(request)
        if refused is not None:
            return refused
        try:
            return _as_api_error(request, self.get_response(request))
        finally:
            request.close()
            close_upload_files(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        refused = refuse_bad_query(request)
        if refused is not None:
            return refused
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        try:
            return _as_api_error(request, await get_response(request))
        finally:
            request.close()
            close_upload_files(request)
