"""Unit tests of the collector app through Starlette's TestClient (real SQLite files)."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from telemetry_core.collector.app import create_app
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.errors import ConfigError
from telemetry_core.schema import ServerInfo, SubmitResponse
from tests.conftest import COLLECTOR_NOW_MS, wire_event

with warnings.catch_warnings():
    # starlette warns at import that it prefers httpx2 over the installed httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW_MS = COLLECTOR_NOW_MS
KEY = "submit-key-1"
ADMIN = "admin-token-123"


class FakeClock:
    """A settable clock: ``wall`` for receptions, ``mono`` for the rate limiter."""

    def __init__(self) -> None:
        self.wall = NOW_MS / 1000
        self.mono = 1000.0


def event(**fields: Any) -> dict[str, Any]:
    """A valid event with a duration, an outcome and one property; ``fields`` override."""
    return wire_event(
        **{"duration_ms": 12.5, "success": True, "properties": {"command": "run"}, **fields}
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_client(tmp_path: Path, clock: FakeClock, **settings: Any) -> TestClient:
    options: dict[str, Any] = {"api_keys": (KEY, "other-key"), "admin_token": ADMIN}
    options.update(settings)
    store = SQLiteStore(
        tmp_path / "c.db", max_pending_events=options.get("max_pending_events", 50_000)
    )
    app = create_app(
        CollectorSettings(**options), store, clock=lambda: clock.wall, monotonic=lambda: clock.mono
    )
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path, clock: FakeClock) -> Iterator[TestClient]:
    with make_client(tmp_path, clock) as c:
        yield c


def submit(client: TestClient, body: Any, **headers: str) -> Any:
    h = {"X-API-Key": KEY, "Content-Type": "application/json"}
    h.update(headers)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/submit", content=data, headers=h)


def admin_get(client: TestClient, path: str) -> Any:
    return client.get(path, headers={"Authorization": f"Bearer {ADMIN}"})


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)


def test_partial_success_and_duplicates(client: TestClient) -> None:
    good = event()
    batch = [good, event(properties={"mail": "bob@example.com"}), {"id": 1}, event(), good]
    response = submit(client, {"events": batch})
    assert response.status_code == 200
    result = msgspec.json.decode(response.content, type=SubmitResponse)
    assert (result.accepted, result.rejected, result.duplicates) == (2, 2, 1)
    assert not result.success
    assert [(e.index, e.code) for e in result.errors] == [(1, "pii"), (2, "invalid_event")]
    again = msgspec.json.decode(submit(client, {"events": [good]}).content, type=SubmitResponse)
    assert (again.accepted, again.duplicates, again.success) == (0, 1, True)
    stats = admin_get(client, "/v1/stats").json()
    assert stats["totals"]["count"] == 2
    assert stats["totals"]["duplicates"] == 2
    assert stats["totals"]["rejected_by_code"] == {"invalid_event": 1, "pii": 1}


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"type": "Bad Type"}, "invalid_type"),
        ({"timestamp": NOW_MS + 2 * 86_400_000}, "future_timestamp"),
        ({"duration_ms": -1}, "invalid_duration"),
        ({"id": "not-a-uuid"}, "invalid_id"),
        ({"properties": {"p": "/home/alice/x"}}, "pii"),
        ({"properties": {"p": "10.1.2.3"}}, "pii"),
        ({"properties": {"p": "x" * 20_000}}, "too_large"),
        ({"schema": 2}, "unsupported_schema"),
    ],
)
def test_each_bad_event_is_rejected_alone(
    client: TestClient, fields: dict[str, Any], code: str
) -> None:
    result = submit(client, {"events": [event(), event(**fields)]}).json()
    assert result["accepted"] == 1
    assert result["errors"] == [
        {"index": 1, "code": code, "message": result["errors"][0]["message"]}
    ]


def test_gzip_body(client: TestClient) -> None:
    body = gzip.compress(json.dumps({"events": [event(), event()]}).encode())
    response = submit(client, body, **{"Content-Encoding": "gzip"})
    assert response.json()["accepted"] == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"no_events": []}', "malformed"),
        (b'{"events": 5}', "malformed"),
        (b'{"events": ["\xff\xfe"]}', "malformed"),
    ],
)
def test_malformed_envelope_is_400(client: TestClient, body: bytes, code: str) -> None:
    assert_error(submit(client, body), 400, code)


def test_corrupt_gzip_is_400(client: TestClient) -> None:
    assert_error(
        submit(client, b"\x1f\x8b garbage", **{"Content-Encoding": "gzip"}), 400, "bad_encoding"
    )


def test_missing_or_unknown_key_is_401(client: TestClient) -> None:
    assert_error(submit(client, {"events": []}, **{"X-API-Key": "nope"}), 401, "unauthorized")
    response = client.post("/v1/submit", json={"events": []})
    assert_error(response, 401, "unauthorized")


def test_wrong_content_type_or_encoding_is_415(client: TestClient) -> None:
    assert_error(
        submit(client, b"{}", **{"Content-Type": "text/plain"}), 415, "unsupported_media_type"
    )
    assert_error(submit(client, b"{}", **{"Content-Encoding": "br"}), 415, "unsupported_encoding")


def test_wrong_method_is_405(client: TestClient) -> None:
    assert_error(client.get("/v1/submit"), 405, "method_not_allowed")
    assert_error(client.get("/nowhere"), 404, "not_found")


def test_too_large_is_413(tmp_path: Path, clock: FakeClock) -> None:
    with make_client(
        tmp_path, clock, max_events_per_batch=3, max_body_bytes=5000, rate_limit_burst=10
    ) as c:
        assert_error(submit(c, {"events": [event() for _ in range(4)]}), 413, "too_many_events")
        big = json.dumps(
            {"events": [event(properties={"p": "a" * 1000, "q": "b" * 1000}) for _ in range(3)]}
        )
        assert_error(submit(c, big.encode()), 413, "too_large")
        bomb = gzip.compress(b'{"events": [' + b" " * 10_000_000 + b"]}")
        assert len(bomb) < 20_000
        assert_error(submit(c, bomb, **{"Content-Encoding": "gzip"}), 413, "too_large")


def test_compressed_cap_is_413(tmp_path: Path, clock: FakeClock) -> None:
    with make_client(tmp_path, clock, max_compressed_body_bytes=100) as c:
        assert_error(submit(c, {"events": [event()]}), 413, "too_large")


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, clock: FakeClock) -> None:
    with make_client(
        tmp_path, clock, rate_limit_per_minute=60, rate_limit_burst=5, max_events_per_batch=5
    ) as c:
        assert submit(c, {"events": [event() for _ in range(4)]}).status_code == 200
        response = submit(c, {"events": [event() for _ in range(3)]})
        assert_error(response, 429, "rate_limited")
        assert response.headers["Retry-After"] == "2"
        # another key has its own bucket
        assert submit(c, {"events": [event()]}, **{"X-API-Key": "other-key"}).status_code == 200
        clock.mono += 2
        assert submit(c, {"events": [event() for _ in range(3)]}).status_code == 200
        assert admin_get(c, "/v1/stats").json()["totals"]["throttled"] == 3


def test_overload_is_503_with_retry_after(tmp_path: Path, clock: FakeClock) -> None:
    with make_client(tmp_path, clock, max_pending_events=1) as c:
        blocker = sqlite3.connect(tmp_path / "c.db", isolation_level=None, timeout=1)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            # the writer is blocked by the lock; one request waits in the store's queue
            results: list[int] = []
            t = threading.Thread(
                target=lambda: results.append(submit(c, {"events": [event()]}).status_code)
            )
            t.start()
            for _ in range(200):
                if "telemetry_collector_queue_depth 1.0" in admin_get(c, "/metrics").text:
                    break
                t.join(0.01)
            response = submit(c, {"events": [event()]})
            assert_error(response, 503, "overloaded")
            assert response.headers["Retry-After"] == "1"
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        t.join(10)
        assert results == [200]


def test_info_and_ping(client: TestClient) -> None:
    assert client.get("/ping").status_code == 200
    info = msgspec.json.decode(client.get("/v1/info").content, type=ServerInfo)
    assert info.schema_version == 1
    assert info.limits.max_events_per_batch == 1000


def test_admin_endpoints_need_the_admin_token(client: TestClient) -> None:
    for path in ("/v1/stats", "/metrics"):
        assert_error(client.get(path), 401, "unauthorized")
        response = client.get(path, headers={"Authorization": f"Bearer {KEY}"})
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get(path, headers={"X-API-Key": KEY}).status_code == 401
    assert client.get("/", headers={"X-API-Key": KEY}).status_code == 401


@pytest.mark.parametrize(
    "query",
    ["from=yesterday", "to=2024-13-01", "bucket=week", "from=10&to=5", "from=-5"],
)
def test_bad_stats_query_is_400(client: TestClient, query: str) -> None:
    assert_error(admin_get(client, f"/v1/stats?{query}"), 400, "bad_query")


def test_stats_filters_and_iso_times(client: TestClient) -> None:
    submit(client, {"events": [event(), event(type="other", success=False)]})
    body = admin_get(
        client, "/v1/stats?from=2027-01-01T00:00:00Z&to=2027-12-31&type=other&bucket=day"
    ).json()
    assert body["totals"]["by_type"] == {"other": 1}
    (row,) = body["series"]
    assert set(row) >= {
        "app", "type", "bucket_start", "count", "success", "failure",
        "p50_ms", "p95_ms", "p99_ms", "installs",
    }  # fmt: skip
    assert (row["failure"], row["installs"]) == (1, 1)
    assert row["p95_ms"] == pytest.approx(12.5, rel=0.02)


def test_dashboard_login_flow(client: TestClient) -> None:
    submit(client, {"events": [event()]})
    page = client.get("/")
    assert page.status_code == 401 and "<form" in page.text
    wrong = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401
    ok = client.post("/login", data={"token": ADMIN}, follow_redirects=False)
    assert ok.status_code == 303
    cookie = ok.cookies.get("telemetry_admin")
    assert cookie and ADMIN not in cookie
    page = client.get("/")
    assert page.status_code == 200 and "command_executed" in page.text
    client.post("/logout", follow_redirects=False)
    client.cookies.clear()
    assert client.get("/").status_code == 401


def test_metrics_count_outcomes(client: TestClient) -> None:
    submit(client, {"events": [event(), event(type="BAD")]})
    text = admin_get(client, "/metrics").text
    assert 'telemetry_collector_events_total{outcome="accepted"} 1.0' in text
    assert 'telemetry_collector_rejected_events_total{code="invalid_type"} 1.0' in text
    assert 'telemetry_collector_requests_total{path="/v1/submit",status="200"} 1.0' in text
    assert "telemetry_collector_commit_seconds_count" in text
    assert KEY not in text and ADMIN not in text


def test_logs_never_contain_keys_or_properties(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="telemetry_core.collector")
    submit(client, {"events": [event(properties={"secret_sauce": "tomato"})]})
    submit(client, {"events": []}, **{"X-API-Key": "wrong-key-xyz"})
    text = caplog.text
    assert "submit ok" in text
    for needle in (KEY, "wrong-key-xyz", "tomato", "secret_sauce", ADMIN):
        assert needle not in text


def test_settings_validation() -> None:
    with pytest.raises(ConfigError):
        CollectorSettings(api_keys=("",))
    with pytest.raises(ConfigError):
        CollectorSettings(api_keys=("k",), admin_token="short")
    with pytest.raises(ConfigError):
        CollectorSettings(api_keys=("k",), rate_limit_burst=10)


# -- hardening (collector review findings 1, 2, 4, 5, 12, 13, 14) --------------------

Message = dict[str, Any]


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


class _Sent:
    """What the app sent on one ASGI call."""

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

    def header(self, name: str) -> str | None:
        found = [v.decode() for k, v in self.headers if k.decode().lower() == name]
        return found[0] if found else None


def _asgi_app(tmp_path: Path, **settings: Any) -> tuple[Any, SQLiteStore]:
    store = SQLiteStore(
        tmp_path / "asgi.db", max_pending_events=settings.get("max_pending_events", 50_000)
    )
    options: dict[str, Any] = {"api_keys": (KEY,), "admin_token": ADMIN, "tls": True}
    options.update(settings)
    return create_app(CollectorSettings(**options), store, clock=lambda: NOW_MS / 1000), store


def test_login_stops_reading_an_oversized_form(tmp_path: Path) -> None:
    """Finding 1: an unauthenticated /login form past 4 KiB is refused after the first
    chunk, not buffered whole (200 x 64 KiB offered, no Content-Length)."""
    chunk = b"a" * 65536
    offered = 200
    consumed = 0

    async def receive() -> Message:
        nonlocal consumed
        if consumed >= offered:
            return {"type": "http.disconnect"}
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": consumed < offered}

    async def run() -> _Sent:
        app, store = _asgi_app(tmp_path)
        sent = _Sent()
        try:
            headers = {"content-type": "application/x-www-form-urlencoded"}
            await app(_scope("POST", "/login", headers), receive, sent.send)
        finally:
            await store.close()
        return sent

    sent = asyncio.run(run())
    assert sent.status == 413
    assert sent.header("connection") == "close"
    assert consumed <= 2, f"read {consumed} chunks of an oversized form"


def test_login_refuses_a_declared_oversized_form_without_reading(client: TestClient) -> None:
    response = client.post(
        "/login",
        content=b"token=" + b"a" * 5000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 413, "too_large")


def test_concurrent_stalled_uploads_are_bounded(tmp_path: Path) -> None:
    """Finding 2: 24 uploads each inflate to 1 MiB (from ~1 KiB on the wire) and stall.
    The in-flight budget (1000 pending x 16 KiB = 16 MiB here) refuses some of them
    with 503 + Retry-After instead of holding 24 MiB; once they end, the budget is
    free again and a normal batch is accepted."""
    n = 24
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    part = compressor.compress(b'{"events":[' + b" " * (1024 * 1024 - 64))
    part += compressor.flush(zlib.Z_SYNC_FLUSH)
    release = asyncio.Event()
    stalled = 0

    def receive_for() -> Any:
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

    async def run() -> tuple[list[_Sent], _Sent]:
        app, store = _asgi_app(tmp_path, max_pending_events=1000, max_body_bytes=2 * 1024 * 1024)
        sent = [_Sent() for _ in range(n)]
        headers = {"content-type": "application/json", "content-encoding": "gzip", "x-api-key": KEY}
        tasks = [
            asyncio.create_task(app(_scope("POST", "/v1/submit", headers), receive_for(), s.send))
            for s in sent
        ]
        deadline = time.monotonic() + 20
        for _ in range(100_000):
            answered = sum(s.status is not None for s in sent)
            if stalled + answered >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)
        after = _Sent()
        body = json.dumps({"events": [event()]}).encode()
        plain = {"content-type": "application/json", "x-api-key": KEY}
        await app(_scope("POST", "/v1/submit", plain), _once(body), after.send)
        await store.close()
        return sent, after

    sent, after = asyncio.run(run())
    refused = [s for s in sent if s.status == 503]
    assert refused, [s.status for s in sent]
    assert len(refused) < n  # the budget admits uploads up to its size
    assert all(s.header("retry-after") == "1" for s in refused)
    assert after.status == 200, after.body


def _once(body: bytes) -> Any:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def test_stalled_body_gets_408_and_closes(tmp_path: Path) -> None:
    """Finding 2: a body that stops arriving is cut off at the body deadline."""

    async def run() -> _Sent:
        app, store = _asgi_app(tmp_path, body_timeout_s=0.05)
        calls = 0

        async def receive() -> Message:
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": b'{"events": [', "more_body": True}
            await asyncio.Event().wait()  # never more data
            raise AssertionError("unreachable")

        sent = _Sent()
        headers = {"content-type": "application/json", "x-api-key": KEY}
        try:
            await asyncio.wait_for(
                app(_scope("POST", "/v1/submit", headers), receive, sent.send), 20
            )
        finally:
            await store.close()
        return sent

    sent = asyncio.run(run())
    assert sent.status == 408
    assert json.loads(sent.body)["error"]["code"] == "request_timeout"
    assert sent.header("connection") == "close"


@pytest.mark.parametrize("path", ["/v1/submit", "/login"])
def test_client_disconnect_mid_body_is_handled(
    tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 5: a client hanging up mid-upload is one INFO line, not an ASGI error."""
    caplog.set_level("INFO", logger="telemetry_core.collector")

    async def run() -> _Sent:
        app, store = _asgi_app(tmp_path)
        calls = 0

        async def receive() -> Message:
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"type": "http.request", "body": b'{"events": [', "more_body": True}
            return {"type": "http.disconnect"}

        sent = _Sent()
        headers = {"content-type": "application/json", "x-api-key": KEY}
        try:
            await app(_scope("POST", path, headers), receive, sent.send)
        finally:
            await store.close()
        return sent

    sent = asyncio.run(run())
    assert sent.status == 499
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "INFO"
    assert not any(r.exc_info for r in caplog.records)


