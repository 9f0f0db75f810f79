"""Log lines an operator can search: the ids that tie a line to its request, run, job and worker,
one JSON object per line with LOG_FORMAT=json, and no credentials in either format.

* The request id is the `X-Request-ID` of each request, read or made by asgi-correlation-id's
  ASGI middleware (lingoloop/asgi.py) in front of everything, the event streams included, and
  kept in its contextvar: each request is its own asyncio task, and asgiref copies the context
  into the thread that runs a sync view.
* Run, job and worker ids are set with `log_context()` around each job attempt
  (tasks_admin/runner.py), in a worker process or in the web process for a sync run.
* An events token may travel in a query string (`?access_token=`: EventSource cannot send
  headers), an API token in an Authorization header, and either may end up in an exception's
  text. Servers log request lines with their query strings, so every access-log entry passes
  through `redact`, and so does every formatted line, its traceback and, in JSON, every field.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from asgi_correlation_id.context import correlation_id as request_id
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

__all__ = ["request_id"]

_SECRET_PARAMS = re.compile(
    r"((?:access_token|token|password|secret)=)[^&\s\"']+"
    # An Authorization header's value, or a bearer token quoted anywhere.
    r"|(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|token\s+)?|\bbearer\s+)[^\s\"',;]+"
    # A dict or JSON body with a secret in it: {"token": "…"}, {'password': '…'}.
    r"|([\"'](?:access_token|token|password|secret|eventsToken)[\"']\s*:\s*[\"'])[^\"']+",
    re.IGNORECASE,
)
# Fields given in `extra=` whose values are secrets whatever they look like.
_SECRET_KEYS = re.compile(r"token|password|secret|authorization|cookie", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _SECRET_PARAMS.sub(
        lambda m: (m.group(1) or m.group(2) or m.group(3)) + REDACTED,
        text,
    )


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


# --- Ids -------------------------------------------------------------------------------------

CONTEXT_FIELDS = ("request_id", "run_id", "job_id", "worker_id")
_NO_IDS: Mapping[str, str] = MappingProxyType({})
_ids: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("log_ids", default=_NO_IDS)


@contextlib.contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Add run_id, job_id or worker_id to every line logged inside the block (None is left
    out); what `add_log_context` adds inside it goes at the end of the block too."""
    token = _ids.set(_merged(ids))
    try:
        yield
    finally:
        _ids.reset(token)


def add_log_context(**ids: object) -> None:
    """Add ids from here to the end of the enclosing `log_context` block."""
    _ids.set(_merged(ids))


def _merged(ids: Mapping[str, object]) -> dict[str, str]:
    unknown = set(ids) - set(CONTEXT_FIELDS[1:])
    if unknown:
        raise TypeError(f"not log context ids: {', '.join(sorted(unknown))}")
    return {**_ids.get(), **{name: str(value) for name, value in ids.items() if value is not None}}


def current_ids() -> dict[str, str]:
    """The ids that apply here, only those that are set."""
    ids = dict(_ids.get())
    if found := request_id.get():
        ids["request_id"] = found
    return {name: ids[name] for name in CONTEXT_FIELDS if name in ids}


class SafeStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The console handler, which never lets a log line fail the code that logs it.

    logging's own handler turns an error in `emit` (a stream that cannot be written: a full
    disk under the log file, a closed pipe) into `handleError`, but not one in its filters:
    a record that cannot be formatted (`logger.info("%s %s", one)`, an argument whose
    `__str__` raises) raised out of the logging call from RedactSecretsFilter's
    `getMessage()`, and a request that logged it answered 500. Here any error of the
    handler's is `handleError`'s: the line is lost, with one note on standard error when it
    can still be written."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        try:
            return bool(super().handle(record))
        except Exception:
            self.handleError(record)
            return False

    def handleError(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            super().handleError(record)


class ServerErrorsOnly(logging.Filter):
    """On `django.request`: only 5xx answers. Django logs each 4xx as a warning ("Not Found:
    /x") that the access log line already says, with the same request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not 400 <= getattr(record, "status_code", 500) < 500


class ContextFilter(logging.Filter):
    """Puts the ids that apply on each record (None for those that do not), for formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, ids.get(name))
        return True


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


def is_sane_request_id(value: str) -> bool:
    """An incoming X-Request-ID is kept when it is a short token of printable characters (a
    UUID, a proxy's hex id, a trace id); anything else is replaced, so a client cannot forge
    log lines or stuff them."""
    return _REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


# --- Formatters --------------------------------------------------------------------------------


def short_id(value: str) -> str:
    """The first 8 characters of a UUID, as the admin shows ids; other values whole."""
    try:
        return uuid.UUID(value).hex[:8]
    except ValueError:
        return value


class TextFormatter(logging.Formatter):
    """Readable lines: `time LEVEL logger [req=… run=… job=… worker=…]: message`, the ids
    that apply shown short; a traceback follows on its own lines. Redacted whole."""

    _labels = {"request_id": "req", "run_id": "run", "job_id": "job", "worker_id": "worker"}

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{self._labels[name]}={short_id(value)}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None))
        )
        record.ids = f" [{ids}]" if ids else ""
        return redact(super().format(record))


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object a line: time (ISO 8601 UTC), level, logger, message, the ids that apply,
    `exc_info` (the traceback) when there is one, and whatever `extra=` gave. Every string in
    it is redacted before it is serialized, so a secret cannot escape through a traceback or a
    field, and the line stays valid JSON."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        fields: dict[str, Any] = {}
        super().add_fields(fields, record, message_dict)
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        for name in ("level", "logger", "message", *CONTEXT_FIELDS):  # ids: those that apply
            if (value := fields.pop(name, None)) is not None or name == "message":
                log_data[name] = value
        log_data.update(fields)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: _clean(key, value) for key, value in log_data.items()}


def _clean(key: object, value: object) -> object:
    if isinstance(key, str) and _SECRET_KEYS.search(key) and key not in CONTEXT_FIELDS:
        return REDACTED if value not in (None, "") else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _clean(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(None, v) for v in value]
    return redact(str(value))


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}
