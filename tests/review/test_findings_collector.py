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
import time
import zlib
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


# -- finding 1 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 1: POST /login buffers the whole body")
def test_login_stops_reading_an_oversized_form(tmp_path: Path) -> None:
    """An unauthenticated POST /login must not read (and buffer) far past its 4 KiB
    form limit: here 200 chunks of 64 KiB are offered and the app should stop after
    the first ones. Today it reads all 12.5 MiB into memory before answering 413
    (a 300 MiB body took a live collector from 39 MB to 347 MB RSS)."""
    chunk = b"a" * 65536
    offered = 200
    consumed = 0

    async def receive() -> Message:
        nonlocal consumed
        if consumed >= offered:
            return {"type": "http.disconnect"}
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": consumed < offered}

    async def run() -> _Response:
        app, store = _app(tmp_path)
        response = _Response()
        try:
            headers = {"content-type": "application/x-www-form-urlencoded"}
            await app(_scope("POST", "/login", headers), receive, response.send)
        finally:
            await store.close()
        return response

    response = asyncio.run(run())
    assert response.status == 413
    assert consumed <= 2, f"read {consumed} chunks ({consumed * 64} KiB) of an oversized form"


# -- finding 2 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 2: in-flight submit bodies are unbounded")
def test_concurrent_stalled_uploads_are_bounded(tmp_path: Path) -> None:
    """24 uploads each inflate to 1 MiB (from ~1 KiB on the wire) and then stall.
    Together they hold 24 MiB, more than the budget the collector's own event bound
    implies (max_pending_events x max_event_bytes = 1000 x 16 KiB = 16 MiB), yet none
    is refused: the 503 check only looks at the store's queue, not at bodies being
    read, so N connections cost N x max_body_bytes of memory."""
    n = 24
    inflated = 1024 * 1024 - 64
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    part = compressor.compress(b'{"events":[' + b" " * inflated)
    part += compressor.flush(zlib.Z_SYNC_FLUSH)
    release = asyncio.Event()
    stalled = 0

    def receive_for() -> Receive:
        calls = 0

        async def receive() -> Message:
            nonlocal calls, stalled
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": part, "more_body": True}
            stalled += 1
            await release.wait()
            return {"type": "http.disconnect"}

        return receive

    async def run() -> list[int | None]:
        app, store = _app(tmp_path, max_pending_events=1000, max_body_bytes=2 * 1024 * 1024)
        responses = [_Response() for _ in range(n)]
        headers = {
            "content-type": "application/json",
            "content-encoding": "gzip",
            "x-api-key": KEY,
        }
        tasks = [
            asyncio.create_task(app(_scope("POST", "/v1/submit", headers), receive_for(), r.send))
            for r in responses
        ]
        deadline = time.monotonic() + 20
        for _ in range(100_000):
            answered = sum(r.status is not None for r in responses)
            if stalled + answered >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0)
        statuses = [r.status for r in responses]
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        return statuses

    statuses = asyncio.run(run())
    assert statuses.count(503) >= 1, f"all {n} stalled uploads held their bodies: {statuses}"


# -- finding 3 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 3: PII re-check ignores identifier fields")
@pytest.mark.parametrize("field", ["install_id", "session_id", "app", "app_version"])
def test_pii_in_identifier_fields_is_rejected(field: str) -> None:
    """DESIGN §8: e-mail addresses, IPs, home paths and secrets are re-checked by
    the collector. Only ``properties`` are; an e-mail address as install_id,
    session_id, app or app_version is stored (and app names are shown on the
    dashboard and in stats; install ids are kept forever in ``installs``)."""
    raw = json.dumps(_event(**{field: "alice@example.com"})).encode()
    import msgspec

    checked = check_events(
        [msgspec.Raw(raw)], now_ms=NOW_MS, max_event_bytes=16384, max_future_skew_ms=86_400_000
    )
    assert [e.code for e in checked.errors] == ["pii"]


# -- finding 4 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 4: the dashboard cookie outlives logout")
def test_logout_ends_the_dashboard_session(tmp_path: Path) -> None:
    """The session cookie is HMAC(token, constant): the same value for every login,
    with no expiry, and POST /logout only asks the browser to drop it. A copy taken
    before logout keeps opening the dashboard until the admin token is rotated."""

    async def run() -> tuple[int | None, int | None, str]:
        app, store = _app(tmp_path)
        try:
            form = {"content-type": "application/x-www-form-urlencoded"}
            login = await _request(app, "POST", "/login", form, f"token={ADMIN}".encode())
            cookie = login.header("set-cookie")[0].split(";")[0]
            await _request(app, "POST", "/logout", {"cookie": cookie})
            after = await _request(app, "GET", "/", {"cookie": cookie})
        finally:
            await store.close()
        return login.status, after.status, login.header("set-cookie")[0]

    login_status, after_logout, set_cookie = asyncio.run(run())
    assert login_status == 303
    assert after_logout == 401, f"old cookie still opens the dashboard ({set_cookie})"


# -- finding 5 ------------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 5: client disconnect escapes as an ASGI error")
def test_client_disconnect_mid_body_is_handled(tmp_path: Path) -> None:
    """A client that hangs up mid-upload makes ``read_body`` raise Starlette's
    ClientDisconnect, which escapes the app; uvicorn logs each one as
    ``ERROR: Exception in ASGI application`` with a ~48-line traceback (60
    disconnects wrote 2,900 lines). Anyone holding the public key can flood the
    error log and page whoever alerts on it. The app should swallow it."""

    async def run() -> None:
        app, store = _app(tmp_path)
        calls = 0

        async def receive() -> Message:
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": b'{"events": [', "more_body": True}
            return {"type": "http.disconnect"}

        headers = {"content-type": "application/json", "x-api-key": KEY}
        try:
            await app(_scope("POST", "/v1/submit", headers), receive, _Response().send)
        finally:
            await store.close()

    asyncio.run(run())


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
