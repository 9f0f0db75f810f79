"""The events token: a signed, read-only credential for one user's event streams.

EventSource cannot send an Authorization header, so a browser or a script that has no session
cookie passes `?access_token=<eventsToken>`. Unlike the API token it expires
(EVENTS_TOKEN_TTL) and opens nothing but streams, so it does little harm in an access log.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing

_SALT = "lingoloop.events-token"


def events_token_for(user_id: int) -> str:
    return signing.dumps({"u": user_id}, salt=_SALT, compress=True)


def user_id_from_events_token(token: str) -> int | None:
    """The user the token speaks for, or None when it is forged, mangled or expired."""
    try:
        payload = signing.loads(token, salt=_SALT, max_age=settings.EVENTS_TOKEN_TTL)
    except signing.BadSignature:  # SignatureExpired is a BadSignature too
        return None
    user_id = payload.get("u") if isinstance(payload, dict) else None
    return user_id if isinstance(user_id, int) else None
