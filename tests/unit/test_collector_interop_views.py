"""The OTLP, PostHog and Segment routes through Starlette's TestClient (real SQLite files)."""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from starlette.exceptions import StarletteDeprecationWarning

from telemetry_core.collector.app import create_app
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.sqlite_store import SQLiteStore
from tests.conftest import COLLECTOR_NOW_MS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

KEY = "submit-key-1"
ADMIN = "admin-token-123"
SECRET = "identity-secret-for-tests"
PROTOBUF = "application/x-protobuf"


class Clock:
    def __init__(self) -> None:
        self.wall = COLLECTOR_NOW_MS / 1000
        self.mono = 1000.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_client(tmp_path: Path, clock: Clock, **settings: Any) -> TestClient:
    options: dict[str, Any] = {"api_keys": (KEY,), "admin_token": ADMIN, "identity_secret": SECRET}
    options.update(settings)
    store = SQLiteStore(tmp_path / "c.db")
    app = create_app(
        CollectorSettings(**options), store, clock=lambda: clock.wall, monotonic=lambda: clock.mono
    )
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    with make_client(tmp_path, clock) as c:
        yield c


def totals(client: TestClient) -> dict[str, Any]:
    answer = client.get("/v1/stats", headers={"Authorization": f"Bearer {ADMIN}"})
    result: dict[str, Any] = answer.json()["totals"]
    return result


def export(*names: str) -> bytes:
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=COLLECTOR_NOW_MS * 1_000_000,
            event_name=name,
            attributes=[
                common_pb2.KeyValue(
                    key="log.record.uid", value=common_pb2.AnyValue(string_value=str(uuid.uuid4()))
                )
            ],
        )
        for name in names
    ]
    request = logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=records)])]
    )
    data: bytes = request.SerializeToString()
    return data


def test_otlp_records_past_the_batch_limit_are_a_413_status(tmp_path: Path, clock: Clock) -> None:
    with make_client(tmp_path, clock, max_events_per_batch=2, rate_limit_burst=10) as client:
        answer = client.post(
            "/v1/logs",
            content=export("a", "b", "c"),
            headers={"Content-Type": PROTOBUF, "X-API-Key": KEY},
        )
        assert answer.status_code == 413
        assert answer.headers["content-type"] == PROTOBUF
        assert "at most 2" in status_pb2.Status.FromString(answer.content).message


def test_otlp_throttling_is_a_429_status_with_retry_after(tmp_path: Path, clock: Clock) -> None:
    with make_client(
        tmp_path, clock, max_events_per_batch=2, rate_limit_burst=2, rate_limit_per_minute=60
    ) as client:
        headers = {"Content-Type": PROTOBUF, "Authorization": f"Bearer {KEY}"}
        assert client.post("/v1/logs", content=export("a", "b"), headers=headers).status_code == 200
        answer = client.post("/v1/logs", content=export("c"), headers=headers)
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "1"
        assert status_pb2.Status.FromString(answer.content).code == 8
        assert totals(client)["throttled"] == 1


def test_untranslated_records_count_as_rejected_in_stats(client: TestClient) -> None:
    body = json.dumps(
        {"batch": [{"type": "identify", "anonymousId": "a"}, {"event": "x", "anonymousId": "a"}]}
    ).encode()
    basic = base64.b64encode(f"{KEY}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {basic}"}
    answer = client.post("/v1/batch", content=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {
        "success": True,
        "accepted": 1,
        "duplicates": 0,
        "rejected": 1,
        "errors": [
            {
                "index": 0,
                "code": "unsupported_event",
                "message": "'identify' calls carry profile data or are unknown; not stored",
            }
        ],
    }
    stats = totals(client)
    assert (stats["count"], stats["rejected"]) == (1, 1)


def test_posthog_accepts_text_plain_and_a_bearer_key(client: TestClient) -> None:
    body = json.dumps([{"event": "$pageview", "distinct_id": "u-1", "properties": {}}]).encode()
    headers = {"Content-Type": "text/plain", "Authorization": f"Bearer {KEY}"}
    answer = client.post("/e/", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    assert totals(client)["by_type"] == {"page_view": 1}


def test_posthog_js_gzip_named_in_the_query_is_inflated(client: TestClient) -> None:
    body = json.dumps([{"event": "$autocapture", "distinct_id": "u", "properties": {"token": KEY}}])
    answer = client.post(
        "/e/?compression=gzip-js",
        content=gzip.compress(body.encode()),
        headers={"Content-Type": "text/plain"},
    )
    assert answer.status_code == 200, answer.text
    assert totals(client)["by_type"] == {"autocapture": 1}


def test_posthog_without_a_key_is_a_401_with_detail(client: TestClient) -> None:
    body = json.dumps({"event": "x", "distinct_id": "u"}).encode()
    answer = client.post("/capture/", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 401
    assert answer.json()["type"] == "authentication_error"
    assert answer.json()["detail"] == "missing or unknown key (api_key in the body, or Basic auth)"


def test_the_raw_user_id_never_reaches_the_database(tmp_path: Path, client: TestClient) -> None:
    raw = "carol.person@example.org"
    body = json.dumps({"api_key": KEY, "batch": [{"event": "opened", "distinct_id": raw}]}).encode()
    assert (
        client.post("/batch/", content=body, headers={"Content-Type": "application/json"}).json()[
            "accepted"
        ]
        == 1
    )
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("c.db*"))
    assert raw.encode() not in stored
    with sqlite3.connect(tmp_path / "c.db") as conn:
        [(install,)] = conn.execute("SELECT install_id FROM events").fetchall()
    conn.close()
    assert len(install) == 32 and install != raw
