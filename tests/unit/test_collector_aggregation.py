"""Unit tests of the collector's rollup math."""

from __future__ import annotations

import random

import pytest

from telemetry_core.collector.aggregation import (
    ALPHA,
    ZERO_BUCKET,
    add_outcomes,
    bucket_index,
    bucket_start,
    bucket_value,
    build_stats,
    hour_increments,
    quantile,
    quantile_rank,
)
from telemetry_core.collector.store import HOUR_MS, IngestOutcome, StatsData, StatsQuery


@pytest.mark.parametrize("value", [1e-6, 0.001, 0.5, 1.0, 3.3, 12.5, 999.0, 86_400_000.0, 9e14])
def test_bucket_value_is_within_alpha(value: float) -> None:
    estimate = bucket_value(bucket_index(value))
    assert abs(estimate - value) <= ALPHA * value * 1.0000001


def test_zero_has_its_own_bucket() -> None:
    assert bucket_index(0.0) == ZERO_BUCKET
    assert bucket_value(ZERO_BUCKET) == 0.0


def test_quantile_matches_nearest_rank_within_alpha() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.5) for _ in range(2000)]
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket_index(v)] = counts.get(bucket_index(v), 0) + 1
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[quantile_rank(q, len(values)) - 1]
        estimate = quantile(counts, q)
        assert estimate is not None
        assert abs(estimate - exact) <= 0.02 * exact


def test_quantile_of_nothing_is_none() -> None:
    assert quantile({}, 0.5) is None


def test_bucket_start_hour_and_day() -> None:
    t = 1_700_000_123_456
    assert bucket_start(t, "hour") % HOUR_MS == 0
    assert bucket_start(t, "day") % (24 * HOUR_MS) == 0
    assert bucket_start(t, "day") <= bucket_start(t, "hour") <= t


def test_hour_increments_counts_success_failure_and_durations() -> None:
    rollups, buckets = hour_increments(
        [
            ("a", "t", 10, 5.0, True),
            ("a", "t", 20, None, False),
            ("a", "t", HOUR_MS + 1, 5.0, None),
        ]
    )
    assert rollups == {("a", "t", 0): [2, 1, 1], ("a", "t", HOUR_MS): [1, 0, 0]}
    assert sum(buckets.values()) == 2


def test_build_stats_merges_hours_into_days() -> None:
    data = StatsData(
        rollups=[("a", "t", 0, 2, 1, 1), ("a", "t", HOUR_MS, 3, 3, 0), ("a", "u", 0, 1, 0, 0)],
        buckets=[("a", "t", 0, bucket_index(10.0), 2), ("a", "t", HOUR_MS, bucket_index(20.0), 3)],
        series_installs=[("a", "t", 0, 4), ("a", "u", 0, 1)],
        total_installs=4,
        counters={"duplicate": 2, "rejected:pii": 3, "rejected:invalid_type": 1, "throttled": 5},
    )
    stats = build_stats(StatsQuery(bucket="day"), data)
    assert stats["totals"] == {
        "count": 6,
        "by_type": {"t": 5, "u": 1},
        "installs": 4,
        "success": 4,
        "failure": 1,
        "duplicates": 2,
        "rejected": 4,
        "rejected_by_code": {"invalid_type": 1, "pii": 3},
        "throttled": 5,
    }
    t_row = stats["series"][0]
    assert (t_row["type"], t_row["count"], t_row["installs"]) == ("t", 5, 4)
    assert t_row["p50_ms"] == pytest.approx(20.0, rel=0.01)
    assert stats["series"][1]["p50_ms"] is None


def test_ingest_outcome_counts() -> None:
    outcome = IngestOutcome(inserted=(True, False, True))
    assert (outcome.accepted, outcome.duplicates) == (2, 1)


def test_add_outcomes_counts_by_hour_of_reception_and_skips_zeros() -> None:
    counters: dict[tuple[int, str], int] = {(0, "throttled"): 2}
    add_outcomes(counters, rejected={"bad_type": 3, "too_large": 0}, throttled=4, received_ms=5_000)
    add_outcomes(counters, rejected={"bad_type": 1}, throttled=0, received_ms=3_600_000)
    assert counters == {
        (0, "throttled"): 6,
        (0, "rejected:bad_type"): 3,
        (3_600_000, "rejected:bad_type"): 1,
    }
