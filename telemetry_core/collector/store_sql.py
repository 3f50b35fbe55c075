"""The SQL planning both collector stores share.

The SQLite and PostgreSQL stores keep the same tables with the same meaning
(:mod:`telemetry_core.collector.store`). What they decide the same way lives
here, written once:

- :class:`Dedupe`: which events of a transaction are new (the first
  occurrence of an id not already stored) and how many are duplicates;
- :func:`plan_increments`: the rollup, histogram-bucket and install rows new
  events add, summed and in key order (the order in which concurrent writers
  take row locks);
- :func:`day_rollup_rows`: the ``installs`` column of the day rollups, from
  the day install rows a transaction inserted;
- :func:`update_day_percentiles`: the buckets of each day's p50, p95 and
  p99, found by the database from the day's histogram rows;
- :data:`BACKFILL_DAY_TABLES`: the day tables filled from the hourly ones
  (the migration of a database written before they existed);
- :func:`read_stats_data`: the statements a stats request runs: whole UTC
  days from the day tables, the hours at the edges of the range from the
  hourly ones (:class:`Span`).

What differs is the :class:`Dialect` (the parameter placeholder, and the
modulo operator, which psycopg wants doubled) and each store's transactions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

import attrs

from telemetry_core.collector.aggregation import (
    DAY_MS,
    PERCENTILES,
    hour_increments,
    hour_of,
)
from telemetry_core.collector.store import HOUR_MS, StatsData, StatsQuery
from telemetry_core.schema import Event

__all__ = [
    "BACKFILL_DAY_TABLES",
    "POSTGRES",
    "SQLITE",
    "Dedupe",
    "Dialect",
    "Fetch",
    "Increments",
    "Span",
    "day_rollup_rows",
    "plan_increments",
    "read_stats_data",
    "update_day_percentiles",
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

    Hourly: ``rollups``: ``(app, type, hour_ms, count, success, failure)``;
    ``buckets``: ``(app, type, hour_ms, bucket, count)``;
    ``installs``: ``(app, type, hour_ms, install_id)``. The same per UTC day
    (``day_rollups``, ``day_buckets``, ``day_installs``, with ``day_ms`` for
    ``hour_ms``), and ``day_app_installs``: ``(app, day_ms, install_id)``.
    The ``installs`` column of ``day_rollups`` is not here: it grows by the
    ``day_installs`` rows the database did not hold yet
    (:func:`day_rollup_rows`).
    """

    rollups: list[tuple[str, str, int, int, int, int]]
    buckets: list[tuple[str, str, int, int, int]]
    installs: list[tuple[str, str, int, str]]
    day_rollups: list[tuple[str, str, int, int, int, int]]
    day_buckets: list[tuple[str, str, int, int, int]]
    day_installs: list[tuple[str, str, int, str]]
    day_app_installs: list[tuple[str, int, str]]

    @property
    def grown_days(self) -> list[tuple[str, str, int]]:
        """The ``(app, type, day_ms)`` keys, sorted, whose day histogram grew:
        the day rollups whose percentiles are recomputed."""
        return sorted({(app, type_, day) for app, type_, day, _, _ in self.day_buckets})


def _by_day(rows: Iterable[tuple[Any, ...]], values: int) -> dict[tuple[Any, ...], list[int]]:
    """Sum hourly rows (key columns with the hour third, then ``values`` counts) per day."""
    summed: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * values)
    for row in rows:
        keys = row[: len(row) - values]
        day_key = (*keys[:2], keys[2] - keys[2] % DAY_MS, *keys[3:])
        total = summed[day_key]
        for i, n in enumerate(row[len(row) - values :]):
            total[i] += n
    return summed


