"""The operator's routes: stats filters checked once, an unavailable store, the
metrics credentials (real SQLite files, Starlette's TestClient)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from telemetry_core.collector.metrics import CollectorMetrics
from telemetry_core.collector.server import METRICS_ADDRESS, start_metrics_server
from tests.unit.test_collector_app import (
    FakeClock,
    TestClient,
    admin_get,
    assert_error,
    event,
    make_client,
    submit,
)

METRICS_TOKEN = "scrape-token-42"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("app=de%00mo", "control characters"),
        ("app=" + "a" * 200, "at most 128"),
        ("type=Not%20A%20Type", "event type"),
        ("type=cmd%00", "event type"),
        ("from=2026-01-02&to=2026-01-01", "is after to"),
        ("from=1000&to=1000", "the range is empty"),
    ],
)
def test_bad_stats_filters_are_400_in_words_on_stats_and_dashboard(
    client: TestClient, query: str, words: str
) -> None:
    for path in ("/v1/stats", "/"):
        response = admin_get(client, f"{path}?{query}")
        assert_error(response, 400, "bad_query")
        assert words in response.json()["error"]["message"]


def test_a_store_that_cannot_be_read_answers_503_with_retry_after(
    tmp_path: Path, clock: FakeClock
) -> None:
    with make_client(tmp_path, clock) as c:
        assert submit(c, {"events": [event()]}).status_code == 200
        # The file goes away under the running collector (a lost volume): the
        # writer keeps its open handle, a stats read cannot open the file.
        (tmp_path / "c.db").unlink()
        for path in ("/v1/stats", "/"):
            response = admin_get(c, path)
            assert_error(response, 503, "store_unavailable")
            assert int(response.headers["Retry-After"]) >= 1
        assert c.get("/ping").status_code == 200  # and the collector keeps serving


def test_the_metrics_token_opens_metrics_and_nothing_else(tmp_path: Path, clock: FakeClock) -> None:
    with make_client(tmp_path, clock, metrics_token=METRICS_TOKEN) as c:
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        response = c.get("/metrics", headers=scrape)
        assert response.status_code == 200
        assert "telemetry_collector_requests_total" in response.text
        assert admin_get(c, "/metrics").status_code == 200  # the admin token still works
        assert_error(c.get("/v1/stats", headers=scrape), 401, "unauthorized")
        wrong = {"Authorization": "Bearer not-the-scrape-token"}
        assert_error(c.get("/metrics", headers=wrong), 401, "unauthorized")


def test_the_metrics_port_serves_without_credentials_on_loopback_only() -> None:
    metrics = CollectorMetrics(lambda: 3.0)
    metrics.events.labels("accepted").inc(2)
    server = start_metrics_server(metrics, 0)
    try:
        host, port = server.server_address[:2]
        assert host == METRICS_ADDRESS == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'telemetry_collector_events_total{outcome="accepted"} 2.0' in text
    assert "telemetry_collector_queue_depth 3.0" in text


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(tmp_path: Path, clock: FakeClock) -> Iterator[TestClient]:
    with make_client(tmp_path, clock) as c:
        yield c
