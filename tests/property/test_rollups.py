"""Property: rollups equal an exact recomputation from the distinct events, whatever
the duplication, submission order and batch split (counts exactly, percentiles
within 2 %)."""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core.collector.aggregation import bucket_start, quantile_rank
from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.collector.store import StatsQuery
from telemetry_core.schema import Event

T0 = 1_700_000_000_000


@st.composite
def event_sets(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(1, 60))
    events = []
    for i in range(n):
        events.append(
            Event(
                id=f"00000000-0000-7000-8000-{i:012x}",
                type=draw(st.sampled_from(["a", "b", "c.d"])),
                timestamp=T0 + draw(st.integers(0, 50 * 3_600_000)),
                install_id=draw(st.sampled_from(["i1", "i2", "i3", "i4"])),
                app=draw(st.sampled_from(["x", "y"])),
                duration_ms=draw(st.none() | st.just(0.0) | st.floats(0.001, 1e7, allow_nan=False)),
                success=draw(st.none() | st.booleans()),
            )
        )
    return events


def expected(events: list[Event], grain: str) -> tuple[dict[Any, Any], int]:
    groups: dict[tuple[str, str, int], list[Event]] = defaultdict(list)
    for e in events:
        groups[(e.app, e.type, bucket_start(e.timestamp, grain))].append(e)
    rows = {}
    for key, members in groups.items():
        durations = sorted(e.duration_ms for e in members if e.duration_ms is not None)
        pcts = [
            durations[quantile_rank(q, len(durations)) - 1] if durations else None
            for q in (0.5, 0.95, 0.99)
        ]
        rows[key] = (
            len(members),
            sum(e.success is True for e in members),
            sum(e.success is False for e in members),
            len({e.install_id for e in members}),
            pcts,
        )
    return rows, len({(e.app, e.install_id) for e in events})


def close_enough(estimate: float | None, exact: float | None) -> bool:
    if exact is None or estimate is None:
        return estimate is exact
    return abs(estimate - exact) <= 0.02 * exact + 0.001  # stats round to 1 µs


@settings(max_examples=40, deadline=None)
@given(
    events=event_sets(),
    data=st.data(),
)
def test_rollups_equal_exact_recomputation(events: list[Event], data: st.DataObject) -> None:
    sends = events + data.draw(st.lists(st.sampled_from(events), max_size=40), label="dups")
    sends = data.draw(st.permutations(sends), label="order")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(sends) - 1)), max_size=6)))
    batches = [sends[a:b] for a, b in zip([0, *cuts], [*cuts, len(sends)], strict=True)]
    batches = [b for b in batches if b]

    async def run(path: Path) -> tuple[int, dict[str, Any], dict[str, Any]]:
        store = SQLiteStore(path, synchronous="OFF")  # durability is not under test here
        outcomes = await asyncio.gather(*(store.ingest(b, T0) for b in batches))
        hourly = await store.stats(StatsQuery(bucket="hour"))
        daily = await store.stats(StatsQuery(bucket="day"))
        await store.close()
        return sum(o.accepted for o in outcomes), hourly, daily

    with tempfile.TemporaryDirectory() as tmp:
        accepted, hourly, daily = asyncio.run(run(Path(tmp) / "c.db"))

    assert accepted == len(events)
    for stats, grain in ((hourly, "hour"), (daily, "day")):
        rows, installs = expected(events, grain)
        assert stats["totals"]["count"] == len(events)
        assert stats["totals"]["duplicates"] == len(sends) - len(events)
        assert stats["totals"]["installs"] == installs
        got = {(s["app"], s["type"], s["bucket_start"]): s for s in stats["series"]}
        assert set(got) == set(rows)
        for key, (count, success, failure, n_installs, pcts) in rows.items():
            s = got[key]
            assert (s["count"], s["success"], s["failure"], s["installs"]) == (
                count,
                success,
                failure,
                n_installs,
            )
            for name, exact in zip(("p50_ms", "p95_ms", "p99_ms"), pcts, strict=True):
                assert close_enough(s[name], exact), (name, s[name], exact)
