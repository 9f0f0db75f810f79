"""API authentication: the DRF token as `Authorization: Bearer <token>` (or `Token <token>`)."""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication
from rest_framework.request import Request


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request):  # type: ignore[no-untyped-def]
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme = header.split(" ", 1)[0].lower()
        if scheme == "token":
            # Same credential under DRF's historical keyword.
            request.META["HTTP_AUTHORIZATION"] = "Bearer" + header[len("token") :]
        elif scheme != "bearer":
            return None
        return super().authenticate(request)
