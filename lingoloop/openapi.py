"""OpenAPI documentation shared by both apps: the auth scheme and the one error shape.

Nothing here changes what the API does; drf-spectacular reads it to describe it.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """lingoloop.auth.BearerTokenAuthentication as the `bearerAuth` security scheme."""

    target_class = "lingoloop.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "The API token from `POST /api/auth/token`, sent as "
                "`Authorization: Bearer <token>` (`Token <token>` is accepted too)."
            ),
        }


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable, e.g. `not_found`, `not_audio`.")
    message = serializers.CharField(help_text="A sentence for people.")
    field = serializers.CharField(allow_null=True, help_text="The request field at fault, or null.")


class ErrorSerializer(serializers.Serializer):
    """Every refusal of the API: `{"error": {"code", "message", "field"}}`."""

    error = ErrorDetailSerializer()


_ERROR_DESCRIPTIONS = {
    400: "The request is invalid (a field, a query parameter or the body).",
    401: "No credentials, or wrong ones (`WWW-Authenticate: Bearer`).",
    403: "Not allowed: staff only, or a session request without its CSRF token.",
    404: "No such object, or not yours.",
    409: "The object's state does not allow this.",
    413: "The upload is larger than MAX_UPLOAD_BYTES.",
    415: "The body's media type is not accepted.",
    422: "The audio cannot be used: no audio stream, no length, too long or undecodable.",
    429: "Too many requests: see `Retry-After`.",
    503: "A service it needs (the database, the audio store) cannot be reached now: see "
    "`Retry-After`.",
    507: "The server has no room to store the upload (its disk is full, or below "
    "MIN_FREE_DISK_BYTES): nothing was kept; see `Retry-After`.",
}
_GUARD_503 = (
    "The database does not answer just now (`database_unavailable`): nothing was done; see "
    "`Retry-After`."
)


def error_responses(*codes: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """`{status: error response}` for `@extend_schema(responses=…)`; `descriptions` keyed
    `e409="…"` replace the generic wording of one status."""
    return {
        code: OpenApiResponse(
            ErrorSerializer, description=descriptions.get(f"e{code}", _ERROR_DESCRIPTIONS[code])
        )
        for code in codes
    }


# What lingoloop.middleware.RequestGuards refuses in any query parameter, as a pattern.
_NO_CONTROL_CHARACTERS = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]*$"
_GUARD_400 = (
    "A query parameter holds NUL or another control character, or the request is otherwise invalid."
)


def document_request_guards(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry, last: every operation may answer 400 (the middleware's
    refusal of control characters comes before any view) and 503 (a database that does not
    answer, lingoloop.errors.machine_refusal), and every free-text query
    parameter and request-body field says which characters it takes (the middleware and
    lingoloop.parsers.StrictJSONParser refuse the rest)."""
    components = result.get("components", {}).get("schemas", {})
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in (("400", _GUARD_400), ("503", _GUARD_503)):
                operation["responses"].setdefault(
                    code,
                    {
                        "description": description,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                )
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if parameter.get("in") == "query" and _is_free_text(schema):
                    schema["pattern"] = _NO_CONTROL_CHARACTERS
            for media in operation.get("requestBody", {}).get("content", {}).values():
                body = media.get("schema", {})
                if "$ref" in body:
                    body = components.get(body["$ref"].rsplit("/", 1)[-1], {})
                for field in body.get("properties", {}).values():
                    if _is_free_text(field):
                        field["pattern"] = _NO_CONTROL_CHARACTERS
    return result


def _is_free_text(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" and not ({"enum", "format", "pattern"} & schema.keys())
