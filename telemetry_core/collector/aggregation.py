"""Rollup math shared by every collector store: the duration histogram, bucketing
of time, and the shape of the stats document.

The duration histogram is a logarithmic-bucket sketch in the manner of DDSketch:
a positive value ``x`` falls in bucket ``ceil(log(x) / log(GAMMA))`` where
``GAMMA = (1 + ALPHA) / (1 - ALPHA)``, and a bucket is represented by the value
``2 * GAMMA**i / (GAMMA + 1)``, which lies within ``ALPHA`` (1 %) relative error of
every value of the bucket. Histograms merge by adding counts per bucket, so hour
rollups add up to days and ranges exactly, and a quantile estimated from the
merged counts is within 1 % of the exact quantile of the same rank.

Percentiles leave the collector rounded to :data:`PERCENTILE_DIGITS`
significant digits (never to a fixed number of decimals, which would turn
0.0004 ms into 0.0 and break the 1 % promise for sub-microsecond durations).
"""

from __future__ import annotations

import functools
import math
import operator
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from decimal import Decimal
from typing import Any, Final

from telemetry_core.collector.store import HOUR_MS, StatsData, StatsQuery

__all__ = [
    "ALPHA",
    "DAY_MS",
    "GAMMA",
    "PERCENTILES",
    "PERCENTILE_DIGITS",
    "ZERO_BUCKET",
    "add_outcomes",
    "bucket_index",
    "bucket_start",
    "bucket_value",
    "build_stats",
    "format_significant",
    "hour_increments",
    "hour_of",
    "percentile_buckets",
    "percentiles",
    "quantile",
    "quantile_rank",
    "round_significant",
]

#: Relative accuracy of the duration histogram.
ALPHA: Final = 0.01
#: Ratio between consecutive bucket boundaries.
GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA: Final = math.log(GAMMA)
#: The bucket of a zero duration (log buckets only hold positive values).
ZERO_BUCKET: Final = -(2**31)
#: One day in milliseconds.
DAY_MS: Final = 24 * HOUR_MS
#: Significant digits of an emitted percentile: the rounding adds at most
#: 5e-6 relative error to the histogram's ``ALPHA``.
PERCENTILE_DIGITS: Final = 6
#: The three percentiles of every stats row, as (field name, quantile).
PERCENTILES: Final = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))


