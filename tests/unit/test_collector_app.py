"""Unit tests of the collector app through Starlette's TestClient (real SQLite files)."""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
import warnings
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
from telemetry_core.schema import ServerInfo, SubmitResponse, new_event_id

with warnings.catch_warnings():
    # starlette warns at import that it prefers httpx2 over the installed httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW_MS = 1_800_000_000_000
KEY = "submit-key-1"
ADMIN = "admin-token-123"


class FakeClock:
    """A settable clock: ``wall`` for receptions, ``mono`` for the rate limiter."""

    def __init__(self) -> None:
        self.wall = NOW_MS / 1000
        self.mono = 1000.0


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": NOW_MS - 1000,
        "install_id": "install-a",
        "app": "demo",
        "duration_ms": 12.5,
        "success": True,
        "properties": {"command": "run"},
    }
    base.update(fields)
    return base


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
