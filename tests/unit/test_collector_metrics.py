"""Unit tests of the collector's Prometheus metrics (a registry of its own per app)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from telemetry_core.collector.metrics import CollectorMetrics


def _samples(metrics: CollectorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_render_by_label() -> None:
    metrics = CollectorMetrics(lambda: 0.0)
    metrics.requests.labels("/v1/submit", "200").inc(3)
    metrics.events.labels("accepted").inc(5)
    metrics.rejected.labels("bad_type").inc(2)
    samples = _samples(metrics)
    path_200 = (("path", "/v1/submit"), ("status", "200"))
    assert samples[("telemetry_collector_requests_total", path_200)] == 3
    assert samples[("telemetry_collector_events_total", (("outcome", "accepted"),))] == 5
    assert samples[("telemetry_collector_rejected_events_total", (("code", "bad_type"),))] == 2


def test_queue_depth_is_read_at_scrape_time() -> None:
    depth = [7.0]
    metrics = CollectorMetrics(lambda: depth[0])
    assert _samples(metrics)[("telemetry_collector_queue_depth", ())] == 7.0
    depth[0] = 2.0
    assert _samples(metrics)[("telemetry_collector_queue_depth", ())] == 2.0


def test_a_commit_observation_lands_in_the_commit_histogram() -> None:
    metrics = CollectorMetrics(lambda: 0.0)
    metrics.observe_commit(0.02, 100)
    metrics.observe_commit(0.5, 3)
    samples = _samples(metrics)
    assert samples[("telemetry_collector_commit_seconds_count", ())] == 2
    assert abs(samples[("telemetry_collector_commit_seconds_sum", ())] - 0.52) < 1e-9


def test_two_apps_count_apart() -> None:
    first, second = CollectorMetrics(lambda: 0.0), CollectorMetrics(lambda: 0.0)
    first.events.labels("duplicate").inc()
    events_dup = ("telemetry_collector_events_total", (("outcome", "duplicate"),))
    assert _samples(first)[events_dup] == 1
    assert events_dup not in _samples(second)