def bucket_index(duration_ms: float) -> int:
    """The histogram bucket of a duration (``>= 0``) in milliseconds."""
    if duration_ms <= 0:
        return ZERO_BUCKET
    return math.ceil(math.log(duration_ms) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of bucket ``index`` (within ``ALPHA`` of its members)."""
    if index == ZERO_BUCKET:
        return 0.0
    return 2 * GAMMA**index / (GAMMA + 1)


def quantile_rank(q: float, n: int) -> int:
    """The 1-based nearest rank of quantile ``q`` among ``n`` values: ``ceil(q * n)``."""
    return min(n, max(1, math.ceil(q * n)))


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """Estimate quantile ``q`` from bucket counts (``None`` when empty).

    The answer is the representative value of the bucket holding the value of
    rank :func:`quantile_rank`, hence within ``ALPHA`` of the exact value.
    """
    n = sum(counts.values())
    if n == 0:
        return None
    rank = quantile_rank(q, n)
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            return bucket_value(index)
    raise AssertionError("unreachable: rank <= n")  # pragma: no cover


def hour_of(timestamp_ms: int) -> int:
    """The start of the UTC hour holding ``timestamp_ms``."""
    return timestamp_ms - timestamp_ms % HOUR_MS


def bucket_start(hour_ms: int, bucket: str) -> int:
    """The start of the series bucket (``hour`` or ``day``, UTC) holding ``hour_ms``."""
    if bucket == "day":
        return hour_ms - hour_ms % DAY_MS
    return hour_ms - hour_ms % HOUR_MS


def round_significant(value: float, digits: int = PERCENTILE_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (``0.000400321`` to
    ``0.000400321``, ``1234567.8`` to ``1234570.0`` with six)."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def format_significant(value: float, digits: int = 4) -> str:
    """``value`` as text with ``digits`` significant digits and no exponent
    (``0.0004003``, ``12.35``, ``1235``, ``12000``), for tables and pages."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return format(Decimal(f"{value:.{digits}g}"), "f")


def percentile_buckets(counts: Mapping[int, int]) -> tuple[int | None, ...]:
    """The bucket holding each of :data:`PERCENTILES` in a histogram (``None``
    when it is empty): the bucket :func:`quantile` takes the value of, for the
    three quantiles in one pass over the sorted buckets."""
    n = sum(counts.values())
    if n == 0:
        return (None,) * len(PERCENTILES)
    ranks = [quantile_rank(q, n) for _, q in PERCENTILES]
    found: list[int | None] = []
    seen = 0
    for index, count in sorted(counts.items()):
        seen += count
        while len(found) < len(ranks) and seen >= ranks[len(found)]:
            found.append(index)
        if len(found) == len(ranks):
            break
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _emitted_value(index: int) -> float:
    # Series share their buckets: a year of days asks for the same few again and again.
    return round_significant(bucket_value(index))


def _emitted(buckets: Sequence[int | None]) -> dict[str, float | None]:
    """The percentile fields of a document from the buckets holding them."""
    return {
        name: None if index is None else _emitted_value(index)
        for (name, _), index in zip(PERCENTILES, buckets, strict=True)
    }


def percentiles(counts: Mapping[int, int]) -> dict[str, float | None]:
    """``p50_ms``, ``p95_ms`` and ``p99_ms`` of a histogram (merged or not),
    rounded to :data:`PERCENTILE_DIGITS`; ``None`` where it is empty."""
    return _emitted(percentile_buckets(counts))


_Key = tuple[str, str, int]  # (app, type, bucket start)
#: Series order: by bucket, then app, then type.
_by_bucket_app_type: Final = operator.itemgetter(2, 0, 1)


def _series(
    data: StatsData, grain: str
) -> tuple[list[dict[str, Any]], dict[_Key, list[int]], dict[str, dict[int, int]]]:
    """The series rows, the ``[count, success, failure]`` per key they came
    from, and each type's histogram merged over the range."""
    step = DAY_MS if grain == "day" else HOUR_MS  # bucket_start, inlined
    counts: dict[_Key, list[int]] = {}
    for app, etype, hour, count, success, failure in data.rollups:
        key = (app, etype, hour - hour % step)
        row = counts.get(key)
        if row is None:
            counts[key] = [count, success, failure]
        else:
            row[0] += count
            row[1] += success
            row[2] += failure
    hists: dict[_Key, dict[int, int]] = {}
    by_type: dict[str, dict[int, int]] = {}
    for app, etype, hour, index, count in data.buckets:
        hist = hists.setdefault((app, etype, hour - hour % step), {})
        hist[index] = hist.get(index, 0) + count
        merged = by_type.setdefault(etype, {})
        merged[index] = merged.get(index, 0) + count
    for etype, index, count in data.type_buckets:
        merged = by_type.setdefault(etype, {})
        merged[index] = merged.get(index, 0) + count
    known = data.series_percentiles
    installs = {(a, t, b): n for a, t, b, n in data.series_installs}
    # Days share their percentile buckets: each distinct triple is shaped once.
    shaped: dict[tuple[int | None, ...], dict[str, float | None]] = {}
    series: list[dict[str, Any]] = []
    for key in sorted(counts, key=_by_bucket_app_type):
        found = known.get(key)
        fields: dict[str, float | None] | None
        if found is None:
            fields = percentiles(hists.get(key, {}))
        else:
            triple = tuple(found)
            fields = shaped.get(triple)
            if fields is None:
                fields = shaped[triple] = _emitted(triple)
        count, success, failure = counts[key]
        series.append(
            {
                "app": key[0],
                "type": key[1],
                "bucket_start": key[2],
                "count": count,
                "success": success,
                "failure": failure,
                **fields,
                "installs": installs.get(key, 0),
            }
        )
    return series, counts, by_type


def build_stats(query: StatsQuery, data: StatsData) -> dict[str, Any]:
    """Shape the rows of a store into the stats document of DESIGN §7.

    ``totals``: ``count``, ``by_type``, ``installs`` (distinct over the range),
    ``success``, ``failure``, ``duplicates``, ``rejected``, ``rejected_by_code``,
    ``throttled``. ``series``: one entry per (app, type, bucket) ordered by
    bucket, app and type, with ``count``, ``success``, ``failure``, ``p50_ms``,
    ``p95_ms``, ``p99_ms`` (``None`` when no event had a duration) and ``installs``.
    ``durations_by_type`` maps each type to its ``p50_ms``, ``p95_ms`` and
    ``p99_ms`` over the whole range (all apps), from the merged hourly
    histograms: the percentiles of the range, not the worst of its buckets.
    """
    series, counts, type_hists = _series(data, query.bucket)
    by_type: dict[str, int] = defaultdict(int)
    for (_, etype, _), (count, _, _) in counts.items():
        by_type[etype] += count
    rejected_by_code = {
        name.removeprefix("rejected:"): n
        for name, n in sorted(data.counters.items())
        if name.startswith("rejected:") and n
    }
    return {
        "from": query.from_hour_ms,
        "to": query.to_ms,
        "bucket": query.bucket,
        "totals": {
            "count": sum(by_type.values()),
            "by_type": dict(sorted(by_type.items())),
            "installs": data.total_installs,
            "success": sum(r[1] for r in counts.values()),
            "failure": sum(r[2] for r in counts.values()),
            "duplicates": data.counters.get("duplicate", 0),
            "rejected": sum(rejected_by_code.values()),
            "rejected_by_code": rejected_by_code,
            "throttled": data.counters.get("throttled", 0),
        },
        "series": series,
        "durations_by_type": {
            etype: percentiles(type_hists.get(etype, {})) for etype in sorted(by_type)
        },
    }


def hour_increments(
    events: Iterable[tuple[str, str, int, float | None, bool | None]],
) -> tuple[dict[tuple[str, str, int], list[int]], dict[tuple[str, str, int, int], int]]:
    """Fold new events ``(app, type, timestamp_ms, duration_ms, success)`` into
    rollup increments ``{(app, type, hour): [count, success, failure]}`` and bucket
    increments ``{(app, type, hour, bucket): count}``, ready for upserts."""
    rollups: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    buckets: dict[tuple[str, str, int, int], int] = defaultdict(int)
    # Events of a batch repeat their (app, type, hour, duration, success) a lot:
    # count the distinct ones first, so the Python work is per distinct tuple.
    distinct = Counter(
        (app, etype, ts - ts % HOUR_MS, duration, success)
        for app, etype, ts, duration, success in events
    )
    for (app, etype, hour, duration, success), n in distinct.items():
        row = rollups[(app, etype, hour)]
        row[0] += n
        if success is True:
            row[1] += n
        elif success is False:
            row[2] += n
        if duration is not None:
            buckets[(app, etype, hour, bucket_index(duration))] += n
    return dict(rollups), dict(buckets)


def add_outcomes(
    counters: MutableMapping[tuple[int, str], int],
    *,
    received_ms: int,
    rejected: Mapping[str, int] | None = None,
    throttled: int = 0,
    duplicates: int = 0,
) -> None:
    """Add outcome counts to ``counters`` (keyed by hour of reception and name).

    ``rejected`` maps error codes to event counts (named ``rejected:<code>``);
    ``throttled`` counts events refused for the rate limit, ``duplicates``
    events whose id was already stored. Zero counts add no key.
    """
    hour = hour_of(received_ms)
    named = [(f"rejected:{code}", n) for code, n in (rejected or {}).items()]
    named.append(("throttled", throttled))
    named.append(("duplicate", duplicates))
    for name, n in named:
        if n:
            counters[(hour, name)] = counters.get((hour, name), 0) + n
