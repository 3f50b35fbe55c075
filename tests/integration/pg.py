"""PostgreSQL for integration tests: a fresh throwaway database per test.

The server is expected at 127.0.0.1:5432 with trust authentication (as in CI,
see ``.ci/run``); ``TELEMETRY_TEST_PG_ADMIN_URL`` overrides the maintenance URL.
When the server is unreachable the tests are skipped with the reason, except
under ``CI=true``, where they fail: CI must never silently skip them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

__all__ = ["ADMIN_URL", "admin_url", "fresh_database", "require_postgres", "unreachable"]

#: Where tests connect to create and drop their databases.
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """The maintenance connection URL (env ``TELEMETRY_TEST_PG_ADMIN_URL`` wins)."""
    return os.environ.get("TELEMETRY_TEST_PG_ADMIN_URL", ADMIN_URL)


def _url_for(database: str) -> str:
    base, _, _ = admin_url().rpartition("/")
    return f"{base}/{database}"


def unreachable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it answers."""
    try:
        with psycopg.connect(admin_url(), connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL is unreachable: {str(exc).splitlines()[0]}"
    return None


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is unreachable (fail under CI=true)."""
    reason = unreachable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
    pytest.skip(reason)


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create a database ``tc_<random hex>``, yield its URL, drop it afterwards."""
    require_postgres()
    name = f"tc_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _url_for(name)
    finally:
        with psycopg.connect(admin_url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