def _login(client: TestClient, token: str = ADMIN) -> Any:
    return client.post("/login", data={"token": token}, follow_redirects=False)


def test_logout_ends_the_dashboard_session(client: TestClient) -> None:
    """Finding 4: a copy of the cookie taken before logout no longer opens the dashboard."""
    first = _login(client)
    assert first.status_code == 303
    cookie = first.cookies["telemetry_admin"]
    second = _login(client).cookies["telemetry_admin"]
    assert cookie != second  # random per login, not a function of the token
    client.cookies.clear()
    assert client.get("/", headers=_cookie(cookie)).status_code == 200
    client.post("/logout", headers=_cookie(cookie), follow_redirects=False)
    client.cookies.clear()
    assert client.get("/", headers=_cookie(cookie)).status_code == 401
    assert client.get("/", headers=_cookie(second)).status_code == 200
    client.cookies.clear()


def test_dashboard_session_expires(client: TestClient, clock: FakeClock) -> None:
    cookie = _login(client).cookies["telemetry_admin"]
    client.cookies.clear()
    clock.wall += 8 * 3600 - 1
    assert client.get("/", headers=_cookie(cookie)).status_code == 200
    clock.wall += 1
    assert client.get("/", headers=_cookie(cookie)).status_code == 401
    client.cookies.clear()


