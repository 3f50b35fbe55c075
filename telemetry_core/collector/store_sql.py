"""The SQL planning both collector stores share.

The SQLite and PostgreSQL stores keep the same tables with the same meaning
(:mod:`telemetry_core.collector.store`). What they decide the same way lives
here, written once:

- :class:`Dedupe`: which events of a transaction are new (the first
  occurrence of an id not already stored) and how many are duplicates;
- :func:`plan_increments`: the rollup, histogram-bucket and install rows new
  events add, summed and in key order (the order in which concurrent writers
  take row locks);
- :func:`read_stats_data`: the five statements a stats request runs.

What differs is the :class:`Dialect` (the parameter placeholder, and the
modulo operator, which psycopg wants doubled) and each store's transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

import attrs

from telemetry_core.collector.aggregation import DAY_MS, hour_increments, hour_of
from telemetry_core.collector.store import HOUR_MS, StatsData, StatsQuery
from telemetry_core.schema import Event

__all__ = [
    "POSTGRES",
    "SQLITE",
    "Dedupe",
    "Dialect",
    "Fetch",
    "Increments",
    "plan_increments",
    "read_stats_data",
]


@attrs.frozen
class Dialect:
    """How one database spells what the shared statements need."""

    #: The positional parameter placeholder.
    placeholder: str
    #: The modulo operator as written in a statement with parameters.
    modulo: str


SQLITE: Final = Dialect(placeholder="?", modulo="%")
POSTGRES: Final = Dialect(placeholder="%s", modulo="%%")

K = TypeVar("K", bound=Hashable)

#: Runs one statement with its parameters and returns every row.
Fetch = Callable[[str, Sequence[Any]], Sequence[Sequence[Any]]]


class Dedupe(Generic[K]):
    """Decides, key by key in order, which events of one transaction are new.

    An event is new when its key (the id on SQLite, ``(app, id)`` on
    PostgreSQL) is not in ``stored`` (the keys the database already held) and
    no earlier event of the transaction had it: within a transaction the first
    occurrence wins.
    """

    def __init__(self, stored: Container[K]) -> None:
        self._stored = stored
        self._claimed: set[K] = set()

    def claim(self, event_id: K) -> bool:
        """True when ``event_id`` is new (and from now on taken)."""
        if event_id in self._claimed or event_id in self._stored:
            return False
        self._claimed.add(event_id)
        return True

    def verdicts(self, ids: Iterable[K]) -> tuple[bool, ...]:
        """:meth:`claim` for each of ``ids``: the ``inserted`` flags of a batch."""
        return tuple(self.claim(event_id) for event_id in ids)


@attrs.frozen
class Increments:
    """The rows new events add, each list sorted by its primary key.

    ``rollups``: ``(app, type, hour_ms, count, success, failure)``;
    ``buckets``: ``(app, type, hour_ms, bucket, count)``;
    ``installs``: ``(app, type, hour_ms, install_id)``.
    """

    rollups: list[tuple[str, str, int, int, int, int]]
    buckets: list[tuple[str, str, int, int, int]]
    installs: list[tuple[str, str, int, str]]


def plan_increments(events: Iterable[Event]) -> Increments:
    """Sum the rollup, bucket and install increments of ``events`` (new ones only)."""
    new = list(events)
    rollups, buckets = hour_increments(
        (e.app, e.type, e.timestamp, e.duration_ms, e.success) for e in new
    )
    return Increments(
        rollups=[(*key, *rollups[key]) for key in sorted(rollups)],  # type: ignore[misc]
        buckets=[(*key, buckets[key]) for key in sorted(buckets)],
        installs=sorted({(e.app, e.type, hour_of(e.timestamp), e.install_id) for e in new}),
    )


def read_stats_data(fetch: Fetch, query: StatsQuery, dialect: Dialect) -> StatsData:
    """Run the five stats statements of ``query`` through ``fetch`` (one
    read transaction of the caller's) and collect their rows."""
    p = dialect.placeholder
    where = [f"hour_ms >= {p}", f"hour_ms < {p}"]
    args: list[Any] = [query.from_hour_ms, query.to_ms]
    if query.app is not None:
        where.append(f"app = {p}")
        args.append(query.app)
    if query.event_type is not None:
        where.append(f"type = {p}")
        args.append(query.event_type)
    cond = " AND ".join(where)
    grain = DAY_MS if query.bucket == "day" else HOUR_MS
    if grain == HOUR_MS:
        rollups = fetch(
            f"SELECT app, type, hour_ms, count, success, failure FROM rollups WHERE {cond}", args
        )
        buckets = fetch(
            f"SELECT app, type, hour_ms, bucket, count FROM rollup_buckets WHERE {cond}", args
        )
    else:
        # Summed to the grain by the database: a year of days is 24 times fewer
        # rows to send and shape than a year of hours.
        start = f"hour_ms - hour_ms {dialect.modulo} {grain}"
        rollups = fetch(
            f"SELECT app, type, {start} AS b, CAST(SUM(count) AS BIGINT), "
            "CAST(SUM(success) AS BIGINT), CAST(SUM(failure) AS BIGINT) "
            f"FROM rollups WHERE {cond} GROUP BY app, type, b",
            args,
        )
        buckets = fetch(
            f"SELECT app, type, {start} AS b, bucket, CAST(SUM(count) AS BIGINT) "
            f"FROM rollup_buckets WHERE {cond} GROUP BY app, type, b, bucket",
            args,
        )
    series_installs = fetch(
        f"SELECT app, type, hour_ms - hour_ms {dialect.modulo} {grain} AS b, "
        f"COUNT(DISTINCT install_id) FROM installs WHERE {cond} GROUP BY app, type, b",
        args,
    )
    total = fetch(
        f"SELECT COUNT(*) FROM (SELECT DISTINCT app, install_id FROM installs WHERE {cond}) AS d",
        args,
    )
    counters = fetch(
        f"SELECT name, SUM(count) FROM counters WHERE hour_ms >= {p} AND hour_ms < {p} "
        "GROUP BY name",
        [query.from_hour_ms, query.to_ms],
    )
    return StatsData(
        rollups=[tuple(r) for r in rollups],
        buckets=[tuple(r) for r in buckets],
        series_installs=[tuple(r) for r in series_installs],
        total_installs=int(total[0][0]) if total else 0,
        counters={str(name): int(n) for name, n in counters},
    )
