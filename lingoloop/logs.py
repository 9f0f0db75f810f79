"""Keep credentials out of logs.

An events token may travel in a query string (`?access_token=`: EventSource cannot send
headers). Servers log request lines with their query strings, so every log line and access-log
entry passes through `redact` first.
"""

from __future__ import annotations

import logging
import re

_SECRET_PARAMS = re.compile(r"((?:access_token|token|password)=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET_PARAMS.sub(r"\1[redacted]", text)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True
