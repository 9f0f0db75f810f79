"""The SSE endpoints: `/api/runs/{runId}/events` and `/api/runs/events` (DESIGN.md, "Events").

A stream opens with one batched read (`db_batch`): the streams that connect while a database
thread is busy are opened together, each credential checked once and each run read once, so a
thousand watchers of one run that connect at once cost a few reads, not a thousand.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from rest_framework.authtoken.models import Token

from lingoloop import metrics
from lingoloop.auth import is_token_shaped
from lingoloop.errors import ApiError
from lingoloop.eventhub import (
    StoredEvent,
    Subscription,
    current_id,
    db_batch,
    encode,
    encode_stored,
    payload,
)
from lingoloop.streaming import EventStreamResponse, long_lived
from lingoloop.timefmt import iso_utc
from transcription.events import ALL_RUNS_CHANNEL, run_channel, user_channel
from transcription.models import TERMINAL_RUN_STATUSES, RunStatus, TranscriptRun
from transcription.representations import progress_object, progress_objects, with_relations
from transcription.tokens import user_id_from_events_token

RUN_STREAM_EVENTS = {"update", "error", "done"}
USER_STREAM_EVENTS = {"update", "done"}


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(code, message, status_code=401, headers={"WWW-Authenticate": "Bearer"})


# A credential as a stream presents it: ("events", token) from the query, ("api", key) from
# the Authorization header; None for the session.
Credential = tuple[str, str] | None


def _credential(request: HttpRequest) -> Credential:
    query_token = request.GET.get("access_token")
    if query_token is not None:
        return ("events", query_token)
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in {"bearer", "token"} and key.strip():
        return ("api", key.strip())
    return None


def _user_of_events_token(token: str) -> Any:
    user_id = user_id_from_events_token(token)
    if user_id is None:
        if is_token_shaped(token) and Token.objects.filter(key=token).exists():
            raise _unauthorized(
                "api_token_in_url",
                "API tokens are not accepted in URLs; use the eventsToken of a run.",
            )
        raise _unauthorized(
            "invalid_events_token",
            "The events token is invalid, expired, or older than the user's API token.",
        )
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        raise _unauthorized("invalid_events_token", "The events token's user is gone.")
    return user


def _user_of_api_token(key: str) -> Any:
    token = (
        Token.objects.select_related("user").filter(key=key).first()
        if is_token_shaped(key)
        else None
    )
    if token is None or not token.user.is_active:
        raise _unauthorized("authentication_failed", "Invalid token.")
    return token.user


Found = TypeVar("Found")


def _once(memo: dict[Any, Any], key: Any, read: Callable[[], Found]) -> Found:
    """`read()` the first time `key` is asked for in a batch of openings, then its answer (a
    refusal too: it is raised again)."""
    if key not in memo:
        try:
            memo[key] = read()
        except ApiError as error:
            memo[key] = error
    found = memo[key]
    if isinstance(found, ApiError):
        raise found
    return found  # type: ignore[no-any-return]


def stream_user(request: HttpRequest, memo: dict[Any, Any]) -> Any:
    """Who is asking: events token in the query, API token in the header, or the session.
    A credential shared by several streams of one batch is checked once."""
    credential = _credential(request)
    if credential is None:
        if request.user.is_authenticated:
            return request.user
        raise _unauthorized("not_authenticated", "Authentication credentials were not provided.")
    kind, value = credential
    read = _user_of_events_token if kind == "events" else _user_of_api_token
    return _once(memo, credential, lambda: read(value))


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


@dataclass
class _RunRead:
    """A run as its streams open on it: the id read first, then the run and its snapshot."""

    current_id: int
    owner_id: int
    snapshot: dict[str, Any]
    finished: bool


def _read_run(run_id: uuid.UUID) -> _RunRead:
    # The id first, the snapshot second: whatever is sent in between is in both, never in
    # neither (DESIGN.md, item 2).
    start_id = current_id(run_channel(run_id))
    run = TranscriptRun.objects.select_related("audio").filter(pk=run_id).first()
    if run is None:
        raise ApiError("not_found", "No such run.", status_code=404)
    snapshot = progress_object(run)
    if run.status == RunStatus.SUCCEEDED:
        snapshot["text"] = run.text
    return _RunRead(start_id, run.owner_id, snapshot, run.is_finished)


def _open_run(request: HttpRequest, run_id: uuid.UUID, memo: dict[Any, Any]) -> Opening:
    user = stream_user(request, memo)
    read = _once(memo, run_id, lambda: _read_run(run_id))
    if not user.is_staff and read.owner_id != user.pk:
        raise ApiError("not_found", "No such run.", status_code=404)
    return Opening(run_channel(run_id), read.current_id, read.snapshot, read.finished)


def _open_user(request: HttpRequest, memo: dict[Any, Any]) -> Opening:
    user = stream_user(request, memo)
    return _once(memo, ("user", user.pk, user.is_staff), lambda: _read_user_runs(user))


def _read_user_runs(user: Any) -> Opening:
    channel = ALL_RUNS_CHANNEL if user.is_staff else user_channel(user.pk)
    start_id = current_id(channel)
    runs = with_relations(TranscriptRun.objects.all()).filter(
        status__in=[RunStatus.QUEUED, RunStatus.PROCESSING]
    )
    if not user.is_staff:
        runs = runs.filter(owner=user)
    active = progress_objects(list(runs.order_by("-created_at")[:500]))
    return Opening(channel, start_id, {"runs": active})


Ask = TypeVar("Ask")


def _each(
    open_one: Callable[[Ask, dict[Any, Any]], Opening], asks: list[Ask]
) -> list[Opening | Exception]:
    """Open a batch of streams, sharing what they share (a credential, a run) through one
    memo; a refusal answers its own stream only."""
    memo: dict[Any, Any] = {}
    out: list[Opening | Exception] = []
    for ask in asks:
        try:
            out.append(open_one(ask, memo))
        except ApiError as error:
            out.append(error)
    return out


def _open_runs(asks: list[tuple[HttpRequest, uuid.UUID]]) -> list[Opening | Exception]:
    return _each(lambda ask, memo: _open_run(*ask, memo), asks)


def _open_users(requests: list[HttpRequest]) -> list[Opening | Exception]:
    return _each(_open_user, requests)


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
        if opening.finished and start_id == opening.current_id:
            pending = _after_the_finish(pending)
        if not pending and opening.finished:
            yield encode("done", {**opening.snapshot, "event": "done"}, subscription.last_id)
            return
        while True:
            for _, event in pending:
                if event.type in names:
                    yield encode_stored(event)
                if ends_at_done and event.type == "done":
                    return
            if not await subscription.wait(heartbeat):
                yield _heartbeat(subscription.last_id)
            pending = await subscription.next_events()


def _after_the_finish(pending: list[tuple[int, StoredEvent]]) -> list[tuple[int, StoredEvent]]:
    """What a new watcher of a finished run still needs of the events stored since its
    snapshot was read: not those describing the finish itself (the run's last `update` and
    its `done`, stored just after the commit that finished it, so they may come after the
    snapshot's id), which the snapshot already shows; only what came after (a retry)."""
    for index, (_, event) in enumerate(pending):
        if payload(event).get("status") not in TERMINAL_RUN_STATUSES:
            return pending[index:]
    return []


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


@long_lived
async def run_events(request: HttpRequest, run_id: uuid.UUID) -> HttpResponseBase:
    try:
        opening = await db_batch(_open_runs, (request, run_id))
    except ApiError as error:
        return _error_response(error)
    start_id = _start_id(request, opening)
    return EventStreamResponse(
        metrics.watched_stream(
            "run", _stream(opening, start_id, "init", RUN_STREAM_EVENTS, ends_at_done=True)
        )
    )


@long_lived
async def user_events(request: HttpRequest) -> HttpResponseBase:
    try:
        opening = await db_batch(_open_users, request)
    except ApiError as error:
        return _error_response(error)
    start_id = _start_id(request, opening)
    return EventStreamResponse(
        metrics.watched_stream(
            "user", _stream(opening, start_id, "snapshot", USER_STREAM_EVENTS, ends_at_done=False)
        )
    )