def plan_increments(events: Iterable[Event]) -> Increments:
    """Sum the rollup, bucket and install increments of ``events`` (new ones only),
    per hour and per day."""
    new = list(events)
    rollups, buckets = hour_increments(
        (e.app, e.type, e.timestamp, e.duration_ms, e.success) for e in new
    )
    rollup_rows = [(*key, *rollups[key]) for key in sorted(rollups)]
    bucket_rows = [(*key, buckets[key]) for key in sorted(buckets)]
    days = _by_day(rollup_rows, 3)
    day_buckets = _by_day(bucket_rows, 1)
    day_installs = {(e.app, e.type, e.timestamp - e.timestamp % DAY_MS, e.install_id) for e in new}
    return Increments(
        rollups=rollup_rows,  # type: ignore[arg-type]
        buckets=bucket_rows,
        installs=sorted({(e.app, e.type, hour_of(e.timestamp), e.install_id) for e in new}),
        day_rollups=[(*key, *days[key]) for key in sorted(days)],
        day_buckets=[(*key, *day_buckets[key]) for key in sorted(day_buckets)],
        day_installs=sorted(day_installs),
        day_app_installs=sorted({(app, day, install) for app, _, day, install in day_installs}),
    )


def day_rollup_rows(
    day_rollups: Sequence[tuple[str, str, int, int, int, int]],
    added_installs: Iterable[Sequence[Any]],
) -> list[tuple[str, str, int, int, int, int, int]]:
    """The ``day_rollups`` upsert rows: ``day_rollups`` increments with the
    ``installs`` increment of each key, the number of ``added_installs``
    (``(app, type, day_ms)`` of the ``day_installs`` rows the transaction
    inserted, not those the database held already) under it."""
    added = Counter((str(a), str(t), int(d)) for a, t, d in added_installs)
    return [(*row, added.get(row[:3], 0)) for row in day_rollups]


def update_day_percentiles(histograms: str) -> str:
    """The statement that sets the ``p50_bucket``, ``p95_bucket`` and
    ``p99_bucket`` of the day rollups whose histograms ``histograms`` holds
    (a table or a subquery with its alias, of ``app, type, day_ms, bucket,
    count``: every row of each day given), by the rule of
    :func:`~telemetry_core.collector.aggregation.percentile_buckets`: the first
    bucket whose running count reaches ``q * n`` computed as a double, which is
    where ``ceil(q * n)`` is reached. Both dialects; no parameters of its own."""
    columns = ", ".join(
        f"MIN(CASE WHEN upto >= CAST({q!r} AS DOUBLE PRECISION) * n THEN bucket END) "
        f"AS {name.removesuffix('_ms')}"
        for name, q in PERCENTILES
    )
    found = (
        f"SELECT app, type, day_ms, {columns} FROM (SELECT app, type, day_ms, bucket, "
        "CAST(SUM(count) OVER (PARTITION BY app, type, day_ms ORDER BY bucket) "
        "AS DOUBLE PRECISION) AS upto, "
        "CAST(SUM(count) OVER (PARTITION BY app, type, day_ms) AS DOUBLE PRECISION) AS n "
        f"FROM {histograms}) AS w GROUP BY app, type, day_ms"
    )
    return (
        "UPDATE day_rollups SET p50_bucket = p.p50, p95_bucket = p.p95, p99_bucket = p.p99 "
        f"FROM ({found}) AS p WHERE day_rollups.app = p.app "
        "AND day_rollups.type = p.type AND day_rollups.day_ms = p.day_ms"
    )


#: Fills the day tables from the hourly ones, in this order: what a database
#: written before the day tables existed runs once, in the transaction that
#: creates them (both dialects; no parameters).
BACKFILL_DAY_TABLES: Final = (
    "INSERT INTO day_installs (app, type, day_ms, install_id) "
    f"SELECT DISTINCT app, type, hour_ms - hour_ms % {DAY_MS}, install_id FROM installs",
    "INSERT INTO day_app_installs (app, day_ms, install_id) "
    "SELECT DISTINCT app, day_ms, install_id FROM day_installs",
    "INSERT INTO day_rollups (app, type, day_ms, count, success, failure, installs) "
    "SELECT r.app, r.type, r.d, r.c, r.s, r.f, COALESCE(i.n, 0) FROM ("
    f"SELECT app, type, hour_ms - hour_ms % {DAY_MS} AS d, SUM(count) AS c, "
    "SUM(success) AS s, SUM(failure) AS f FROM rollups GROUP BY app, type, d) AS r "
    "LEFT JOIN (SELECT app, type, day_ms, COUNT(*) AS n FROM day_installs "
    "GROUP BY app, type, day_ms) AS i ON i.app = r.app AND i.type = r.type AND i.day_ms = r.d",
    "INSERT INTO day_rollup_buckets (app, type, day_ms, bucket, count) "
    f"SELECT app, type, hour_ms - hour_ms % {DAY_MS} AS d, bucket, SUM(count) "
    "FROM rollup_buckets GROUP BY app, type, d, bucket",
    update_day_percentiles("day_rollup_buckets"),
)


