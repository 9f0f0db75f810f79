"""`python -m lingoloop.server [daphne options]`: daphne, with an access log that never shows
tokens carried in query strings.

Takes daphne's own options (`-b 0.0.0.0 -p 8000 …`); the application defaults to
`lingoloop.asgi:application`.
"""

from __future__ import annotations

import sys

from daphne import cli
from daphne.access import AccessLogGenerator

from lingoloop.logs import redact

APPLICATION = "lingoloop.asgi:application"


class RedactingAccessLog(AccessLogGenerator):
    def write_entry(  # type: ignore[no-untyped-def]
        self, host, date, request, status=None, length=None, ident=None, user=None
    ) -> None:
        super().write_entry(host, date, redact(request), status, length, ident, user)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(":" in arg and not arg.startswith("-") for arg in args):
        args.append(APPLICATION)
    cli.AccessLogGenerator = RedactingAccessLog  # type: ignore[misc]
    cli.CommandLineInterface().run(args)


if __name__ == "__main__":
    main()
