"""Reproductions of the collector review's findings (tests/review/FINDINGS-collector.md).

Each test states the behaviour the collector should have and is marked
``xfail(strict=True)`` while the defect is there: when a fix lands, the test
passes, strict xfail turns that into a failure, and the marker must go.

The app is driven at the ASGI level (no server, no sleeping) on real SQLite
files; the PostgreSQL finding uses a fresh database from tests/integration/pg.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from telemetry_core.collector.app import create_app
from telemetry_core.collector.cli import _read_secret_file, main
from telemetry_core.collector.ingest import check_events
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.sqlite_store import SQLiteStore, read_stats_file
from telemetry_core.collector.store import StatsQuery
from telemetry_core.schema import Event, new_event_id

KEY = "review-submit-key"
ADMIN = "review-admin-token"
NOW_MS = 1_800_000_000_000

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]


def _event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": NOW_MS - 1000,
        "install_id": "install-a",
        "app": "demo",
        "schema": 1,
    }
    base.update(fields)
    return base


def _scope(method: str, path: str, headers: dict[str, str]) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 443),
    }


class _Response:
    """Collects what the app sends."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def header(self, name: str) -> list[str]:
        return [v.decode() for k, v in self.headers if k.decode().lower() == name]


def _body_receive(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _request(
    app: Any, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> _Response:
    response = _Response()
    await app(_scope(method, path, headers), _body_receive(body), response.send)
    return response


def _app(tmp_path: Path, **settings: Any) -> tuple[Any, SQLiteStore]:
    store = SQLiteStore(tmp_path / "collector.db")
    options: dict[str, Any] = {"api_keys": (KEY,), "admin_token": ADMIN, "tls": True}
    options.update(settings)
    app = create_app(CollectorSettings(**options), store, clock=lambda: NOW_MS / 1000)
    return app, store


# -- finding 7 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 7: SQLite read URI not quoted")
def test_stats_read_works_for_a_path_with_uri_characters(tmp_path: Path) -> None:
    """The stats reader opens ``file:{path}?mode=ro`` without quoting the path: a
    ``#`` cuts the URI (dropping ``mode=ro``), so SQLite creates an empty file at the
    truncated name and the read fails with 'no such table'. Both ``telemetry-collector
    stats --db`` and the server's /v1/stats use it."""
    path = tmp_path / "col#1.db"
    event = Event(
        id=new_event_id(), type="t", timestamp=NOW_MS, install_id="i", app="a", success=True
    )

    async def fill() -> None:
        store = SQLiteStore(path)
        try:
            await store.ingest([event], NOW_MS)
        finally:
            await store.close()

    asyncio.run(fill())
    stray = tmp_path / "col"
    try:
        stats = read_stats_file(path, StatsQuery())
    finally:
        created = stray.exists()
    assert not created, "an empty stray database file was created"
    assert stats["totals"]["count"] == 1


# -- finding 8 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 8: indented comment becomes a key")
def test_indented_comment_in_keys_file_is_not_a_key(tmp_path: Path) -> None:
    """``--api-keys-file`` documents ``#`` comments, but the check runs on the
    unstripped line: ``  # retired: old-key`` becomes the accepted key
    ``# retired: old-key``."""
    keys = tmp_path / "keys"
    keys.write_text("key-a\n  # retired: key-b\n", encoding="utf-8")
    assert _read_secret_file(str(keys)) == ["key-a"]


# -- finding 9 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 9: env database URL overrides explicit --db")
def test_explicit_db_wins_over_database_url_in_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator who exports TELEMETRY_COLLECTOR_DATABASE_URL (as docs suggest, to
    keep the password out of ps) can no longer run ``stats --db FILE`` or ``serve --db
    FILE``: the environment counts as a second store and the command fails with
    'give exactly one of --db PATH or --database-url URL'."""
    path = tmp_path / "c.db"

    async def fill() -> None:
        store = SQLiteStore(path)
        await store.close()

    asyncio.run(fill())
    monkeypatch.setenv("TELEMETRY_COLLECTOR_DATABASE_URL", "postgresql://127.0.0.1:1/nowhere")
    result = CliRunner().invoke(main, ["stats", "--db", str(path), "--json"])
    assert result.exit_code == 0, result.output


# -- finding 10 -----------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 10: credentials in URLs pass the PII check")
def test_url_with_credentials_is_rejected_as_pii() -> None:
    """A property value holding a URL with a user and password is a secret, but
    the collector stores it (e-mail, IP, home path, token shapes are all caught;
    ``postgresql://app:s3cret@db/prod`` and ``redis://:p4ssw0rd@cache:6379/0`` are not)."""
    import msgspec

    raw = json.dumps(_event(properties={"db": "postgresql://app:s3cret@db/prod"}))
    checked = check_events(
        [msgspec.Raw(raw.encode())],
        now_ms=NOW_MS,
        max_event_bytes=16384,
        max_future_skew_ms=86_400_000,
    )
    assert [e.code for e in checked.errors] == ["pii"]


# -- finding 6 (PostgreSQL) -----------------------------------------------------


@pytest.mark.postgres
@pytest.mark.xfail(strict=True, reason="finding 6: PG outcome counters stay in one process")
def test_rejections_are_visible_to_every_collector_on_postgres() -> None:
    """Two collectors share one database. Rejections recorded by the first are
    buffered in its memory until it next writes a batch, so the second one's
    /v1/stats (and dashboard) shows none, and a SIGKILL loses them. Live: two
    rejected events sent to instance A, instance B reported ``rejected: 0``."""
    from telemetry_core.collector.postgres_store import PostgresStore
    from tests.integration.pg import fresh_database

    async def run(url: str) -> int:
        a = PostgresStore(url, pool_max=2)
        b = PostgresStore(url, pool_max=2)
        try:
            await a.record_outcomes(rejected={"invalid_type": 2}, throttled=0, received_ms=NOW_MS)
            stats = await b.stats(StatsQuery())
        finally:
            await a.close()
            await b.close()
        return int(stats["totals"]["rejected"])

    with fresh_database() as url:
        assert asyncio.run(run(url)) == 2
