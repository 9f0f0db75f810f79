"""The API's JSON parser: DRF's, refusing what no field of this service can hold.

A JSON string may spell a NUL (`\\u0000`) or a lone surrogate (`\\ud800`): PostgreSQL cannot
store or compare the first, UTF-8 cannot encode the second, and either reached the database
as a 500. So did a document nested deeper than Python's recursion limit. All are a 400 here,
for every view at once, before any view reads the body.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rest_framework.exceptions import ErrorDetail, ParseError, ValidationError
from rest_framework.parsers import JSONParser

from lingoloop.characters import has_control_characters


def _strings(document: Any) -> Iterator[tuple[str | None, str]]:
    """(top-level field, string) for every string in a parsed JSON document, keys included;
    iteratively, since the document may be as deep as the parser allowed."""
    if isinstance(document, dict):
        pending: list[tuple[str | None, Any]] = [(key, key) for key in document]
        pending += [(key, value) for key, value in document.items()]
    else:
        pending = [(None, document)]
    while pending:
        field, item = pending.pop()
        if isinstance(item, str):
            yield field, item
        elif isinstance(item, dict):
            pending += [(field, key) for key in item]
            pending += [(field, value) for value in item.values()]
        elif isinstance(item, list):
            pending += [(field, value) for value in item]


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class StrictJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            document = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
        for field, text in _strings(document):
            if has_control_characters(text) or _unencodable(text):
                message = ErrorDetail(
                    "JSON strings may not contain NUL, other control characters or lone "
                    "surrogates.",
                    code="invalid_characters",
                )
                clean = field is not None and not (
                    has_control_characters(field) or _unencodable(field)
                )
                raise ValidationError({field if clean and field else "non_field_errors": [message]})
        return document
