"""The server's HTTP API, as the client uses it.

Every failure becomes a `ClientError` with a sentence to show and the exit code it means:
the server's own `message` for a refusal (its error shape is `{"error": {"code", "message"}}`),
`Unreachable` when there is no answer, `AuthRefused` for 401/403. Nothing the server sends is
trusted: an answer that is not the API's JSON (a proxy's HTML page, garbage) is an error that
says so, not a traceback.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

USER_AGENT = "lingoloop-cli/0.1"
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class ClientError(Exception):
    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class AuthRefused(ClientError):
    exit_code = EXIT_UNREACHABLE


class StreamUnavailable(ClientError):
    """The event stream cannot be had here (a proxy that buffers or rewrites it)."""


def server_message(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of a refusal: the API's own, or a description of what came instead."""
    try:
        body = response.json()
        error = body["error"]
        return str(error.get("code") or ""), str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return "", (
            f"The server answered {response.status_code} {response.reason_phrase} with "
            f"{kind}, not LingoLoop's API: is {response.request.url.copy_with(path='/')} "
            "a LingoLoop server?"
        )


class UploadReader(io.BufferedReader):
    """A file that reports how many bytes have been read from it (httpx reads an upload's
    file in chunks while it sends them)."""

    def __init__(self, path: Path, on_read: Callable[[int], None]) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._on_read = on_read

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if chunk:
            self._on_read(len(chunk))
        return chunk


class Api:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        headers = {"User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self.http = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Unreachable(f"{self.url} did not answer in time.") from None
        except httpx.TransportError as error:
            raise Unreachable(
                f"Cannot reach {self.url}: {error or type(error).__name__}."
            ) from None
        check(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ClientError(server_message(response)[1], status=response.status_code) from None

    # --- The calls --------------------------------------------------------------------------

    def token(self, username: str, password: str) -> str:
        answer = self.json(
            "POST", "/api/auth/token", data={"username": username, "password": password}
        )
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ClientError("The server's answer held no token.")
        return token

    def transcribe(
        self, path: Path, fields: dict[str, str], on_read: Callable[[int], None]
    ) -> dict[str, Any]:
        """Upload one file; the run as the server answered it (a sync run is finished)."""
        with UploadReader(path, on_read) as reader:
            return dict(
                self.json(
                    "POST",
                    "/api/transcribe",
                    files={"file": (path.name, reader, "application/octet-stream")},
                    data=fields,
                    # A sync transcription answers once it is done.
                    timeout=httpx.Timeout(300.0, connect=10.0),
                    headers={"Idempotency-Key": str(uuid.uuid4())},
                )
            )

    def runs(self, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        answer = self.json("GET", "/api/runs", params=params)
        return list(answer["results"] if isinstance(answer, dict) else answer)

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.json("GET", f"/api/runs/{run_id}"))

    def progress(self, run_id: str) -> dict[str, Any]:
        return dict(self.json("GET", f"/api/runs/{run_id}/progress"))

    def transcript(self, run_id: str, fmt: str) -> bytes:
        return self.request("GET", f"/api/runs/{run_id}/transcript", params={"format": fmt}).content

    def cancel(self, run_id: str) -> dict[str, Any]:
        return dict(self.json("POST", f"/api/runs/{run_id}/cancel"))

    def retry(self, run_id: str) -> dict[str, Any]:
        return dict(self.json("POST", f"/api/runs/{run_id}/retry"))

    def delete(self, run_id: str) -> None:
        self.request("DELETE", f"/api/runs/{run_id}")


def check(response: httpx.Response) -> None:
    """Raise the error a refused answer means."""
    if response.status_code < 300:
        return
    if response.status_code < 400:
        raise ClientError(
            f"The server answered {response.status_code} and points elsewhere "
            f"({response.headers.get('location', 'no location')}): give that URL to "
            "`lingoloop login`."
        )
    response.read()
    code, message = server_message(response)
    if response.status_code in (401, 403):
        raise AuthRefused(
            f"{message} (run `lingoloop login`, or check LINGOLOOP_TOKEN)",
            status=response.status_code,
            code=code,
        )
    raise ClientError(message, status=response.status_code, code=code)
