"""LingoLoop settings: one file, everything read from the environment.

`.env.example` lists every variable. Defaults make `make run` work on a fresh machine with
SQLite, the bundled model and no Redis; each helper refuses a bad value at start-up with the
variable's name (see lingoloop/env.py).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from urllib.parse import unquote, urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from lingoloop.env import (
    env_bool,
    env_choice,
    env_int,
    env_int_list,
    env_list,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# Development by default, so `make run` works with nothing set. Production is DEBUG=0, and
# then a real SECRET_KEY and ALLOWED_HOSTS are required (see "Security" in README.md).
DEBUG = env_bool("DEBUG", True)

DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "data"))).resolve()
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
        if not DEBUG and (len(configured) < 50 or len(set(configured)) < 5):
            raise ImproperlyConfigured(
                "SECRET_KEY must be at least 50 random characters when DEBUG=0"
            )
        return configured
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: DEBUG=0 needs a real one, the same on every machine "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
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
if not DEBUG and not env_list("ALLOWED_HOSTS", []):
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS is not set: DEBUG=0 needs the host names this service answers to"
    )
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Production hardening; behind a TLS-terminating proxy set TRUST_X_FORWARDED_PROTO=1.
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
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
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_eventstream",
    "django_q",
    "tasks_admin",
    "transcription",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "lingoloop.urls"
ASGI_APPLICATION = "lingoloop.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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
DATABASES = {"default": _database}
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
    # streams held by every web process at once (transcription/sse.py). Not
    # EVENTSTREAM_REDIS: django-eventstream's own Redis path retries a dead Redis for seconds
    # per event and never reconnects its listener.
    EVENTS_REDIS = _redis_kwargs(REDIS_URL)
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# django-q2 keeps cluster statistics in a cache; ours live in the worker table, so keep
# django-q2's in process memory and the queue independent of Redis.
CACHES["queue_stats"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}

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
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    # `?format=` picks a transcript format (txt, srt…), not a DRF renderer.
    "URL_FORMAT_OVERRIDE": None,
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "lingoloop.errors.api_exception_handler",
    "DEFAULT_THROTTLE_RATES": {"uploads": f"{env_int('UPLOADS_PER_MINUTE', 30, minimum=1)}/min"},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
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
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # The two SSE endpoints are plain async Django views: described by hand.
        "transcription.schema.add_event_streams",
    ],
}

# --- Uploads and transcription ------------------------------------------------------------

MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 500 * 1024 * 1024, minimum=1)
MAX_AUDIO_DURATION_MS = env_int("MAX_AUDIO_DURATION_MS", 4 * 3600 * 1000, minimum=1)
TRANSCRIBE_SYNC_MAX_BYTES = env_int("TRANSCRIBE_SYNC_MAX_BYTES", 10 * 1024 * 1024, minimum=0)
TRANSCRIBE_SYNC_MAX_DURATION_MS = env_int("TRANSCRIBE_SYNC_MAX_DURATION_MS", 60_000, minimum=0)
TRANSCRIBE_SYNC_CONCURRENCY = env_int("TRANSCRIBE_SYNC_CONCURRENCY", 1, minimum=0)
TASKS_INLINE_PROCESSING = env_bool("TASKS_INLINE_PROCESSING", False)
USER_MAX_ACTIVE_RUNS = env_int("USER_MAX_ACTIVE_RUNS", 20, minimum=1)
AUDIO_RETENTION_HOURS = env_int("AUDIO_RETENTION_HOURS", 0, minimum=0)

# Uploads go straight to disk in chunks, never a whole file in memory, and stop at
# MAX_UPLOAD_BYTES while they stream.
FILE_UPLOAD_HANDLERS = ["transcription.uploads.LimitedTemporaryFileUploadHandler"]
FILE_UPLOAD_TEMP_DIR = str(UPLOAD_TEMP_DIR)
FILE_UPLOAD_PERMISSIONS = 0o600
DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
FORMS_URLFIELD_ASSUME_HTTPS = True

WHISPER_MODEL = env_str("WHISPER_MODEL", "tiny.en")
WHISPER_MODELS_ALLOWED = env_list("WHISPER_MODELS_ALLOWED", [WHISPER_MODEL])
if WHISPER_MODEL not in WHISPER_MODELS_ALLOWED:
    raise ImproperlyConfigured(
        f"WHISPER_MODEL={WHISPER_MODEL!r} must be one of WHISPER_MODELS_ALLOWED "
        f"({', '.join(WHISPER_MODELS_ALLOWED)})"
    )
WHISPER_DEVICE = env_choice("WHISPER_DEVICE", "auto", ("auto", "cpu", "cuda"))
WHISPER_COMPUTE_TYPE = env_str("WHISPER_COMPUTE_TYPE", "int8")
WHISPER_CPU_THREADS = env_int("WHISPER_CPU_THREADS", 2, minimum=0)
WHISPER_BATCH_SIZE = env_int("WHISPER_BATCH_SIZE", 0, minimum=0)

# --- Job queue ----------------------------------------------------------------------------

WORKER_MAX_RETRIES = env_int("WORKER_MAX_RETRIES", 3, minimum=0)
WORKER_RETRY_DELAYS = env_int_list("WORKER_RETRY_DELAYS", [5000, 30000, 120000])
MAX_CONCURRENT_JOBS = env_int("MAX_CONCURRENT_JOBS", 1, minimum=1)
POLL_INTERVAL = env_int("POLL_INTERVAL", 500, minimum=10)
JOB_TIMEOUT = env_int("JOB_TIMEOUT", 1800, minimum=1)
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 60, minimum=3)
# How long a cluster may hold a picked job in memory before another cluster may take it.
JOB_PICK_HOLD_SECONDS = env_int("JOB_PICK_HOLD_SECONDS", 15, minimum=1)

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
# delivery path without Redis (or while Redis is unreachable)...
EVENTS_DB_POLL_MS = env_int("EVENTS_DB_POLL_MS", 250, minimum=50)
# ...and the safety net for anything pub/sub lost while Redis is connected.
REDIS_SAFETY_POLL_MS = env_int("REDIS_SAFETY_POLL_MS", 5000, minimum=100)

# --- Static, i18n, logging ----------------------------------------------------------------

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"redact": {"()": "lingoloop.logs.RedactSecretsFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django_eventstream": {"level": "WARNING"},
        "faster_whisper": {"level": "WARNING"},
    },
}
logging.captureWarnings(True)
