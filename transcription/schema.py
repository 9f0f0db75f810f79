"""The two event streams in the OpenAPI document.

Every other operation is documented from the serializers that build its answers
(transcription/representations.py) and read its input (transcription/serializers.py). The
SSE endpoints are plain async Django views that drf-spectacular cannot see: this
postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]) describes them.
"""

from __future__ import annotations

from typing import Any

_SSE_DESCRIPTION = (
    "Server-Sent Events (`text/event-stream`). Every event has an `id`; reconnect with "
    "`Last-Event-ID` (or `?lastEventId=`) to get each missed event once, in order. "
    'A `heartbeat` event (`{"event": "heartbeat", "timestamp": …}`) is sent every '
    "SSE_HEARTBEAT_INTERVAL_MS. Auth: session cookie, `Authorization: Bearer`, or "
    "`?access_token=<eventsToken>` (the API token is refused in the URL)."
)


def _sse_operation(
    operation_id: str, summary: str, description: str, *, run_id: bool
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    if run_id:
        parameters.append(
            {
                "name": "run_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            }
        )
    parameters += [
        {
            "name": "access_token",
            "in": "query",
            "required": False,
            "description": "The `eventsToken` of a run (for EventSource, which sends no "
            "headers). Not the API token.",
            "schema": {"type": "string"},
        },
        {
            "name": "lastEventId",
            "in": "query",
            "required": False,
            "description": "Resume after this event id (as the `Last-Event-ID` header).",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "Resume after this event id; EventSource sends it on reconnect.",
            "schema": {"type": "integer", "minimum": 0},
        },
    ]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses: dict[str, Any] = {
        "200": {
            "description": description,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        "401": {
            "description": "No credentials, or an invalid or expired events token.",
            "content": error,
        },
    }
    if run_id:
        responses["404"] = {"description": "No such run, or not yours.", "content": error}
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": _SSE_DESCRIPTION,
        "parameters": parameters,
        "tags": ["runs"],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}, {}],
        "responses": responses,
    }


def add_event_streams(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: the SSE endpoints are async Django views that
    drf-spectacular cannot see; describe them by hand."""
    paths = result.setdefault("paths", {})
    paths["/api/runs/events"] = {
        "get": _sse_operation(
            "streamUserEvents",
            "Live events of all your runs (staff: all runs)",
            '`snapshot` (`{"runs": [progress object…]}`, the active runs, on connect), '
            "then `update` and `done` (the progress object of one run plus `event`), and "
            "`heartbeat`.",
            run_id=False,
        )
    }
    paths["/api/runs/{run_id}/events"] = {
        "get": _sse_operation(
            "streamRunEvents",
            "Live events of one run",
            "`init` (the progress object, first on every connect), `update` (with "
            "`newSegments`), `error` (an attempt failed: `attempt`, `willRetry`, `retryAt`), "
            "`done` (terminal; with `text` when succeeded; the stream then ends) and "
            "`heartbeat`. Each `data` is the progress object plus `event`.",
            run_id=True,
        )
    }
    result["paths"] = dict(sorted(paths.items()))
    return result
