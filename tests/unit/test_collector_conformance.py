"""DESIGN §7 conformance of the collector's endpoints, checked value by value
(stats document keys and numbers, filters, buckets, headers, published limits)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from telemetry_core.collector.app import create_app
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.store import IngestOutcome, StatsQuery
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event
from tests.unit.test_collector_app import (
    ADMIN,
    KEY,
    NOW_MS,
    FakeClock,
    TestClient,
    admin_get,
    assert_error,
    event,
    make_client,
    submit,
)

HOUR = 3_600_000
DAY = 24 * HOUR
D = NOW_MS - NOW_MS % DAY  # the UTC day of NOW_MS (which is 08:00 that day)
MINUTE = 60_000

E1 = event(app="a", type="run", timestamp=D + HOUR + 10 * MINUTE, duration_ms=10.0,
           success=True, install_id="i1")  # fmt: skip
E2 = event(app="a", type="run", timestamp=D + HOUR + 50 * MINUTE, duration_ms=30.0,
           success=False, install_id="i2")  # fmt: skip
E3 = event(app="a", type="open", timestamp=D + 2 * HOUR + 5 * MINUTE, install_id="i1")
E3.pop("duration_ms")
E3.pop("success")
# A late event: yesterday 23:01, received today.
E4 = event(app="b", type="run", timestamp=D - HOUR + MINUTE, duration_ms=100.0,
           success=True, install_id="i3")  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(tmp_path: Path, clock: FakeClock) -> Iterator[TestClient]:
    with make_client(tmp_path, clock) as c:
        yield c


@pytest.fixture
def filled(tmp_path: Path, clock: FakeClock) -> Iterator[TestClient]:
    with make_client(tmp_path, clock) as c:
        body = submit(c, {"events": [E1, E2, E3, E4, E1, event(type="Bad")]}).json()
        assert (body["accepted"], body["duplicates"], body["rejected"]) == (4, 1, 1)
        yield c


def stats(client: TestClient, query: str = "") -> dict[str, Any]:
    response = admin_get(client, f"/v1/stats{query}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def row(app: str, etype: str, start: int, count: int, success: int, failure: int,  # noqa: PLR0917
        installs: int) -> dict[str, Any]:  # fmt: skip
    return {"app": app, "type": etype, "bucket_start": start, "count": count,
            "success": success, "failure": failure, "installs": installs}  # fmt: skip


def without_percentiles(series: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if not k.endswith("_ms")} for s in series]


def test_stats_document_keys_and_values(filled: TestClient) -> None:
    body = stats(filled)
    totals = body["totals"]
    assert {k: totals[k] for k in ("count", "by_type", "installs", "duplicates", "rejected")} == {
        "count": 4,
        "by_type": {"open": 1, "run": 3},
        "installs": 3,  # distinct (app, install_id): (a, i1), (a, i2), (b, i3)
        "duplicates": 1,
        "rejected": 1,
    }
    for s in body["series"]:
        assert set(s) == {"app", "type", "bucket_start", "count", "success", "failure",
                          "p50_ms", "p95_ms", "p99_ms", "installs"}  # fmt: skip
        assert isinstance(s["bucket_start"], int)
    assert without_percentiles(body["series"]) == [
        row("b", "run", D - HOUR, 1, 1, 0, 1),  # the late event, in the hour of its timestamp
        row("a", "run", D + HOUR, 2, 1, 1, 2),
        row("a", "open", D + 2 * HOUR, 1, 0, 0, 1),  # success absent: neither
    ]
    run = body["series"][1]
    assert run["p50_ms"] == pytest.approx(10.0, rel=0.01)  # nearest rank ceil(0.5 * 2) = 1
    assert run["p95_ms"] == pytest.approx(30.0, rel=0.01)
    assert run["p99_ms"] == pytest.approx(30.0, rel=0.01)
    assert (body["series"][2]["p50_ms"], body["series"][2]["p99_ms"]) == (None, None)


def test_day_buckets_start_at_utc_midnight(filled: TestClient) -> None:
    body = stats(filled, "?bucket=day")
    assert body["bucket"] == "day"
    assert without_percentiles(body["series"]) == [
        row("b", "run", D - DAY, 1, 1, 0, 1),
        row("a", "open", D, 1, 0, 0, 1),
        row("a", "run", D, 2, 1, 1, 2),
    ]


def test_app_and_type_filters(filled: TestClient) -> None:
    only_a = stats(filled, "?app=a&bucket=day")
    assert only_a["totals"]["count"] == 3
    assert only_a["totals"]["by_type"] == {"open": 1, "run": 2}
    assert only_a["totals"]["installs"] == 2
    assert {s["app"] for s in only_a["series"]} == {"a"}
    runs = stats(filled, "?type=run")
    assert runs["totals"]["by_type"] == {"run": 3}
    assert [s["type"] for s in runs["series"]] == ["run", "run"]
    assert stats(filled, "?app=a&type=run")["totals"]["count"] == 2
    assert stats(filled, "?app=nobody")["totals"]["count"] == 0


@pytest.mark.parametrize(
    ("query", "count"),
    [
        (f"?from={D}", 3),  # yesterday's late event is before
        (f"?to={D}", 1),  # to is exclusive: only the late event
        (f"?from={D + HOUR + 30 * MINUTE}", 3),  # from rounds down to its hour
        (f"?from={D}&to={D + 2 * HOUR}", 2),  # an hour starting at `to` is out
        (f"?from={D}&to={D + 2 * HOUR + 1}", 3),  # an hour starting before `to` is in
        ("?from=2027-01-15T01:00:00Z&to=2027-01-15T02:00", 2),  # ISO-8601, naive = UTC
    ],
)
def test_from_to_filtering_at_hour_grain(filled: TestClient, query: str, count: int) -> None:
    assert D == 1_799_971_200_000  # 2027-01-15T00:00Z, which the ISO case relies on
    assert stats(filled, query)["totals"]["count"] == count


def test_outcome_counters_filter_by_reception_time(filled: TestClient) -> None:
    received_hour = NOW_MS - NOW_MS % HOUR
    before = stats(filled, f"?to={received_hour}")["totals"]
    assert (before["duplicates"], before["rejected"]) == (0, 0)
    after = stats(filled, f"?from={received_hour}")["totals"]
    assert (after["duplicates"], after["rejected"], after["count"]) == (1, 1, 0)


def test_info_publishes_the_configured_limits(tmp_path: Path, clock: FakeClock) -> None:
    custom = {"max_events_per_batch": 50, "max_body_bytes": 70_000,
              "max_compressed_body_bytes": 30_000, "max_event_bytes": 2_000,
              "rate_limit_per_minute": 120, "rate_limit_burst": 60}  # fmt: skip
    with make_client(tmp_path, clock, **custom) as c:
        response = c.get("/v1/info")
    assert response.status_code == 200
    info = response.json()
    assert set(info) == {"name", "version", "schema_version", "limits", "dedup_window_days"}
    assert info["schema_version"] == 1
    assert {k: info["limits"][k] for k in custom} == custom
    assert info["limits"]["max_properties"] == 64


def test_info_publishes_the_dedup_window_as_the_raw_event_retention(
    tmp_path: Path, clock: FakeClock
) -> None:
    with make_client(tmp_path, clock, retention_days=45) as c:
        info = c.get("/v1/info").json()
    assert info["dedup_window_days"] == 45


def test_methods_and_health(client: TestClient) -> None:
    response = client.put("/v1/submit", headers={"X-API-Key": KEY})
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    assert client.head("/ping").status_code == 200
    assert client.get("/ping").json() == {"status": "ok"}


class FailingStore(SQLiteStore):
    """A real SQLite store whose writes fail, as a lost disk or database would."""

    async def ingest(self, events: Sequence[Event], received_ms: int) -> IngestOutcome:
        raise StorageError("disk gone")


class BrokenStatsStore(SQLiteStore):
    """A real SQLite store with a bug in its stats read."""

    async def stats(self, query: StatsQuery) -> dict[str, Any]:
        raise RuntimeError("a bug")


def _app(store: SQLiteStore) -> Any:
    return create_app(CollectorSettings(api_keys=(KEY,), admin_token=ADMIN), store)


def test_store_failure_is_503_with_integer_retry_after(tmp_path: Path) -> None:
    with TestClient(_app(FailingStore(tmp_path / "c.db"))) as c:
        response = submit(c, {"events": [event()]})
    assert_error(response, 503, "store_unavailable")
    assert int(response.headers["Retry-After"]) >= 1


def test_unexpected_error_is_a_json_500(tmp_path: Path) -> None:
    with TestClient(_app(BrokenStatsStore(tmp_path / "c.db")), raise_server_exceptions=False) as c:
        response = admin_get(c, "/v1/stats")
    assert_error(response, 500, "internal_error")


def test_a_trailing_slash_is_a_json_404_not_a_redirect(client: TestClient) -> None:
    answer = client.post("/v1/submit/", content=b"{}", follow_redirects=False)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"
