"""Tests of the one place stats filters are checked (telemetry_core.collector.stats_query)."""

from __future__ import annotations

import pytest

from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.stats_query import parse_stats_query


def test_times_are_milliseconds_or_iso_8601() -> None:
    query = parse_stats_query({"from": "1000", "to": "1970-01-01T00:00:02Z"})
    assert (query.from_ms, query.to_ms) == (1000, 2000)


@pytest.mark.parametrize("value", ["\u0661\u0662\u0663", "1_000", "\uff11\uff12", " 12"])
def test_numbers_are_ascii_digits_only(value: str) -> None:
    with pytest.raises(IngestError) as info:
        parse_stats_query({"from": value})
    assert info.value.status == 400 and "milliseconds or ISO-8601" in info.value.message


def test_a_reversed_range_is_refused_in_words() -> None:
    with pytest.raises(IngestError) as info:
        parse_stats_query({"from": "2000", "to": "1000"})
    assert "after" in info.value.message and "empty" in info.value.message
