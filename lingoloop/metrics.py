"""Prometheus metrics: what every process counts, and `/metrics`, where they are read.

prometheus-client runs in multiprocess mode: each process (web servers, a worker cluster's
master, and each of django-q2's forked worker processes) writes its values to files of its
own in PROMETHEUS_MULTIPROC_DIR (memory-mapped: an update is a write to memory, no system
call, no database), and a scrape of any web process of the machine adds them all up. The
settings put the folder in the environment before anything imports prometheus-client, which
chooses its mode at import. A forked process starts files of its own at its first update
(prometheus-client notices the new pid), so nothing a parent counted is counted twice.

* Counters and histograms of a process that ended are kept: its jobs happened, and totals
  must not go back while the service runs. `prepare_folder()`, called as a web server or a
  worker cluster starts, deletes them only when no process of the folder is alive any more
  (a fresh start: Prometheus reads it as any restart of a counter).
* The one gauge counted in processes, the open SSE streams, is `livesum`: a process that
  ended (even killed with SIGKILL) stops counting at the next scrape, which drops the gauge
  files of every pid that is not alive (`mark_process_dead`).
* What is a view of the database (jobs by type and status, queue depth, the oldest queued
  job's age, workers) is read at scrape time by collectors the apps register
  (`register_collector`, see tasks_admin/metrics.py), not counted in processes: counting
  would drift from the table with every process that dies mid-change, and the table is what
  operators query too. Those few indexed queries are made per scrape, never per request.

Label values come from small fixed sets (job types, outcomes, error codes, URL patterns,
models allowed), never from what a client sends: the number of series stays bounded.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.utils.crypto import constant_time_compare
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from lingoloop import disk
from lingoloop.errors import ApiError
from lingoloop.login_throttle import client_address
from lingoloop.middleware import SyncAndAsyncMiddleware

logger = logging.getLogger(__name__)

# Not registered anywhere: in multiprocess mode the values reach /metrics through the files.
_NOWHERE = None

# Seconds, from a fast claim to a long file's transcription.
_JOB_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_HTTP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

JOB_ATTEMPTS = Counter(
    "lingoloop_job_attempts_total",
    "Attempts started (claims that won), by job type.",
    ["job_type"],
    registry=_NOWHERE,
)
JOB_QUEUE_WAIT = Histogram(
    "lingoloop_job_queue_wait_seconds",
    "How long an attempt waited in the queue: from when its job was due to its claim.",
    ["job_type"],
    buckets=_JOB_SECONDS,
    registry=_NOWHERE,
)
JOB_RUN = Histogram(
    "lingoloop_job_run_seconds",
    "How long an attempt ran, from its claim to its end, by job type and outcome.",
    ["job_type", "outcome"],
    buckets=_JOB_SECONDS,
    registry=_NOWHERE,
)
JOB_RETRIES = Counter(
    "lingoloop_job_retries_total",
    "Failed attempts whose job was queued again, by job type and error code.",
    ["job_type", "code"],
    registry=_NOWHERE,
)
JOB_FAILURES = Counter(
    "lingoloop_job_failures_total",
    "Jobs that failed for good, by job type and error code.",
    ["job_type", "code"],
    registry=_NOWHERE,
)
LEASE_EXPIRIES = Counter(
    "lingoloop_job_lease_expiries_total",
    "Jobs taken back from a worker that stopped renewing its lease (it died or hung).",
    ["job_type"],
    registry=_NOWHERE,
)
AUDIO_SECONDS = Counter(
    "lingoloop_transcribed_audio_seconds_total",
    "Seconds of audio transcribed, by model and mode.",
    ["model", "mode"],
    registry=_NOWHERE,
)
TRANSCRIPTION_SECONDS = Counter(
    "lingoloop_transcription_seconds_total",
    "Wall seconds spent transcribing that audio, by model and mode.",
    ["model", "mode"],
    registry=_NOWHERE,
)
REALTIME_FACTOR = Histogram(
    "lingoloop_transcription_realtime_factor",
    "Seconds of audio transcribed per wall second, one observation per transcription.",
    ["model", "mode"],
    buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500),
    registry=_NOWHERE,
)
UPLOAD_BYTES = Histogram(
    "lingoloop_upload_bytes",
    "Sizes of the uploads stored (the sum is the bytes received).",
    buckets=tuple(2**n for n in range(16, 31, 2)),  # 64 KiB to 1 GiB
    registry=_NOWHERE,
)
EVENTS_DELIVERED = Counter(
    "lingoloop_events_delivered_total",
    "Run events moved from the outbox into the event streams.",
    registry=_NOWHERE,
)
EVENTS_OVERTAKEN = Counter(
    "lingoloop_events_overtaken_total",
    "Late run events dropped because their run had finished since.",
    registry=_NOWHERE,
)
EVENT_DELIVERY_ERRORS = Counter(
    "lingoloop_event_delivery_errors_total",
    "Outbox batches that could not be delivered at once (the sweep delivers them later).",
    registry=_NOWHERE,
)
SSE_STREAMS = Gauge(
    "lingoloop_sse_streams_open",
    "SSE streams open now, by stream (run: one run's; user: all of a user's runs).",
    ["stream"],
    multiprocess_mode="livesum",
    registry=_NOWHERE,
)
SSE_EVENTS = Counter(
    "lingoloop_sse_events_sent_total",
    "Events sent to SSE clients (heartbeats not counted), by stream.",
    ["stream"],
    registry=_NOWHERE,
)
WEBHOOK_DELIVERIES = Counter(
    "lingoloop_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome.",
    ["outcome"],
    registry=_NOWHERE,
)
WEBHOOK_SECONDS = Histogram(
    "lingoloop_webhook_delivery_seconds",
    "How long a webhook delivery attempt took, by outcome.",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=_NOWHERE,
)
HTTP_REQUESTS = Histogram(
    "lingoloop_http_request_duration_seconds",
    "Time to answer an HTTP request (a stream: to open it), by URL pattern, method and "
    "status class.",
    ["route", "method", "status"],
    buckets=_HTTP_SECONDS,
    registry=_NOWHERE,
)


# --- Recording: one call at each natural point --------------------------------------------


def job_started(job_type: str, *, due: datetime, created: datetime, started: datetime) -> None:
    JOB_ATTEMPTS.labels(job_type).inc()
    waited = (started - max(due, created)).total_seconds()
    JOB_QUEUE_WAIT.labels(job_type).observe(max(waited, 0.0))


def job_ended(job_type: str, outcome: str, seconds: float) -> None:
    JOB_RUN.labels(job_type, outcome.replace(" ", "_")).observe(seconds)


def job_retrying(job_type: str, code: str) -> None:
    JOB_RETRIES.labels(job_type, code).inc()


def job_failed(job_type: str, code: str) -> None:
    JOB_FAILURES.labels(job_type, code).inc()


def lease_expired(job_type: str, *, retried: bool) -> None:
    """A job was taken back from a worker that stopped renewing its lease; its attempt
    failed with code `worker_lost`."""
    LEASE_EXPIRIES.labels(job_type).inc()
    (JOB_RETRIES if retried else JOB_FAILURES).labels(job_type, "worker_lost").inc()


def transcribed(*, model: str, mode: str, audio_seconds: float, wall_seconds: float) -> None:
    AUDIO_SECONDS.labels(model, mode).inc(audio_seconds)
    TRANSCRIPTION_SECONDS.labels(model, mode).inc(wall_seconds)
    if wall_seconds > 0:
        REALTIME_FACTOR.labels(model, mode).observe(audio_seconds / wall_seconds)


def upload_stored(size_bytes: int) -> None:
    UPLOAD_BYTES.observe(size_bytes)


def events_delivered(delivered: int, *, overtaken: int = 0) -> None:
    if delivered:
        EVENTS_DELIVERED.inc(delivered)
    if overtaken:
        EVENTS_OVERTAKEN.inc(overtaken)


def event_delivery_failed() -> None:
    EVENT_DELIVERY_ERRORS.inc()


def webhook_delivery_finished(outcome: str, seconds: float) -> None:
    """One delivery attempt of a webhook ended. `outcome`, from a small fixed set:
    `delivered` (2xx), `retrying` (timeout, connection error, 429 or 5xx; tried again
    later), `failed` (another 4xx, or the retries are spent), `refused` (the destination
    is not allowed)."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    WEBHOOK_SECONDS.labels(outcome).observe(seconds)


