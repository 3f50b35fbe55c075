"""What an operator sees of the PostgreSQL store: reading with a read-only role,
permanent connection errors at once, bad filters and a lost database answered
400 and 503 (a real server, a fresh database per test)."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

from telemetry_core.collector.app import create_app
from telemetry_core.collector.cli import main
from telemetry_core.collector.postgres_store import PostgresStore
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.store import StatsQuery, StoreUnavailable
from telemetry_core.errors import StorageError
from tests.integration.pg import admin_url, fresh_database
from tests.integration.test_collector_postgres import RECEIVED, _events

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

ADMIN = "admin-token-123"


#: The tables docs/operations.md gives a reader SELECT on.
READER_TABLES = (
    "rollups, rollup_buckets, installs, counters, "
    "day_rollups, day_rollup_buckets, day_installs, day_app_installs"
)
#: What it gave before the day tables: such a reader still reads, from the hourly tables.
EARLIER_READER_TABLES = "rollups, rollup_buckets, installs, counters"


@contextmanager
def _read_only_role(pg_url: str, tables: str = READER_TABLES) -> Iterator[str]:
    """A LOGIN role with CONNECT and SELECT on ``tables`` only, dropped afterwards;
    yields its URL."""
    role = f"tc_ro_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            database = conn.info.dbname
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )
            conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(tables), sql.Identifier(role))
            )
        yield make_conninfo(pg_url, user=role)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(admin_url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("tables", [READER_TABLES, EARLIER_READER_TABLES])
def test_stats_command_reads_with_a_read_only_role(pg_url: str, tables: str) -> None:
    store = PostgresStore(pg_url)
    events = _events(random.Random(3), 40)
    asyncio.run(store.ingest(events, RECEIVED))
    asyncio.run(store.close())
    with _read_only_role(pg_url, tables) as ro_url:
        # The role cannot run a collector (that creates the schema) ...
        with pytest.raises(StorageError, match="cannot create the collector schema"):
            PostgresStore(ro_url)
        # ... but it can read its aggregates.
        result = CliRunner().invoke(main, ["stats", "--database-url", ro_url, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["totals"]["count"] == 40


def test_stats_command_creates_nothing_in_an_empty_database(pg_url: str) -> None:
    result = CliRunner().invoke(main, ["stats", "--database-url", pg_url])
    assert result.exit_code == 1
    assert "no collector tables" in result.output
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"dbname": "tc_no_such_database"}, 'database "tc_no_such_database" does not exist'),
        ({"user": "tc_no_such_role"}, 'role "tc_no_such_role" does not exist'),
    ],
)
def test_a_permanent_connection_error_fails_at_once_with_libpqs_message(
    pg_url: str, change: dict[str, str], words: str
) -> None:
    url = make_conninfo(pg_url, **change)
    with pytest.raises(StorageError) as info:
        PostgresStore(url, connect_timeout=30.0)
    assert words in str(info.value)
    assert "within" not in str(info.value)  # not the pool's give-up after retrying


def test_a_nul_in_a_stats_filter_is_400_not_500(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    app = create_app(CollectorSettings(api_keys=("k",), admin_token=ADMIN), store)
    with TestClient(app) as client:
        for path in ("/v1/stats?app=a%00b", "/?type=x%00", "/v1/stats?app=%00"):
            response = client.get(path, headers={"Authorization": f"Bearer {ADMIN}"})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "bad_query"


def test_a_lost_database_answers_503_with_retry_after() -> None:
    with fresh_database() as url:
        store = PostgresStore(url, connect_timeout=2.0)
        app = create_app(CollectorSettings(api_keys=("k",), admin_token=ADMIN), store)
        with TestClient(app) as client:
            bearer = {"Authorization": f"Bearer {ADMIN}"}
            assert client.get("/v1/stats", headers=bearer).status_code == 200
            with psycopg.connect(admin_url(), autocommit=True) as conn:
                name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(str(name)))
                )
            response = client.get("/v1/stats", headers=bearer)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "store_unavailable"
            assert int(response.headers["Retry-After"]) >= 1
            with pytest.raises(StoreUnavailable):
                asyncio.run(store.stats(StatsQuery()))
