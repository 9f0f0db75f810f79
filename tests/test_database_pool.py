"""A web process takes its PostgreSQL connections from a pool (lingoloop/database.py): under
ASGI each request runs in a new thread, and without the pool each opened a connection."""

from __future__ import annotations

import os

import httpx
import pytest
from django.db import connection

from lingoloop.database import use_connection_pool

on_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="PostgreSQL's connection pool; DATABASE_URL is not PostgreSQL",
)


def sessions_opened() -> int:
    """Connections ever opened to the test database (PostgreSQL counts them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s",
            [connection.settings_dict["NAME"]],
        )
        return int(cursor.fetchone()[0])


@on_postgres
def test_requests_to_a_web_process_reuse_its_pooled_connections(service):
    service.start_web(DATABASE_POOL_SIZE="3")
    service.api("GET", "/api/runs").raise_for_status()  # the pool is open
    before = sessions_opened()

    for _ in range(30):
        assert service.api("GET", "/api/runs").status_code == 200
        assert httpx.get(f"{service.web_url}/api/health").status_code == 200

    # pg_stat_database is updated when a session ends or a transaction commits: a margin of
    # one for the test's own connection.
    assert sessions_opened() - before <= 3 + 1


@on_postgres
def test_without_a_pool_each_request_opens_a_connection(service):
    """The control: what the pool saves, measured the same way."""
    service.start_web(DATABASE_POOL_SIZE="0")
    service.api("GET", "/api/runs").raise_for_status()
    before = sessions_opened()

    for _ in range(30):
        assert service.api("GET", "/api/runs").status_code == 200

    assert sessions_opened() - before >= 30


def test_there_is_no_pool_on_sqlite_or_when_it_is_turned_off(settings):
    if connection.vendor == "sqlite":
        assert use_connection_pool() is False
    settings.DATABASE_POOL_SIZE = 0
    assert use_connection_pool() is False
