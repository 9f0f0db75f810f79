"""Standard Webhooks signatures (https://www.standardwebhooks.com): the receiver checks
`webhook-signature` against HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under the
secret its account page shows. The signing itself is the `standardwebhooks` library's."""

from __future__ import annotations

from datetime import datetime

from standardwebhooks import Webhook

USER_AGENT = "LingoLoop-Webhooks/1"


def signed_headers(secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The headers of one attempt at sending `body`: signed as of `at`, so that a receiver
    can refuse a replay of an old one (the timestamp is new on every attempt, the id not)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
    }
