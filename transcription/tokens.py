"""The events token: a signed, read-only credential for one user's event streams.

EventSource cannot send an Authorization header, so a browser or a script that has no session
cookie passes `?access_token=<eventsToken>`. Unlike the API token it expires
(EVENTS_TOKEN_TTL) and opens nothing but streams, so it does little harm in an access log.

It is also bound to the user's API token as it was when the events token was made:
regenerating the API token (a leaked one, say) revokes every events token issued before.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac
from rest_framework.authtoken.models import Token

_SALT = "lingoloop.events-token"


def _api_token_tag(user_id: int) -> str:
    """A keyed digest of the user's current API token, "" while they have none.

    The token's payload is readable by anyone who holds it, hence a keyed digest and not the
    key itself, nor a plain hash of it.
    """
    key = Token.objects.filter(user_id=user_id).values_list("key", flat=True).first()
    return salted_hmac(_SALT, key).hexdigest()[:20] if key else ""


def events_token_for(user_id: int) -> str:
    payload = {"u": user_id, "k": _api_token_tag(user_id)}
    return signing.dumps(payload, salt=_SALT, compress=True)


def user_id_from_events_token(token: str) -> int | None:
    """The user the token speaks for, or None when it is forged, mangled, expired or was
    issued before the user's API token was regenerated."""
    try:
        payload = signing.loads(token, salt=_SALT, max_age=settings.EVENTS_TOKEN_TTL)
    except signing.BadSignature:  # SignatureExpired is a BadSignature too
        return None
    if not isinstance(payload, dict):
        return None
    user_id, tag = payload.get("u"), payload.get("k")
    if not isinstance(user_id, int) or not isinstance(tag, str):
        return None
    return user_id if constant_time_compare(tag, _api_token_tag(user_id)) else None
