"""A pool of PostgreSQL connections for the web process.

Under ASGI, Django runs each request's database work in a thread of its own, so a connection
kept by CONN_MAX_AGE is never seen again: every request opened a new PostgreSQL connection
(measured, a cold connection and three queries took 10.3 ms against 0.7 ms on a warm one, a
fifth of `GET /api/runs` under load). The web process takes its connections from Django's
pool instead (psycopg_pool, at most DATABASE_POOL_SIZE).

Only the web server turns it on (lingoloop/server.py). A worker cluster keeps persistent
connections instead (the `worker` command): django-q2 forks its processes, and a pool's
threads and sockets do not survive a fork. One-off commands connect as Django always does.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connections


def use_connection_pool() -> bool:
    """Take this process's PostgreSQL connections from a pool from now on; call it before the
    first query. False (nothing changed) on SQLite or with DATABASE_POOL_SIZE=0."""
    size = settings.DATABASE_POOL_SIZE
    database = connections.settings["default"]
    if not size or database["ENGINE"] != "django.db.backends.postgresql":
        return False
    database["CONN_MAX_AGE"] = 0  # the pool keeps them, not the thread
    database.setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": size,
        # A request waits this long for a connection before it is answered 503
        # (database_unavailable, with Retry-After). With the database stopped the pool has
        # none to give and only this bounds the wait: at 10 s every request hung for 10 s
        # (measured, tests/test_database_outage.py). A pool of DATABASE_POOL_SIZE busy for
        # 2 s on end is an overload the client should back off from too.
        "timeout": 2,
    }
    return True
