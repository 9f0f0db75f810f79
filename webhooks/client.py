"""One HTTP attempt at a webhook destination, on the address that was checked.

The destination is checked again here, not only at submit time (transcription/callbacks.py):
the host is resolved, every address must be public, and the request goes to the first address
that accepts a connection, by number, with the host name in `Host` and in TLS (SNI and the
certificate check), so DNS cannot answer one address to the check and another to the
connection. Hosts in CALLBACK_ALLOWED_HOSTS are trusted by name and connected to by name.

Each attempt is bounded: a connect timeout, a deadline for the whole answer (checked between
reads, each read bounded too), no redirect followed, no proxy from the environment, and at
most WEBHOOK_RESPONSE_MAX_BYTES of the answer read, undecoded (no gzip bomb).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult, urlsplit, urlunsplit

from django.conf import settings

from lingoloop.characters import has_control_characters
from transcription.callbacks import IPAddress, Unresolvable, UnsafeDestination, check_callback_url

EXCERPT_CHARACTERS = 500


@dataclass(frozen=True)
class Answer:
    """What one attempt got: an HTTP status, or `error` when no answer came."""

    status_code: int | None
    duration_ms: int
    excerpt: str = ""
    error: str = ""
    retry_after: timedelta | None = None
    # The destination may not be called at all (an internal address): no retry changes that.
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST `body` to `url` once; never raises for what the network or receiver does."""
    import httpx  # here: web processes, which never send, do without it (3 MiB)

    started = time.monotonic()

    def spent() -> int:
        return round(1000 * (time.monotonic() - started))

    try:
        addresses = check_callback_url(url)
    except Unresolvable as exc:
        return Answer(None, spent(), error=str(exc))
    except UnsafeDestination as exc:
        return Answer(None, spent(), error=str(exc), refused=True)
    parts = urlsplit(url)
    deadline = started + settings.WEBHOOK_TIMEOUT_MS / 1000
    error = "No address of the host accepted a connection."
    targets: list[IPAddress | None] = [*addresses] or [None]  # none: an allow-listed name
    for target in targets:
        try:
            return _post_to(parts, target, body, headers, deadline, spent)
        except httpx.ConnectError as exc:
            error = f"Could not connect: {_reason(exc)}"
        except httpx.TimeoutException:
            return Answer(None, spent(), error="Timed out.")
        except httpx.HTTPError as exc:
            return Answer(None, spent(), error=f"The connection failed: {_reason(exc)}")
    return Answer(None, spent(), error=error)


def _post_to(
    url_parts: SplitResult,
    target: IPAddress | None,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    spent: Callable[[], int],
) -> Answer:
    import httpx

    host = url_parts.hostname or ""
    default_port = 443 if url_parts.scheme == "https" else 80
    port = url_parts.port or default_port
    sent_headers = {**headers, "Accept-Encoding": "identity"}
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    sent_headers["Host"] = named if port == default_port else f"{named}:{port}"
    extensions: dict[str, object] = {}
    netloc = named
    if target is not None:
        netloc = f"[{target}]" if isinstance(target, ipaddress.IPv6Address) else str(target)
        if url_parts.scheme == "https":
            extensions["sni_hostname"] = host
    request_url = urlunsplit(
        (url_parts.scheme, f"{netloc}:{port}", url_parts.path or "/", url_parts.query, "")
    )
    auth = None
    if url_parts.username:
        auth = httpx.BasicAuth(url_parts.username, url_parts.password or "")
    timeout = httpx.Timeout(
        settings.WEBHOOK_TIMEOUT_MS / 1000, connect=settings.WEBHOOK_CONNECT_TIMEOUT_MS / 1000
    )
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout) as client:
        request = client.build_request(
            "POST", request_url, content=body, headers=sent_headers, extensions=extensions
        )
        response = client.send(request, auth=auth, stream=True)
        try:
            head = bytearray()
            for chunk in response.iter_raw():
                head += chunk
                if len(head) >= settings.WEBHOOK_RESPONSE_MAX_BYTES:
                    break
                if time.monotonic() > deadline:
                    return Answer(
                        response.status_code, spent(), error="Timed out reading the answer."
                    )
            return Answer(
                response.status_code,
                spent(),
                excerpt=_excerpt(bytes(head)),
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        finally:
            response.close()


def _excerpt(raw: bytes) -> str:
    text = raw[: EXCERPT_CHARACTERS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARACTERS]
    return "".join("?" if has_control_characters(ch) else ch for ch in text)


def _retry_after(value: str | None) -> timedelta | None:
    """`Retry-After` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - datetime.now(UTC))


def _reason(exc: Exception) -> str:
    return (str(exc) or type(exc).__name__)[:200]
