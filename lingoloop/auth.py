"""API authentication: the DRF token as `Authorization: Bearer <token>` (or `Token <token>`)."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.request import Request

SCHEMES = {b"bearer", b"token"}


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in SCHEMES:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header.")
        try:
            key = parts[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token header.") from None
        if not is_token_shaped(key):
            raise exceptions.AuthenticationFailed("Invalid token.")
        return self.authenticate_credentials(key)


def is_token_shaped(key: str) -> bool:
    """Letters and digits only, as every token key is: anything else (a NUL, which PostgreSQL
    refuses to compare, say) is a wrong token without asking the database."""
    return 0 < len(key) <= 64 and key.isascii() and key.isalnum()
