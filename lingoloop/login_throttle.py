"""Login throttling with django-axes: who is counted together, and what a refusal looks like.

Every door that checks a password (`POST /api/auth/token`, `/accounts/login/`,
`/admin/login/`) goes through `django.contrib.auth.authenticate`, where django-axes counts the
failures in the database. Once LOGIN_FAILURE_LIMIT failures fall within LOGIN_COOLOFF_SECONDS,
the door answers 429 with `Retry-After` (the failure that reaches the limit already does) until
enough of them are older than the cool-off. Logins refused meanwhile are not counted, so the
lock ends when Retry-After says, and nothing is locked for good.

Who is counted together (`lockout_parameters`):

* every client address on its own: one address guessing at any usernames is stopped;
* a username across all addresses, so that many addresses guessing at one account are
  stopped too, except at the addresses that username has logged in from before. Someone who
  hammers a username from elsewhere cannot lock its owner out of the places they use; at worst
  the owner waits out the cool-off on an address they never used.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import timedelta
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import (
    get_client_http_accept,
    get_client_ip_address,
    get_client_path_info,
    get_client_user_agent,
    get_client_username,
    get_cool_off,
    get_failure_limit,
)
from axes.models import AccessBase, AccessLog
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from rest_framework.request import Request

from lingoloop.errors import ApiError


def client_address(request: HttpRequest) -> str | None:
    """`AXES_CLIENT_IP_CALLABLE`: REMOTE_ADDR; behind TRUSTED_PROXY_COUNT proxies, each of
    which appends the address it was reached from to X-Forwarded-For, the address the outermost
    one was reached from. Anything further left was written by the client and is not believed.
    """
    remote = request.META.get("REMOTE_ADDR")
    hops = settings.TRUSTED_PROXY_COUNT
    if hops:
        forwarded = [
            part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        ]
        if len(forwarded) >= hops:
            candidate = forwarded[-hops]
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                pass  # not an address: keep the proxy's own rather than store junk
    return remote


# django-axes keeps a failed login's username in a column of 255 characters (AccessAttempt,
# AccessLog). A longer one, which no account can have, made PostgreSQL refuse the row and the
# door answer 500 (Django's login form does not check the length before `authenticate`): it
# is cut to fit, as django-axes cuts the user agent and the path itself.
USERNAME_COLUMN = AccessBase._meta.get_field("username").max_length or 255


def attempted_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """AXES_USERNAME_CALLABLE: the username a login gives (its credentials, or else the
    posted form's field), cut to the column django-axes keeps it in."""
    field = getattr(settings, "AXES_USERNAME_FORM_FIELD", "username")  # axes.conf sets it
    if credentials:
        name = credentials.get(field)
    else:
        name = getattr(request, "data", request.POST).get(field)
    return name[:USERNAME_COLUMN] if isinstance(name, str) else name


def lockout_parameters(
    request_or_attempt: HttpRequest | AccessBase, credentials: dict[str, Any] | None = None
) -> list[str | list[str]]:
    """`AXES_LOCKOUT_PARAMETERS`: count failures per address, and per username except at the
    addresses where that username has logged in before (see the module docstring)."""
    if isinstance(request_or_attempt, AccessBase):
        username, address = request_or_attempt.username, request_or_attempt.ip_address
    else:
        username = get_client_username(request_or_attempt, credentials)
        address = getattr(request_or_attempt, "axes_ip_address", None)
    if username and address:
        known = AccessLog.objects.filter(username=username, ip_address=address).exists()
        if known:
            return ["ip_address"]
    return ["ip_address", "username"]


def record_api_login(request: HttpRequest | Request, username: str) -> None:
    """Log a password login to the API where django-axes logs those of the pages.

    `authenticate` alone sends no `user_logged_in` (`login` does, and would start a session):
    without this row a script's address would never count as one its user logs in from.
    """
    if getattr(settings, "AXES_DISABLE_ACCESS_LOG", False):
        return
    AccessLog.objects.create(
        username=username,
        ip_address=get_client_ip_address(request),
        user_agent=get_client_user_agent(request),
        http_accept=get_client_http_accept(request),
        path_info=get_client_path_info(request),
    )


def retry_after_seconds(request: HttpRequest | Request, credentials: dict[str, Any] | None) -> int:
    """Seconds until this request would no longer be locked out.

    Each group of attempts counted together is locked while its failures within the cool-off
    add up to the limit. Walking them newest first, the failure that reaches the limit is the
    one whose expiry lifts the lock; with several groups locked, the last of them to lift.
    """
    AxesProxyHandler.update_request(request)
    cool_off = get_cool_off(request) or timedelta(0)
    limit = get_failure_limit(request, credentials)
    now = timezone.now()
    unlock_at = now
    for attempts in AxesDatabaseHandler().get_user_attempts(request, credentials):
        total = 0
        for failures, last_failure in attempts.order_by("-attempt_time").values_list(
            "failures_since_start", "attempt_time"
        ):
            total += failures
            if total >= limit:
                unlock_at = max(unlock_at, last_failure + cool_off)
                break
    # A failure counts up to and including the instant its cool-off ends: the lock lifts the
    # second after.
    return max(1, math.floor((unlock_at - now).total_seconds()) + 1)


def too_many_attempts(
    request: HttpRequest | Request, credentials: dict[str, Any] | None
) -> ApiError:
    """The API's answer to a locked-out login: 429 in the one error shape, with Retry-After."""
    seconds = retry_after_seconds(request, credentials)
    return ApiError(
        "too_many_login_attempts",
        f"Too many failed logins. Try again in {_wait_label(seconds)}.",
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """`AXES_LOCKOUT_CALLABLE`: a 429 page (JSON under /api/) with `Retry-After`.

    The credentials are read from the request: django-axes 8.3.1's async middleware passes them
    in the place of the original response.
    """
    credentials = getattr(request, "axes_credentials", None)
    if request.path.startswith("/api/"):
        error = too_many_attempts(request, credentials)
        response: HttpResponse = JsonResponse(error.as_dict(), status=error.status_code)
        seconds = int(error.headers["Retry-After"])
    else:
        seconds = retry_after_seconds(request, credentials)
        response = render(
            request,
            "registration/locked_out.html",
            {"wait": _wait_label(seconds), "login_url": request.path},
            status=429,
        )
    response["Retry-After"] = str(seconds)
    return response


def _wait_label(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = round(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
