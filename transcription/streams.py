"""The SSE endpoints: `/api/runs/{runId}/events` and `/api/runs/events` (DESIGN.md, "Events")."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from rest_framework.authtoken.models import Token

from lingoloop.auth import is_token_shaped
from lingoloop.errors import ApiError
from lingoloop.eventhub import Subscription, current_id, db_call, encode, payload
from lingoloop.timefmt import iso_utc
from transcription.events import ALL_RUNS_CHANNEL, run_channel, user_channel
from transcription.models import RunStatus, TranscriptRun
from transcription.representations import progress_object, progress_objects, with_relations
from transcription.tokens import user_id_from_events_token

RUN_STREAM_EVENTS = {"update", "error", "done"}
USER_STREAM_EVENTS = {"update", "done"}


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(code, message, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def stream_user(request: HttpRequest) -> Any:
    """Who is asking: events token in the query, API token in the header, or the session."""
    User = get_user_model()
    query_token = request.GET.get("access_token")
    if query_token is not None:
        user_id = user_id_from_events_token(query_token)
        if user_id is None:
            if is_token_shaped(query_token) and Token.objects.filter(key=query_token).exists():
                raise _unauthorized(
                    "api_token_in_url",
                    "API tokens are not accepted in URLs; use the eventsToken of a run.",
                )
            raise _unauthorized(
                "invalid_events_token",
                "The events token is invalid, expired, or older than the user's API token.",
            )
        user = User.objects.filter(pk=user_id, is_active=True).first()
        if user is None:
            raise _unauthorized("invalid_events_token", "The events token's user is gone.")
        return user

    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in {"bearer", "token"} and key.strip():
        key = key.strip()
        token = (
            Token.objects.select_related("user").filter(key=key).first()
            if is_token_shaped(key)
            else None
        )
        if token is None or not token.user.is_active:
            raise _unauthorized("authentication_failed", "Invalid token.")
        return token.user

    if request.user.is_authenticated:
        return request.user
    raise _unauthorized("not_authenticated", "Authentication credentials were not provided.")


def _requested_last_id(request: HttpRequest) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("lastEventId")
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


@dataclass
class Opening:
    """What a stream starts from: the id read before its snapshot, and the snapshot."""

    channel: str
    current_id: int
    snapshot: dict[str, Any]
    finished: bool = False


def _open_run(request: HttpRequest, run_id: uuid.UUID) -> Opening:
    user = stream_user(request)
    channel = run_channel(run_id)
    # The id first, the snapshot second: whatever is sent in between is in both, never in
    # neither (DESIGN.md, item 2).
    start_id = current_id(channel)
    runs = TranscriptRun.objects.select_related("audio")
    if not user.is_staff:
        runs = runs.filter(owner=user)
    run = runs.filter(pk=run_id).first()
    if run is None:
        raise ApiError("not_found", "No such run.", status_code=404)
    snapshot = progress_object(run)
    if run.status == RunStatus.SUCCEEDED:
        snapshot["text"] = run.text
    return Opening(channel, start_id, snapshot, finished=run.is_finished)


def _open_user(request: HttpRequest) -> Opening:
    user = stream_user(request)
    channel = ALL_RUNS_CHANNEL if user.is_staff else user_channel(user.pk)
    start_id = current_id(channel)
    runs = with_relations(TranscriptRun.objects.all()).filter(
        status__in=[RunStatus.QUEUED, RunStatus.PROCESSING]
    )
    if not user.is_staff:
        runs = runs.filter(owner=user)
    active = progress_objects(list(runs.order_by("-created_at")[:500]))
    return Opening(channel, start_id, {"runs": active})


def _heartbeat(last_id: int) -> str:
    now = iso_utc(timezone.now())
    return encode("heartbeat", {"event": "heartbeat", "timestamp": now}, last_id)


async def _stream(
    opening: Opening, start_id: int, first: str, names: set[str], *, ends_at_done: bool
) -> AsyncIterator[str]:
    """The snapshot as event `first`, then the channel's events named in `names` as they
    come, with a heartbeat when quiet; a run's stream ends after its `done`."""
    async with Subscription(opening.channel, start_id) as subscription:
        yield encode(first, {**opening.snapshot, "event": first}, start_id)
        heartbeat = settings.SSE_HEARTBEAT_INTERVAL_MS / 1000
        pending = await subscription.catch_up()
        if not pending and opening.finished:
            yield encode("done", {**opening.snapshot, "event": "done"}, subscription.last_id)
            return
        while True:
            for event_id, event in pending:
                if event.type in names:
                    yield encode(event.type, payload(event), event_id)
                if ends_at_done and event.type == "done":
                    return
            if not await subscription.wait(heartbeat):
                yield _heartbeat(subscription.last_id)
            pending = await subscription.next_events()


def _sse_response(body: AsyncIterator[str]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _error_response(error: ApiError) -> HttpResponse:
    response = JsonResponse(error.as_dict(), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    return response


def _start_id(request: HttpRequest, opening: Opening) -> int:
    """Resume after the client's last id when it is one we could have sent, else from now."""
    requested = _requested_last_id(request)
    if requested is None or requested > opening.current_id:
        return opening.current_id
    return requested


async def run_events(request: HttpRequest, run_id: uuid.UUID) -> HttpResponseBase:
    try:
        opening = await db_call(_open_run, request, run_id)
    except ApiError as error:
        return _error_response(error)
    start_id = _start_id(request, opening)
    return _sse_response(_stream(opening, start_id, "init", RUN_STREAM_EVENTS, ends_at_done=True))


async def user_events(request: HttpRequest) -> HttpResponseBase:
    try:
        opening = await db_call(_open_user, request)
    except ApiError as error:
        return _error_response(error)
    start_id = _start_id(request, opening)
    return _sse_response(
        _stream(opening, start_id, "snapshot", USER_STREAM_EVENTS, ends_at_done=False)
    )