Range = tuple[int, int]


@attrs.frozen
class Span:
    """The hours a query covers, ``[from_hour_ms, end_ms)``, split into the
    whole UTC days read from the day tables (``days``, empty or one range) and
    the hours at its edges read from the hourly ones (``hours``, zero to two
    ranges)."""

    days: tuple[Range, ...]
    hours: tuple[Range, ...]

    @classmethod
    def of(cls, query: StatsQuery, *, day_tables: bool = True) -> Span:
        """Split ``query``'s range; all hours when ``day_tables`` is False."""
        start = query.from_hour_ms
        # The hourly statements take every hour starting before to_ms.
        end = query.to_ms + (-query.to_ms) % HOUR_MS
        first_day = start + (-start) % DAY_MS
        last_day = end - end % DAY_MS
        if not day_tables or first_day >= last_day:
            return cls(days=(), hours=((start, end),))
        edges = ((start, first_day), (last_day, end))
        return cls(days=((first_day, last_day),), hours=tuple(r for r in edges if r[0] < r[1]))


class _Where:
    """``WHERE`` clauses over time ranges with the query's filters, and their arguments."""

    def __init__(self, query: StatsQuery, dialect: Dialect) -> None:
        self.query = query
        self.p = dialect.placeholder

    def __call__(
        self, column: str, ranges: Sequence[Range], *, by_type: bool = True
    ) -> tuple[str, list[Any]]:
        p = self.p
        spans = " OR ".join(f"({column} >= {p} AND {column} < {p})" for _ in ranges)
        where = [f"({spans})"]
        args: list[Any] = [bound for r in ranges for bound in r]
        if self.query.app is not None:
            where.append(f"app = {p}")
            args.append(self.query.app)
        if by_type and self.query.event_type is not None:
            where.append(f"type = {p}")
            args.append(self.query.event_type)
        return " AND ".join(where), args


def _rows(fetch: Fetch, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in fetch(sql, args)]


@attrs.define
class _Series:
    """The rows of a stats request's series, as :class:`StatsData` takes them."""

    rollups: list[tuple[Any, ...]] = attrs.Factory(list)
    buckets: list[tuple[Any, ...]] = attrs.Factory(list)
    installs: list[tuple[Any, ...]] = attrs.Factory(list)
    percentiles: dict[tuple[str, str, int], tuple[Any, ...]] = attrs.Factory(dict)
    type_buckets: list[tuple[Any, ...]] = attrs.Factory(list)


def _series_by_hour(fetch: Fetch, where: _Where, query: StatsQuery) -> _Series:
    """Rollups, buckets and distinct installs per hour: the hourly tables over the range."""
    cond, args = where("hour_ms", [(query.from_hour_ms, query.to_ms)])
    return _Series(
        rollups=_rows(
            fetch,
            f"SELECT app, type, hour_ms, count, success, failure FROM rollups WHERE {cond}",
            args,
        ),
        buckets=_rows(
            fetch,
            f"SELECT app, type, hour_ms, bucket, count FROM rollup_buckets WHERE {cond}",
            args,
        ),
        # One row per install and hour: counting rows counts distinct installs.
        installs=_rows(
            fetch,
            f"SELECT app, type, hour_ms, COUNT(*) FROM installs WHERE {cond} "
            "GROUP BY app, type, hour_ms",
            args,
        ),
    )


