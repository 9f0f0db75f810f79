"""LingoLoop settings: one file, everything read from the environment.

`.env.example` lists every variable. Defaults make `make run` work on a fresh machine with
SQLite, the bundled model and no Redis; each helper refuses a bad value at start-up with the
variable's name (see lingoloop/env.py).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from lingoloop import object_store
from lingoloop.env import (
    env_bool,
    env_choice,
    env_int,
    env_int_list,
    env_list,
    env_networks,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# The web UI's templates and static files live in this package, so an installed wheel has them.
PACKAGE_DIR = Path(__file__).resolve().parent

# Off unless asked for: a debug page shows settings, paths and tracebacks to whoever gets one.
# `make run` needs nothing set all the same: the secret key is generated and kept under
# DATA_DIR, and ALLOWED_HOSTS defaults to this machine's own names.
DEBUG = env_bool("DEBUG", False)

# A source checkout keeps its data in the checkout's `data/`, wherever a command runs from;
# an installed package (`pip install .`) uses `./data` in the working directory.
_IN_CHECKOUT = (BASE_DIR / "manage.py").is_file() and (BASE_DIR / "pyproject.toml").is_file()
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "data" if _IN_CHECKOUT else "data"))).resolve()
UPLOAD_DIR = DATA_DIR / "uploads"
UPLOAD_TEMP_DIR = DATA_DIR / "tmp"
for _folder in (DATA_DIR, UPLOAD_DIR, UPLOAD_TEMP_DIR, DATA_DIR / "staticfiles"):
    _folder.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """The configured key, else one generated once and kept under DATA_DIR.

    Web and worker processes on one machine share DATA_DIR and so the key. Several machines
    must be given the same SECRET_KEY: events tokens are signed with it.
    """
    configured = env_str("SECRET_KEY")
    if configured:
        if len(configured) < 50 or len(set(configured)) < 5:
            raise ImproperlyConfigured(
                "SECRET_KEY must be at least 50 random characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
            )
        return configured
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        try:
            with key_file.open("x", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(50))
            key_file.chmod(0o600)
        except FileExistsError:
            pass  # another process on this machine wrote it first
    return key_file.read_text(encoding="ascii").strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Production hardening; behind a TLS-terminating proxy set TRUST_X_FORWARDED_PROTO=1.
_BEHIND_TLS = env_bool("TRUST_X_FORWARDED_PROTO", False)
if _BEHIND_TLS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Secure cookies only where the service is reached over HTTPS: on http://127.0.0.1:8000 a
# browser would not send them back, and nobody could log in.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool(
    "SECURE_COOKIES", _BEHIND_TLS or SECURE_SSL_REDIRECT
)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    # daphne first, so `runserver` serves ASGI (SSE never ends under WSGI).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
    "django_eventstream",
    "django_q",
    "tasks_admin",
    "transcription",
    "webhooks",
]

MIDDLEWARE = [
    # Outermost: each request's latency, all the rest included (lingoloop/metrics.py).
    "lingoloop.metrics.RequestMetrics",
    # First: the API's error shape for whatever any layer below answers under /api/.
    "lingoloop.middleware.RequestGuards",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a login refused for too many failures into a 429.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "lingoloop.urls"
ASGI_APPLICATION = "lingoloop.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PACKAGE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
try:
    _database = dj_database_url.parse(DATABASE_URL, conn_health_checks=True)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL={DATABASE_URL!r} is not usable: {exc}") from None
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker processes write to one file: WAL lets readers run beside a writer,
    # IMMEDIATE takes the write lock up front so transactions queue instead of failing with
    # "database is locked" half-way through, and the timeout is how long they queue.
    _database["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _database["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}
    # DRF imports django.contrib.postgres.fields when it can, for ModelSerializer to map the
    # PostgreSQL model fields, and with it psycopg: 9 MiB of every process. This project has
    # no such field, and on SQLite nothing else needs psycopg; DRF does without when the
    # import fails (rest_framework/compat.py).
    sys.modules.setdefault("django.contrib.postgres.fields", None)  # type: ignore[arg-type]
DATABASES = {"default": _database}
# The most PostgreSQL connections a web process keeps in its pool (lingoloop/database.py);
# 0: none kept, each request opens its own.
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 10, minimum=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis (optional) ---------------------------------------------------------------------

REDIS_URL = env_str("REDIS_URL")


def _redis_kwargs(url: str) -> dict[str, object]:
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss"} or not parsed.hostname:
        raise ImproperlyConfigured(f"REDIS_URL={url!r} is not a redis:// URL")
    kwargs: dict[str, object] = {
        "host": parsed.hostname,
        "port": parsed.port or 6379,
        "db": int(parsed.path.lstrip("/") or 0),
        "socket_connect_timeout": 2,
        # A command's timeout (publish, subscribe). Not a wait for pub/sub messages: redis-py
        # 5.x would apply it to an idle subscriber too, so the hub waits with its own.
        "socket_timeout": 5,
    }
    if parsed.password:
        kwargs["password"] = unquote(parsed.password)
    if parsed.username:
        kwargs["username"] = unquote(parsed.username)
    if parsed.scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


if REDIS_URL:
    # Every event is published on Redis pub/sub, so an event sent by a worker reaches the
    # streams held by every web process at once (lingoloop/eventhub.py). Not
    # EVENTSTREAM_REDIS: django-eventstream's own Redis path retries a dead Redis for seconds
    # per event and never reconnects its listener.
    EVENTS_REDIS = _redis_kwargs(REDIS_URL)
# Redis pub/sub has one space of channels whatever the database number: the channel is named
# after REDIS_URL's database, so installations on other databases of one Redis stay apart.
EVENTS_REDIS_CHANNEL = env_str(
    "EVENTS_REDIS_CHANNEL",
    f"lingoloop-events-db{EVENTS_REDIS['db']}" if REDIS_URL else "lingoloop-events",
)
# The cache holds nothing that must be shared or must survive: upload limits are counted in
# the run table and login failures in axes' table, so a Redis outage cannot fail a request
# through the cache. Process memory, for web and worker alike; django-q2 keeps its cluster
# statistics there too (ours live in the worker table).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "queue_stats": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"

# --- Auth, API ----------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # First, so an anonymous request gets 401 with `WWW-Authenticate: Bearer`.
        "lingoloop.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "lingoloop.parsers.StrictJSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    # `?format=` picks a transcript format (txt, srt…), not a DRF renderer.
    "URL_FORMAT_OVERRIDE": None,
    "DEFAULT_PAGINATION_CLASS": "lingoloop.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "lingoloop.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Views that opt in with a throttle_scope, counted per user in each process's cache.
    "DEFAULT_THROTTLE_RATES": {
        "detect-language": f"{env_int('DETECTIONS_PER_MINUTE', 30, minimum=1)}/min",
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LingoLoop API",
    "DESCRIPTION": "Self-hosted speech-to-text with live progress.",
    "VERSION": "0.1.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    # Operations name their tags; these say what the tags are.
    "TAGS": [
        {"name": "auth", "description": "The API token."},
        {"name": "runs", "description": "Uploads, runs, transcripts and their live events."},
        {"name": "queue", "description": "Queue statistics, health and worker control."},
    ],
    # Fields of one name with different choices: `mode` (asked for, got) and `status` (of a
    # run or job, of the service's health).
    "ENUM_NAME_OVERRIDES": {
        "RequestedModeEnum": ["auto", "sync", "async"],
        "RunModeEnum": "transcription.models.RunMode",
        "StatusEnum": "transcription.models.RunStatus",
        "HealthStatusEnum": ["ok", "degraded", "error"],
        "WebhookEventEnum": ["run.succeeded", "run.failed", "run.cancelled", "run.processing"],
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # The two SSE endpoints are plain async Django views: described by hand.
        "transcription.schema.add_event_streams",
        "lingoloop.openapi.document_request_guards",
    ],
}

# --- Uploads and transcription ------------------------------------------------------------

MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 500 * 1024 * 1024, minimum=1)
MAX_AUDIO_DURATION_MS = env_int("MAX_AUDIO_DURATION_MS", 4 * 3600 * 1000, minimum=1)
TRANSCRIBE_SYNC_MAX_BYTES = env_int("TRANSCRIBE_SYNC_MAX_BYTES", 10 * 1024 * 1024, minimum=0)
TRANSCRIBE_SYNC_MAX_DURATION_MS = env_int("TRANSCRIBE_SYNC_MAX_DURATION_MS", 60_000, minimum=0)
TRANSCRIBE_SYNC_CONCURRENCY = env_int("TRANSCRIBE_SYNC_CONCURRENCY", 1, minimum=0)
# mode=sync: how long a request waits for a busy sync slot before its file goes to the queue.
# A /v1/ request (OpenAI's API) waits for its run; a client that goes away before the end
# leaves the run to finish (its transcript is on the runs page) unless this is on.
OPENAI_CANCEL_ON_DISCONNECT = env_bool("OPENAI_CANCEL_ON_DISCONNECT", False)
TRANSCRIBE_SYNC_WAIT_MS = env_int("TRANSCRIBE_SYNC_WAIT_MS", 30_000, minimum=0)
TASKS_INLINE_PROCESSING = env_bool("TASKS_INLINE_PROCESSING", False)
USER_MAX_ACTIVE_RUNS = env_int("USER_MAX_ACTIVE_RUNS", 20, minimum=1)
# Counted from the run table in the transaction that creates a run (transcription/services.py).
UPLOADS_PER_MINUTE = env_int("UPLOADS_PER_MINUTE", 30, minimum=1)
AUDIO_RETENTION_HOURS = env_int("AUDIO_RETENTION_HOURS", 0, minimum=0)
# Hosts a run's callbackUrl may name although they are (or resolve to) private addresses:
# an internal service the operator vouches for (transcription/callbacks.py).
CALLBACK_ALLOWED_HOSTS = env_list("CALLBACK_ALLOWED_HOSTS", [])
# Webhooks (webhooks/): the waits between a delivery's attempts (ms; about a day in all), the
# bounds of one attempt, and the largest body sent whole (over it the transcript is left out).
WEBHOOK_RETRY_DELAYS = env_int_list(
    "WEBHOOK_RETRY_DELAYS",
    [10_000, 60_000, 300_000, 1_800_000, 7_200_000, 21_600_000, 43_200_000],
    minimum=0,
)
WEBHOOK_CONNECT_TIMEOUT_MS = env_int("WEBHOOK_CONNECT_TIMEOUT_MS", 5_000, minimum=100)
WEBHOOK_TIMEOUT_MS = env_int("WEBHOOK_TIMEOUT_MS", 15_000, minimum=100)
WEBHOOK_RESPONSE_MAX_BYTES = env_int("WEBHOOK_RESPONSE_MAX_BYTES", 65_536, minimum=1)
WEBHOOK_MAX_PAYLOAD_BYTES = env_int("WEBHOOK_MAX_PAYLOAD_BYTES", 262_144, minimum=1024)
WEBHOOK_MAX_ENDPOINTS = env_int("WEBHOOK_MAX_ENDPOINTS", 10, minimum=0)
# Where this service is reached from outside (https://stt.example.com): webhook payloads then
# carry absolute links. Empty: links are paths.
PUBLIC_URL = env_str("PUBLIC_URL", "")
if PUBLIC_URL and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", PUBLIC_URL):
    raise ImproperlyConfigured(f"PUBLIC_URL={PUBLIC_URL!r} is not an http(s) URL")

# Below this much free space in the data folder or a temporary folder (lingoloop/disk.py),
# uploads are refused before their body is read (507) and worker clusters pick no jobs. It
# leaves room for what is already under way (SQLite, a running job's scratch files, the log).
MIN_FREE_DISK_BYTES = env_int("MIN_FREE_DISK_BYTES", 100 * 1024 * 1024, minimum=0)

# Uploads go straight to disk in chunks, never a whole file in memory, and stop at
# MAX_UPLOAD_BYTES while they stream.
FILE_UPLOAD_HANDLERS = ["transcription.uploads.LimitedTemporaryFileUploadHandler"]
FILE_UPLOAD_TEMP_DIR = str(UPLOAD_TEMP_DIR)
FILE_UPLOAD_PERMISSIONS = 0o600
DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
FORMS_URLFIELD_ASSUME_HTTPS = True

# The models a request may choose: by default every one this server has (the bundled tiny.en,
# base when its packages are installed, registered folders: transcription/catalogue.py); a
# list narrows it, and may name models the hub resolves. WHISPER_MODEL: the default.
WHISPER_MODEL = env_str("WHISPER_MODEL", "tiny.en")
WHISPER_MODELS_ALLOWED = env_list("WHISPER_MODELS_ALLOWED", [])
if WHISPER_MODELS_ALLOWED and WHISPER_MODEL not in WHISPER_MODELS_ALLOWED:
    raise ImproperlyConfigured(
        f"WHISPER_MODEL={WHISPER_MODEL!r} must be one of WHISPER_MODELS_ALLOWED "
        f"({', '.join(WHISPER_MODELS_ALLOWED)})"
    )
# A worker process keeps at most this many models loaded; the least recently used goes.
WHISPER_MODELS_LOADED = env_int("WHISPER_MODELS_LOADED", 2, minimum=1)
WHISPER_DEVICE = env_choice("WHISPER_DEVICE", "auto", ("auto", "cpu", "cuda"))
WHISPER_COMPUTE_TYPE = env_str("WHISPER_COMPUTE_TYPE", "int8")
WHISPER_CPU_THREADS = env_int("WHISPER_CPU_THREADS", 2, minimum=0)
# Async jobs at least WHISPER_BATCHED_MIN_DURATION_MS long are decoded by faster-whisper's
# batched pipeline: "auto" sizes its batch from the machine (transcription/engine.py), a number
# forces it, 0 keeps every job sequential. Sync (in-request) runs are always sequential.
WHISPER_BATCH_SIZE: int | str = (
    "auto"
    if env_str("WHISPER_BATCH_SIZE", "auto") == "auto"
    else env_int("WHISPER_BATCH_SIZE", 0, minimum=0)
)
WHISPER_BATCHED_MIN_DURATION_MS = env_int("WHISPER_BATCHED_MIN_DURATION_MS", 30_000, minimum=0)
# Async runs longer than CHUNK_LONGER_THAN_SECONDS (0: none) are cut at silences into pieces
# of about CHUNK_SECONDS, each a job that any worker may take (transcription/chunks.py). 150 s
# pieces: 20 minutes keeps up to 8 workers busy, and content that is slower to decode in one
# piece than in another evens out over the pieces each worker takes (bench/chunked.py).
CHUNK_LONGER_THAN_SECONDS = env_int("CHUNK_LONGER_THAN_SECONDS", 900, minimum=0)
CHUNK_SECONDS = env_int("CHUNK_SECONDS", 150, minimum=10)

# --- Job queue ----------------------------------------------------------------------------

WORKER_MAX_RETRIES = env_int("WORKER_MAX_RETRIES", 3, minimum=0)
WORKER_RETRY_DELAYS = env_int_list("WORKER_RETRY_DELAYS", [5000, 30000, 120000])
MAX_CONCURRENT_JOBS = env_int("MAX_CONCURRENT_JOBS", 1, minimum=1)
POLL_INTERVAL = env_int("POLL_INTERVAL", 500, minimum=10)
# SQLite has no NOTIFY: an idle cluster looks for due jobs this often instead (PostgreSQL
# wakes it on commit and POLL_INTERVAL is only its safety net). The look is one indexed query.
SQLITE_POLL_INTERVAL = env_int("SQLITE_POLL_INTERVAL", 50, minimum=10)
# Worker processes run at this OS nice value (0: as the web), so the web answers first.
WORKER_NICE = env_int("WORKER_NICE", 10, minimum=0)
# How long a web process may answer queue positions from its last read of the queue (0: read
# the queue for every answer). A run the read could not know of always forces a new read.
QUEUE_SNAPSHOT_TTL_MS = env_int("QUEUE_SNAPSHOT_TTL_MS", 1000, minimum=0)
# Queue positions are announced by a thread of each process, at most once per this interval
# (0: right after each commit that moves the queue, in the committing thread).
QUEUE_ANNOUNCE_INTERVAL_MS = env_int("QUEUE_ANNOUNCE_INTERVAL_MS", 1000, minimum=0)
JOB_TIMEOUT = env_int("JOB_TIMEOUT", 1800, minimum=1)
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 60, minimum=3)
# How long a cluster may hold a picked job in memory before another cluster may take it.
JOB_PICK_HOLD_SECONDS = env_int("JOB_PICK_HOLD_SECONDS", 15, minimum=1)
# Finished jobs (the queue's bookkeeping, not the runs) older than this are deleted by the
# worker loop; 0 keeps them for ever.
JOB_RETENTION_DAYS = env_int("JOB_RETENTION_DAYS", 30, minimum=0)

# SIGTERM/SIGINT: running jobs may finish for this long, then go back to the queue.
WORKER_SHUTDOWN_GRACE_SECONDS = env_int("WORKER_SHUTDOWN_GRACE_SECONDS", 60, minimum=0)
# A worker whose master has not been seen for this long is shown as stale.
WORKER_STALE_SECONDS = env_int("WORKER_STALE_SECONDS", 30, minimum=5)
# Extra modules that register job handlers (tasks_admin.handlers.register) in every process.
JOB_HANDLER_MODULES = env_list("JOB_HANDLER_MODULES", [])

Q_CLUSTER = {
    "name": "lingoloop",
    "workers": MAX_CONCURRENT_JOBS,
    "timeout": JOB_TIMEOUT,
    # Must exceed the timeout for django-q2; our broker keeps its own, shorter hold.
    "retry": JOB_TIMEOUT + 60,
    "max_attempts": 1,
    # Prefetch little: a picked job waiting in memory is still `queued` for users, and a job
    # is only really claimed when a worker starts it (DESIGN.md, item 7).
    "queue_limit": MAX_CONCURRENT_JOBS,
    "bulk": 1,
    "poll": POLL_INTERVAL / 1000,
    "broker_class": "tasks_admin.broker.JobBroker",
    "save_limit": -1,
    "ack_failures": True,
    "catch_up": False,
    "label": "Task results (django-q2)",
    "cache": "queue_stats",
}

# --- Events -------------------------------------------------------------------------------

SSE_HEARTBEAT_INTERVAL_MS = env_int("SSE_HEARTBEAT_INTERVAL_MS", 15_000, minimum=100)
EVENTS_TOKEN_TTL = env_int("EVENTS_TOKEN_TTL", 3600, minimum=10)
# How often a web process looks in the database for events stored by other processes: the
# delivery path without Redis (or while Redis is unreachable). A poll is one small read on a
# kept connection (lingoloop/eventhub.py), and half the interval is the average wait...
EVENTS_DB_POLL_MS = env_int("EVENTS_DB_POLL_MS", 50, minimum=20)
# ...and the safety net for anything pub/sub lost while Redis is connected.
REDIS_SAFETY_POLL_MS = env_int("REDIS_SAFETY_POLL_MS", 5000, minimum=100)

# --- Metrics ------------------------------------------------------------------------------

# GET /metrics (lingoloop/metrics.py) answers a staff session, this bearer token, or a client
# at one of these addresses or networks (as TRUSTED_PROXY_COUNT tells it); nobody else.
METRICS_TOKEN = env_str("METRICS_TOKEN")
if METRICS_TOKEN and len(METRICS_TOKEN) < 24:
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be at least 24 characters "
        "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    )
METRICS_ALLOWED_IPS = env_networks("METRICS_ALLOWED_IPS", [])
# Every process on this machine (web servers, worker clusters, django-q2's forked workers)
# keeps its counters in files here, and /metrics adds them up: prometheus-client's
# multiprocess mode, which reads the variable from the environment when it is first imported.
# A local folder (tmpfs is best), never one shared between machines.
PROMETHEUS_MULTIPROC_DIR = Path(
    env_str("PROMETHEUS_MULTIPROC_DIR", str(DATA_DIR / "metrics"))
).resolve()
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)

# --- Audio storage ------------------------------------------------------------------------

# Where uploads (and the pieces a long recording is cut into) are kept: `local`, the folder
# UPLOAD_DIR (one machine, or a folder every machine mounts); `s3`, an S3-compatible object
# store (AWS S3, MinIO, Ceph, R2) that web and worker machines reach on their own. Read and
# written only through transcription/storage.py; never served by the store except through
# short-lived signed URLs, to the owner's audio player.
AUDIO_STORAGE = env_choice("AUDIO_STORAGE", "local", ("local", "s3"))
# How long a signed URL of an owner's audio stays good (s3 only). 0: no signed URLs, the web
# process streams the audio from the store (for a store that browsers cannot reach).
AUDIO_URL_SECONDS = env_int("AUDIO_URL_SECONDS", 300, minimum=0)
S3_BUCKET = env_str("S3_BUCKET")
# Empty for AWS itself; the store's URL for anything else (http://minio.internal:9000).
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL")
S3_REGION = env_str("S3_REGION", "us-east-1")
# Object names start with this (one bucket may serve several things).
S3_PREFIX = env_str("S3_PREFIX", "lingoloop").strip("/")
# Without these, boto3 finds credentials its own way (AWS_ACCESS_KEY_ID…, an instance role).
S3_ACCESS_KEY_ID = env_str("S3_ACCESS_KEY_ID")
S3_SECRET_ACCESS_KEY = env_str("S3_SECRET_ACCESS_KEY")
# path (bucket in the URL's path: what MinIO and most stores on an endpoint want) or virtual.
S3_ADDRESSING_STYLE = env_choice(
    "S3_ADDRESSING_STYLE", "path" if S3_ENDPOINT_URL else "virtual", ("path", "virtual")
)
# A store that does not answer within this is down: the request or the attempt fails clearly
# instead of hanging.
S3_TIMEOUT_SECONDS = env_int("S3_TIMEOUT_SECONDS", 10, minimum=1)

_audio_storage: dict[str, object] = {"BACKEND": "transcription.storage.UploadFolderStorage"}
_store_origins: list[str] = []
if AUDIO_STORAGE == "s3":
    if not S3_BUCKET:
        raise ImproperlyConfigured(
            "AUDIO_STORAGE=s3 needs S3_BUCKET (and S3_ENDPOINT_URL off AWS)."
        )
    _audio_storage = object_store.s3_storage(
        bucket=S3_BUCKET,
        endpoint_url=S3_ENDPOINT_URL,
        region=S3_REGION,
        prefix=S3_PREFIX,
        access_key=S3_ACCESS_KEY_ID,
        secret_key=S3_SECRET_ACCESS_KEY,
        addressing_style=S3_ADDRESSING_STYLE,
        url_seconds=AUDIO_URL_SECONDS,
        timeout_seconds=S3_TIMEOUT_SECONDS,
    )
    # The owner's audio player follows a redirect to a signed URL on the store.
    if AUDIO_URL_SECONDS > 0:
        _store_origins = object_store.origins(S3_ENDPOINT_URL, S3_ADDRESSING_STYLE)

# --- Security headers and login throttling ------------------------------------------------

# One policy for every response: no inline script anywhere, and no inline style but the one
# <style> block of drf-spectacular's swagger_ui.html (/api/docs/), allowed by its hash.
# tests/test_headers.py recomputes it: an upgrade that changes the block fails a test, not a page.
_THIRD_PARTY_INLINE_STYLES = ["'sha256-MMpT0iDxyjALd9PdfepImGX3DBfJPXZ4IlDWdPAgtn0='"]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", *_THIRD_PARTY_INLINE_STYLES],
        "img-src": ["'self'", "data:"],
        "media-src": ["'self'", *_store_origins],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Swagger UI would otherwise send the schema's URL to validator.swagger.io for a badge (on any
# host but localhost), which the policy above refuses anyway.
SPECTACULAR_SETTINGS["SWAGGER_UI_SETTINGS"] = {"deepLinking": True, "validatorUrl": None}

# django-axes: failed logins are counted in the database (no Redis needed) on every door
# (/api/auth/token, /accounts/login/, /admin/login/); see lingoloop/login_throttle.py for who is
# counted together and README.md ("Security") for the reasoning.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before checking it
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_COOLOFF_SECONDS = env_int("LOGIN_COOLOFF_SECONDS", 900, minimum=1)
# Behind N reverse proxies that each append to X-Forwarded-For, the client is the N-th address
# from the right. 0 (the default): REMOTE_ADDR, and X-Forwarded-For is ignored (a client could
# write anything in it).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_COOLOFF_SECONDS)
AXES_LOCKOUT_PARAMETERS = "lingoloop.login_throttle.lockout_parameters"
AXES_CLIENT_IP_CALLABLE = "lingoloop.login_throttle.client_address"
AXES_USERNAME_CALLABLE = "lingoloop.login_throttle.attempted_username"
AXES_LOCKOUT_CALLABLE = "lingoloop.login_throttle.lockout_response"
# A refused attempt during a lock-out does not restart the cool-off: the lock ends when
# Retry-After says, and an attacker cannot keep a lock going for free.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success must not wipe the count: an attacker with an account of their own could otherwise
# log in to it between guesses at someone else's password.
AXES_RESET_ON_SUCCESS = False
# Not its "AXES: BEGIN version …" line on every start of every command (`--help` too).
AXES_VERBOSE = False

# --- Static, i18n, logging ----------------------------------------------------------------

STATIC_URL = "/static/"
STATICFILES_DIRS = [PACKAGE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedStaticFilesStorage"},
    "audio": _audio_storage,
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
# text: readable lines; json: one JSON object a line. Both carry the request, run, job and
# worker ids that apply and are redacted whole (lingoloop/logs.py).
LOG_FORMAT = env_choice("LOG_FORMAT", "text", ("text", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "lingoloop.logs.TextFormatter"},
        "json": {"()": "lingoloop.logs.JsonFormatter"},
    },
    "filters": {
        "redact": {"()": "lingoloop.logs.RedactSecretsFilter"},
        "context": {"()": "lingoloop.logs.ContextFilter"},
        "server_errors_only": {"()": "lingoloop.logs.ServerErrorsOnly"},
    },
    "handlers": {
        "console": {
            # A line that cannot be written or formatted is lost, never the request's answer.
            "class": "lingoloop.logs.SafeStreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["redact", "context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # One line a 4xx: the access log's (lingoloop/server.py).
        "django.request": {"filters": ["server_errors_only"]},
        "django_eventstream": {"level": "WARNING"},
        "faster_whisper": {"level": "WARNING"},
    },
}
logging.captureWarnings(True)