_HEARTBEAT = "event: heartbeat\n"


async def watched_stream(stream: str, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """`chunks` (an SSE body), counted: open while it runs, and each event it sends."""
    open_now, sent = SSE_STREAMS.labels(stream), SSE_EVENTS.labels(stream)
    open_now.inc()
    try:
        async for chunk in chunks:
            if not chunk.startswith(_HEARTBEAT):
                sent.inc()
            yield chunk
    finally:
        open_now.dec()
        closing: Callable[[], Any] | None = getattr(chunks, "aclose", None)
        if closing is not None:
            await closing()


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def http_request_finished(route: str, method: str, status: int, seconds: float) -> None:
    """`route` is the URL pattern (`api/runs/<uuid:run_id>`), never the path: a path holds
    ids, and each would be a series of its own."""
    method = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(route, method, f"{status // 100}xx").observe(seconds)


def route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return str(match.route) or "/"
    if request.path.startswith(settings.STATIC_URL):
        return "static"
    return "unmatched"


class RequestMetrics(SyncAndAsyncMiddleware):
    """Middleware, first in the chain: each request's latency by route. Sync and async, so
    async requests stay on the event loop. (The SSE streams do not pass here: see
    lingoloop.streaming, which records their opening itself.)"""

    def handle(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response: HttpResponseBase = self.get_response(request)
        self._record(request, response, time.perf_counter() - started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response: HttpResponseBase = await self.get_response(request)
        self._record(request, response, time.perf_counter() - started)
        return response

    @staticmethod
    def _record(request: HttpRequest, response: HttpResponseBase, seconds: float) -> None:
        http_request_finished(
            route_of(request), request.method or "", response.status_code, seconds
        )


# --- The multiprocess folder --------------------------------------------------------------

# prometheus-client's file names: `<kind>_<pid>.db`, a gauge's kind naming its mode.
_FILE_NAME = re.compile(r"^(?P<kind>[a-z_]+)_(?P<pid>\d+)\.db$")


def folder() -> Path:
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _files_by_pid() -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for path in folder().glob("*.db"):
        match = _FILE_NAME.match(path.name)
        if match:
            found.setdefault(int(match["pid"]), []).append(path)
    return found


def prepare_folder() -> None:
    """At the start of a web server or a worker cluster, before its first request or job.

    No other process of the folder alive: a fresh start, every file goes. Otherwise only the
    gauges of processes that ended go (their counters still count). This process's own pid
    may have been used before (a container's processes get the same pids at every start):
    the gauges that pid left go too; nothing of this process has touched a gauge yet.
    """
    me = os.getpid()
    by_pid = _files_by_pid()
    fresh = not any(_alive(pid) for pid in by_pid if pid != me)
    for pid, paths in by_pid.items():
        if pid != me and fresh:
            for path in paths:
                path.unlink(missing_ok=True)
        elif pid == me or not _alive(pid):
            mark_process_dead(pid, str(folder()))


def _forget_dead_gauges() -> None:
    for pid, paths in _files_by_pid().items():
        if any(p.name.startswith("gauge_live") for p in paths) and not _alive(pid):
            mark_process_dead(pid, str(folder()))


# --- Collectors and the scrape ------------------------------------------------------------


_collectors: list[Collector] = []


def register_collector(collector: Collector) -> None:
    """Add `collector` to every scrape: for values read at scrape time (from the database,
    say). An app registers its own in `AppConfig.ready()`; lingoloop imports no app."""
    _collectors.append(collector)


class _Guarded:
    """A collector whose failure (the database is down) costs its own metrics only."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self.collector.collect())
        except Exception:
            logger.exception("metrics: collector %s failed", type(self.collector).__name__)
            return []


class DiskCollector:
    """lingoloop_disk_free_bytes by folder (lingoloop.disk) and the threshold below which
    uploads are refused and workers pick nothing: alert on their ratio before users see 507."""

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        free = GaugeMetricFamily(
            "lingoloop_disk_free_bytes",
            "Free space of the file system under each folder the service writes to, as this "
            "web process sees it (data: DATA_DIR, uploadTemp: DATA_DIR/tmp, systemTemp: where "
            "request bodies are spooled).",
            labels=["folder"],
        )
        for folder in disk.space():
            if folder.free_bytes is not None:
                free.add_metric([folder.name], folder.free_bytes)
        yield free
        yield GaugeMetricFamily(
            "lingoloop_disk_min_free_bytes",
            "MIN_FREE_DISK_BYTES: below it uploads are refused (507) and workers pick no jobs.",
            value=settings.MIN_FREE_DISK_BYTES,
        )


def exposition(accept: str | None) -> tuple[bytes, str]:
    """Every process's metrics and the registered collectors' in the format `accept` asks
    for (Prometheus text, or OpenMetrics): (body, content type)."""
    _forget_dead_gauges()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder()))
    for collector in [DiskCollector(), *_collectors]:
        registry.register(_Guarded(collector))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


# --- /metrics -----------------------------------------------------------------------------


def _address_allowed(request: HttpRequest) -> bool:
    if not settings.METRICS_ALLOWED_IPS:
        return False
    try:
        address = ipaddress.ip_address(client_address(request) or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(net) for net in settings.METRICS_ALLOWED_IPS)


def _refusal(request: HttpRequest) -> ApiError | None:
    """None when the client may read the metrics: from an allowed address, with the
    METRICS_TOKEN as bearer token, or in a staff member's session."""
    if _address_allowed(request):
        return None
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = settings.METRICS_TOKEN
        if token and constant_time_compare(credentials.strip(), token):
            return None
        return ApiError(
            "invalid_metrics_token",
            "The bearer token is not the metrics token.",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = request.user
    if not user.is_authenticated:
        return ApiError(
            "not_authenticated",
            "The metrics need the metrics token, a staff login or an allowed address.",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not user.is_staff:
        return ApiError("permission_denied", "Only staff may read the metrics.", status_code=403)
    return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: the Prometheus scrape target."""
    if request.method not in {"GET", "HEAD"}:
        error = ApiError("method_not_allowed", "Use GET.", status_code=405)
        response: HttpResponse = JsonResponse(error.as_dict(), status=405)
        response["Allow"] = "GET, HEAD"
        return response
    refused = _refusal(request)
    if refused is not None:
        response = JsonResponse(refused.as_dict(), status=refused.status_code)
        for name, value in refused.headers.items():
            response[name] = value
        return response
    body, content_type = exposition(request.headers.get("Accept"))
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
