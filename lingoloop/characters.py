"""Which characters no parameter, field or key of this service may hold."""

from __future__ import annotations

import re

# C0 controls and DEL, but for tab, newline and carriage return. NUL among them: PostgreSQL
# can neither store nor compare it, and it reached the database as a 500.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_characters(text: str) -> bool:
    """NUL or another control character other than tab, newline and carriage return."""
    return _CONTROL.search(text) is not None
