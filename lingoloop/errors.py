"""One error shape for the whole API.

Every refusal is `{"error": {"code", "message", "field"}}` with a fitting status. The HTTP
layer raises `ApiError`; domain code raises a `lingoloop.refusals.Refused`, whose kind decides
the status here (`REFUSAL_STATUS`); DRF's own exceptions are translated by
`api_exception_handler`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import (
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from django.views.defaults import server_error as django_server_error
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from lingoloop import refusals

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status_code = status_code
        self.headers = headers or {}

    @classmethod
    def from_refusal(cls, refusal: refusals.Refused) -> ApiError:
        """The API's answer to a domain refusal: its status comes from its kind."""
        status_code = next(
            code for kind, code in REFUSAL_STATUS.items() if isinstance(refusal, kind)
        )
        retry_after = getattr(refusal, "retry_after", None)  # LimitReached, Unavailable
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return cls(
            refusal.code,
            refusal.message,
            field=refusal.field,
            status_code=status_code,
            headers=headers,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}

    def response(self) -> Response:
        return Response(self.as_dict(), status=self.status_code, headers=self.headers)


# Most specific first: the first kind a refusal is an instance of gives its status.
REFUSAL_STATUS: dict[type[refusals.Refused], int] = {
    refusals.NotAudio: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    refusals.Unprocessable: status.HTTP_422_UNPROCESSABLE_ENTITY,
    refusals.Conflict: status.HTTP_409_CONFLICT,
    refusals.LimitReached: status.HTTP_429_TOO_MANY_REQUESTS,
    refusals.InsufficientStorage: status.HTTP_507_INSUFFICIENT_STORAGE,
    refusals.Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
    refusals.Refused: status.HTTP_400_BAD_REQUEST,  # Invalid, and any kind not named above
}


def _first_validation_error(detail: Any, prefix: str | None = None) -> tuple[str | None, Any]:
    """The first (field, error) of a possibly nested DRF validation detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = None if key == "non_field_errors" else str(key)
            field = f"{prefix}.{name}" if prefix and name else (name or prefix)
            return _first_validation_error(value, field)
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return prefix, detail


_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ParseError: "malformed_request",
}


def machine_refusal(exc: BaseException) -> refusals.Refused | None:
    """The refusal an exception from the machine under the service stands for, if it is one
    the same request may get past later: a full disk (507) or a database that does not answer
    (503). None for anything else, which stays a 500."""
    from django.db import InterfaceError, OperationalError

    from lingoloop import disk

    if disk.is_disk_full(exc):
        return refusals.InsufficientStorage(
            "The server has no room to store this just now; nothing was kept. Try again later."
        )
    if isinstance(exc, InterfaceError) or (
        isinstance(exc, OperationalError) and not str(exc).startswith(_SQLITE_STATEMENT_ERRORS)
    ):
        return refusals.DatabaseUnavailable()
    return None


# SQLite reports a statement it cannot run as an OperationalError too: a bug, not an outage.
_SQLITE_STATEMENT_ERRORS = ("no such ", "near ", "table ", "too many ")


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, refusals.Refused):
        return ApiError.from_refusal(exc).response()
    if (refusal := machine_refusal(exc)) is not None:
        _log_machine_refusal(refusal, exc)
        return ApiError.from_refusal(refusal).response()
    if isinstance(exc, SuspiciousOperation):
        # Django's request parsing limits (DATA_UPLOAD_MAX_*), met while DRF reads the body.
        return _parsing_limit(exc).response()
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response

    field: str | None = None
    if isinstance(exc, exceptions.ValidationError):
        field, detail = _first_validation_error(exc.detail)
        code = getattr(detail, "code", None) or "invalid"
        message = str(detail)
        if field:
            message = f"{field}: {message}"
    else:
        code = _CODES.get(type(exc), getattr(exc, "default_code", "error"))
        message = str(exc.detail) if isinstance(exc.detail, str) else str(exc)
    response.data = ApiError(code, message, field=field).as_dict()
    return response


def _log_machine_refusal(refusal: refusals.Refused, exc: BaseException) -> None:
    # One line for operators, without the traceback: the cause is the machine, not the code.
    logger.error("request refused with %s: %s: %s", refusal.code, type(exc).__name__, exc)


def _parsing_limit(exc: SuspiciousOperation) -> ApiError:
    if isinstance(exc, RequestDataTooBig):
        return ApiError(
            "request_too_large",
            "The form fields beside the file are larger than this service accepts.",
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return ApiError("too_many_fields", "The request has more fields than this service reads.")
    return ApiError("bad_request", "The request could not be understood.")


# What Django itself answered, not a view: a URL that matches no route, a parsing limit, an
# exception nobody caught (handler404/handler500 below, lingoloop.middleware.RequestGuards).
_STATUS_ERRORS = {
    400: ("bad_request", "The request could not be understood."),
    401: ("not_authenticated", "Authentication credentials were not provided."),
    403: ("permission_denied", "You may not do this."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed here."),
    413: ("request_too_large", "The request is larger than this service accepts."),
    503: ("unavailable", "The service cannot answer just now. Try again shortly."),
    507: ("insufficient_storage", "The server has no room to store this just now."),
    500: ("server_error", "Something went wrong on our side."),
}


def status_error(status_code: int) -> JsonResponse:
    """The API's error shape for a bare HTTP status."""
    code, message = _STATUS_ERRORS.get(
        status_code, ("error" if status_code < 500 else "server_error", "The request failed.")
    )
    error = ApiError(code, message, status_code=status_code)
    return JsonResponse(error.as_dict(), status=status_code)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """`handler404`: a URL that matches no route (a run id that is not a UUID, say) answers
    the API's error shape under /api/, and Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return status_error(404)
    if request.path.startswith("/v1/"):
        from transcription.openai_api import not_found as openai_not_found

        return openai_not_found(request)
    return page_not_found(request, exception or Http404())


def machine_refusal_response(request: HttpRequest, exc: BaseException) -> HttpResponse | None:
    """The answer to an exception from the machine (see `machine_refusal`): the API's error
    shape under /api/, OpenAI's under /v1/ (its SDK reads the code and retries a 503), a
    plain sentence elsewhere (the upload page, the admin). None when it is not one."""
    refusal = machine_refusal(exc)
    if refusal is None:
        return None
    _log_machine_refusal(refusal, exc)
    error = ApiError.from_refusal(refusal)
    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse(error.as_dict(), status=error.status_code)
    elif request.path.startswith("/v1/"):
        from transcription.openai_api import openai_error

        response = openai_error(error.message, code=error.code, status_code=error.status_code)
    else:
        response = HttpResponse(
            error.message, status=error.status_code, content_type="text/plain; charset=utf-8"
        )
    for name, value in error.headers.items():
        response[name] = value
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    """`handler500`: the API's error shape under /api/, Django's page elsewhere; a 503 or 507
    when the exception being handled was the machine's (a middleware's database read while
    the database is down, say: views' exceptions are met by RequestGuards first)."""
    exc = sys.exc_info()[1]
    if exc is not None and (answer := machine_refusal_response(request, exc)) is not None:
        return answer
    if request.path.startswith("/api/"):
        return status_error(500)
    if request.path.startswith("/v1/"):
        from transcription.openai_api import openai_error

        return openai_error(
            "Something went wrong on our side.", code="server_error", status_code=500
        )
    return django_server_error(request)
