"""A pool of PostgreSQL connections for the web process; on SQLite, whether another connection
has committed (`sqlite_commit_mark`), so that pollers look only when something changed.

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

from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, connections


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


# --- SQLite: has another connection committed? -------------------------------------------


class CommitMark(NamedTuple):
    """Where a SQLite database stood for one connection (`sqlite_commit_mark`)."""

    # Held, not its id: a connection opened after this one closed is never taken for it.
    connection: Any
    version: int


def sqlite_commit_mark() -> CommitMark | None:
    """This thread's connection's `PRAGMA data_version` on SQLite, which changes when another
    connection (of any process) commits; None on another database.

    It reads no table: a few microseconds, where the looks it spares (a pick, the event
    poller's read) each cost a millisecond or more of Python building its query, 20 times a
    second in every process that polls, busy or idle (measured with two worker clusters
    sharing a run on two cores: the web and the two pushers used 6 % of the machine, 3 % now)."""
    if connection.vendor != "sqlite":
        return None
    connection.ensure_connection()
    raw = connection.connection
    (version,) = raw.execute("PRAGMA data_version").fetchone()
    return CommitMark(raw, int(version))


def committed_since(mark: CommitMark | None) -> bool:
    """Whether another connection may have committed since `mark` was taken on this thread:
    True unless it is sure that none did (no mark, another connection, another database)."""
    if mark is None:
        return True
    now = sqlite_commit_mark()
    return now is None or now.connection is not mark.connection or now.version != mark.version
