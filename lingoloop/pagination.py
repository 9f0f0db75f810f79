"""`?limit=` and `?offset=`, bounded: a number past what the database's integers hold gave a
500 (`bigint out of range`), and nobody pages a thousand runs at once."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

MAX_OFFSET = 2**53  # far past any table here, well inside a 64-bit integer


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    max_limit = 200

    def get_offset(self, request: Request) -> int:
        return min(super().get_offset(request), MAX_OFFSET)
