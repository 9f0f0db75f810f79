"""What the domain says when it refuses a request: no HTTP here.

Services and the probe raise these; the API layer (lingoloop.errors) turns each kind into its
status code and the API's error shape, and the admin shows the message. So the same refusal
reads the same wherever it is met, and domain code never decides a status code.
"""

from __future__ import annotations


class Refused(Exception):
    """A request the service will not carry out, with a reason the user can act on.

    `code` is stable and machine-readable; `message` is a sentence fit to show the user;
    `field` names the input it concerns, if one does.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class Invalid(Refused):
    """The request itself is wrong: a missing, malformed or contradictory option."""


class NotAudio(Refused):
    """The file is not a kind of audio the service reads."""


class Unprocessable(Refused):
    """The file is audio, but not audio that can be transcribed (empty, truncated, too long)."""


class Conflict(Refused):
    """The thing asked for does not fit the current state (cancel a finished run, say)."""


class Unavailable(Refused):
    """Something the service depends on (the audio store, say) cannot be reached now; the
    same request may succeed later. Nothing was kept of the request."""

    def __init__(self, code: str, message: str, *, retry_after: int = 30) -> None:
        super().__init__(code, message)
        self.retry_after = max(1, retry_after)


class InsufficientStorage(Unavailable):
    """The machine has no room to keep what the request sends (a full disk, or free space
    below MIN_FREE_DISK_BYTES). Everything the request wrote was removed again."""

    def __init__(self, message: str = "", *, retry_after: int = 60) -> None:
        super().__init__(
            "insufficient_storage",
            message
            or "The server has no room to store this upload just now; nothing was kept. "
            "Try again later.",
            retry_after=retry_after,
        )


class DatabaseUnavailable(Unavailable):
    """The database does not answer (stopped, restarting, unreachable): nothing was done."""

    def __init__(self, *, retry_after: int = 5) -> None:
        super().__init__(
            "database_unavailable",
            "The service's database cannot be reached just now; nothing was changed. "
            "Try again shortly.",
            retry_after=retry_after,
        )


class LimitReached(Refused):
    """A per-user limit; the same request may succeed after `retry_after` seconds."""

    def __init__(
        self, code: str, message: str, *, retry_after: int, field: str | None = None
    ) -> None:
        super().__init__(code, message, field=field)
        self.retry_after = max(1, retry_after)