def test_forged_session_cookies_are_refused(client: TestClient) -> None:
    issued, nonce, mac = _login(client).cookies["telemetry_admin"].split(".")
    client.cookies.clear()
    later = str(int(issued) + 3600)
    for forged in (f"{later}.{nonce}.{mac}", f"{issued}.{nonce}.{'0' * len(mac)}", "x", "1.2"):
        assert client.get("/", headers=_cookie(forged)).status_code == 401
    client.cookies.clear()


@pytest.mark.parametrize(
    ("tls", "secure_cookies", "secure"),
    [(True, False, True), (False, True, True), (False, False, False)],
)
def test_session_cookie_flags(
    tmp_path: Path, clock: FakeClock, tls: bool, secure_cookies: bool, secure: bool
) -> None:
    """Finding 12: ``Secure`` under TLS or with --secure-cookies (TLS-terminating proxy)."""
    with make_client(tmp_path, clock, tls=tls, secure_cookies=secure_cookies) as c:
        header = _login(c).headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header and "max-age=28800" in header
    assert ("; secure" in header) is secure


def test_admin_failures_are_logged_and_throttled(
    client: TestClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 13: each refused admin attempt logs one line (no token); past 10 a
    minute from one address they get 429 with Retry-After, even the right token,
    until the bucket refills."""
    caplog.set_level("INFO", logger="telemetry_core.collector")
    statuses = [_login(client, f"guess-{i}").status_code for i in range(5)]
    bearer = {"Authorization": "Bearer guess-bearer"}
    statuses += [client.get("/v1/stats", headers=bearer).status_code for _ in range(5)]
    assert statuses == [401] * 10
    throttled = _login(client)
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 429
    refused = [r for r in caplog.records if "admin auth refused" in r.getMessage()]
    assert len(refused) == 10
    assert "guess" not in caplog.text and ADMIN not in caplog.text
    clock.mono += 60
    assert _login(client).status_code == 303
    client.cookies.clear()


def test_dashboard_pages_send_defensive_headers(client: TestClient) -> None:
    """Finding 14: CSP, nosniff, frame denial and no referrer on every dashboard page."""
    pages = [client.get("/"), _login(client, "wrong-token"), client.get("/", headers=_bearer())]
    for page in pages:
        csp = page.headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'sha256-")
        assert csp.endswith(
            "; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        assert "unsafe" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
    assert [p.status_code for p in pages] == [401, 401, 200]


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def _cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"telemetry_admin={value}"}


# --- the request cap and the drain of refused bodies (round 2 findings) ---


def _asgi_scope(path: str = "/v1/submit") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}


def test_request_cap_answers_503_json_with_retry_after_and_frees_its_slot() -> None:
    from telemetry_core.collector.middleware import ConcurrencyCap

    async def scenario() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        release = asyncio.Event()

        async def slow_app(scope: Any, receive: Any, send: Any) -> None:
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        cap = ConcurrencyCap(slow_app, limit=1)
        answers: list[tuple[int, dict[bytes, bytes], bytes]] = []

        async def call() -> None:
            parts: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                parts.append(message)

            await cap(_asgi_scope(), receive, send)
            start, *bodies = parts
            body = b"".join(m.get("body", b"") for m in bodies)
            answers.append((start["status"], dict(start["headers"]), body))

        first = asyncio.create_task(call())
        await asyncio.sleep(0)  # let the first request take the only slot
        await asyncio.wait_for(call(), 5)  # refused at once, never waits for the first
        assert cap.active == 1
        release.set()
        await asyncio.wait_for(first, 5)
        await asyncio.wait_for(call(), 5)  # the slot is free again
        assert cap.active == 0
        return answers

    refused, done, again = asyncio.run(scenario())
    assert refused[0] == 503
    assert refused[1][b"retry-after"] == b"1"
    assert refused[1][b"connection"] == b"close"
    assert refused[1][b"content-type"] == b"application/json"
    assert json.loads(refused[2])["error"]["code"] == "overloaded"
    assert (done[0], again[0]) == (200, 200)


def _receive_from(messages: list[dict[str, Any]], *, then_block: bool = False) -> Any:
    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        if then_block:
            await asyncio.Event().wait()  # a client that stops sending
        return {"type": "http.disconnect"}

    return receive


def _chunks(*sizes: int, last_done: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "type": "http.request",
            "body": b"x" * n,
            "more_body": not (last_done and i == len(sizes) - 1),
        }
        for i, n in enumerate(sizes)
    ]


def test_body_drain_reads_the_rest_within_the_byte_bound() -> None:
    from telemetry_core.collector.middleware import BodyStream

    async def scenario() -> tuple[bool, int, bool, int]:
        whole = BodyStream(_receive_from(_chunks(100, 100, 100)))
        ok = await whole.drain(300, 5)
        over = BodyStream(_receive_from(_chunks(100, 100, 100, 100)))
        stopped = await over.drain(250, 5)
        return ok, whole.received, stopped, over.received

    ok, received, stopped, over_received = asyncio.run(scenario())
    assert (ok, received) == (True, 300)
    # Past the bound it stops reading (the connection is then closed).
    assert (stopped, over_received) == (False, 300)


def test_body_drain_stops_on_disconnect_and_on_its_deadline() -> None:
    from telemetry_core.collector.middleware import BodyStream

    async def scenario() -> tuple[bool, bool, bool]:
        gone = BodyStream(_receive_from(_chunks(10, last_done=False)))
        stalled = BodyStream(_receive_from(_chunks(10, last_done=False), then_block=True))
        finished = BodyStream(_receive_from([]))
        finished.complete = True  # nothing left to read: returns without receiving
        return (
            await gone.drain(1000, 5),
            await asyncio.wait_for(stalled.drain(1000, 0.01), 5),
            await finished.drain(0, 0),
        )

    assert asyncio.run(scenario()) == (False, False, True)


def test_413_mid_stream_drains_the_rest_then_closes(tmp_path: Path, clock: FakeClock) -> None:
    # A body without Content-Length past the compressed cap is refused while it
    # streams; the rest is read (the log says drained=yes) and the answer closes.
    with make_client(tmp_path, clock, max_compressed_body_bytes=1000) as c:
        chunks = iter([b"x" * 600, b"x" * 600, b"x" * 600])
        response = c.post(
            "/v1/submit",
            content=chunks,
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert response.headers["connection"] == "close"


def test_settings_drain_bounds() -> None:
    settings = CollectorSettings(api_keys=("k",))
    assert settings.drain_bytes == 2 * 1000 * 16 * 1024
    assert settings.drain_seconds == 5.0
    short = CollectorSettings(api_keys=("k",), body_timeout_s=2.0, drain_max_bytes=0)
    assert (short.drain_bytes, short.drain_seconds) == (0, 2.0)
    with pytest.raises(ConfigError):
        CollectorSettings(api_keys=("k",), drain_max_bytes=-1)
    with pytest.raises(ConfigError):
        CollectorSettings(api_keys=("k",), max_concurrent_requests=0)


def test_retention_survives_an_unexpected_error(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from telemetry_core.collector import retention

    monkeypatch.setattr(retention, "MIN_PAUSE_S", 0.0)
    second_run = threading.Event()

    class FlakyStore(SQLiteStore):
        """Retention raises a non-storage error once, then works."""

        runs = 0

        async def cleanup(self, retention_days: int, now_ms: int) -> int:
            FlakyStore.runs += 1
            if FlakyStore.runs == 1:
                raise RuntimeError("retention bug")
            second_run.set()
            return await super().cleanup(retention_days, now_ms)

    store = FlakyStore(tmp_path / "c.db")
    settings = CollectorSettings(api_keys=(KEY,), admin_token=ADMIN, cleanup_interval_s=0.0)
    app = create_app(settings, store, clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    with caplog.at_level("ERROR", logger="telemetry_core.collector"), TestClient(app):
        assert second_run.wait(10)
    assert any(r.getMessage() == "retention failed unexpectedly" for r in caplog.records)