def _whole_days(fetch: Fetch, where: _Where, span: Span, series: _Series) -> None:
    """Add the whole days of ``span`` from the day tables to ``series``."""
    cond, args = where("day_ms", span.days)
    for row in fetch(
        "SELECT app, type, day_ms, count, success, failure, installs, "
        f"p50_bucket, p95_bucket, p99_bucket FROM day_rollups WHERE {cond}",
        args,
    ):
        key = (str(row[0]), str(row[1]), int(row[2]))
        series.rollups.append(tuple(row[:6]))
        series.installs.append((*key, row[6]))
        series.percentiles[key] = tuple(row[7:])
    # Their percentiles are found; the histograms serve only each type's.
    series.type_buckets += _rows(
        fetch,
        "SELECT type, bucket, CAST(SUM(count) AS BIGINT) "
        f"FROM day_rollup_buckets WHERE {cond} GROUP BY type, bucket",
        args,
    )


def _edge_days(fetch: Fetch, where: _Where, span: Span, dialect: Dialect, series: _Series) -> None:
    """Add the hours at the edges of ``span`` from the hourly tables, summed per day."""
    cond, args = where("hour_ms", span.hours)
    day = f"hour_ms - hour_ms {dialect.modulo} {DAY_MS}"
    series.rollups += _rows(
        fetch,
        f"SELECT app, type, {day} AS d, CAST(SUM(count) AS BIGINT), "
        "CAST(SUM(success) AS BIGINT), CAST(SUM(failure) AS BIGINT) "
        f"FROM rollups WHERE {cond} GROUP BY app, type, d",
        args,
    )
    series.buckets += _rows(
        fetch,
        f"SELECT app, type, {day} AS d, bucket, CAST(SUM(count) AS BIGINT) "
        f"FROM rollup_buckets WHERE {cond} GROUP BY app, type, d, bucket",
        args,
    )
    series.installs += _rows(
        fetch,
        f"SELECT app, type, {day} AS d, COUNT(DISTINCT install_id) "
        f"FROM installs WHERE {cond} GROUP BY app, type, d",
        args,
    )


def _total_installs(fetch: Fetch, where: _Where, span: Span) -> int:
    """Distinct ``(app, install_id)`` over the range: the day sets of the whole
    days (per app alone unless a type is asked for) united with the hourly sets
    of the edges."""
    parts: list[str] = []
    args: list[Any] = []
    if span.days:
        typed = where.query.event_type is not None
        cond, day_args = where("day_ms", span.days, by_type=typed)
        table = "day_installs" if typed else "day_app_installs"
        parts.append(f"SELECT app, install_id FROM {table} WHERE {cond}")
        args += day_args
    if span.hours:
        cond, hour_args = where("hour_ms", span.hours)
        parts.append(f"SELECT app, install_id FROM installs WHERE {cond}")
        args += hour_args
    union = " UNION ".join(parts)
    if len(parts) == 1:
        union = union.replace("SELECT app", "SELECT DISTINCT app", 1)
    total = fetch(f"SELECT COUNT(*) FROM ({union}) AS d", args)
    return int(total[0][0]) if total else 0


def read_stats_data(
    fetch: Fetch, query: StatsQuery, dialect: Dialect, *, day_tables: bool = True
) -> StatsData:
    """Run the stats statements of ``query`` through ``fetch`` (one read
    transaction of the caller's) and collect their rows.

    Whole UTC days of the range are read from the day tables and only the
    hours at its edges from the hourly ones (:class:`Span`); a series by hour
    reads the hourly rollups and buckets, whose per-hour rows it shows.
    ``day_tables=False`` reads the hourly tables alone (a database written
    before the day tables, opened read-only).
    """
    span = Span.of(query, day_tables=day_tables)
    where = _Where(query, dialect)
    if query.bucket == "hour":
        series = _series_by_hour(fetch, where, query)
    else:
        series = _Series()
        if span.days:
            _whole_days(fetch, where, span, series)
        if span.hours:
            _edge_days(fetch, where, span, dialect, series)
    p = dialect.placeholder
    counters = fetch(
        f"SELECT name, SUM(count) FROM counters WHERE hour_ms >= {p} AND hour_ms < {p} "
        "GROUP BY name",
        [query.from_hour_ms, query.to_ms],
    )
    return StatsData(
        rollups=series.rollups,
        buckets=series.buckets,
        series_installs=series.installs,
        total_installs=_total_installs(fetch, where, span),
        counters={str(name): int(n) for name, n in counters},
        series_percentiles=series.percentiles,
        type_buckets=series.type_buckets,
    )
