"""The dashboard's view model: what the page shows, as plain data.

:func:`build_view` reads a ``GET /v1/stats`` body (DESIGN §7), and optionally
the body of the previous period of equal length, and returns a
:class:`DashboardView`: the totals, one :class:`TypeRow` per event type (count,
outcomes, p50/p95/p99 over the whole range from the merged histograms, the
previous period's count) and the chart series. It does no formatting and knows
no HTML; :mod:`telemetry_core.collector.dashboard` draws it.

The stats body comes from our own collector, but the builder still treats it
as untrusted JSON: a missing or malformed field reads as zero or ``None``.

:func:`resolve_range` and :func:`previous_query` decide the time range: the
presets (``range=24h``, ``7d``, ``30d``) end at the end of the current hour, and
the previous period is the same number of whole hours just before the range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from telemetry_core.collector.aggregation import DAY_MS
from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.store import HOUR_MS, StatsQuery

__all__ = [
    "PRESETS",
    "ChartLine",
    "DashboardView",
    "Period",
    "Totals",
    "TypeRow",
    "build_view",
    "previous_query",
    "resolve_range",
]

#: The range presets: query value -> (label, length in ms).
PRESETS: Final[Mapping[str, tuple[str, int]]] = {
    "24h": ("Last 24 h", DAY_MS),
    "7d": ("Last 7 days", 7 * DAY_MS),
    "30d": ("Last 30 days", 30 * DAY_MS),
}

#: Types beyond this many are folded into one "other" line so charts stay legible.
MAX_LINES: Final = 10
#: Name of the line that gathers the less busy types.
OTHER: Final = "other"

# Colour-blind-friendly palette (Okabe-Ito, then a few extras), ordered so the
# first five differ most (the two blues are apart); assigned to types in sorted
# order so a type keeps its colour across charts on one page.
_PALETTE: Final = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#d55e00",
    "#56b4e9",
    "#b8a000",
    "#000000",
    "#7f7f7f",
    "#8c564b",
)
_OTHER_COLOUR: Final = "#bbbbbb"


@attrs.frozen(kw_only=True)
class ChartLine:
    """One line of a chart: ``points`` are ``(bucket start ms, value)`` in time order."""

    name: str
    colour: str
    points: tuple[tuple[int, float], ...]


@attrs.frozen(kw_only=True)
class TypeRow:
    """One event type over the range.

    ``p50_ms``/``p95_ms``/``p99_ms`` come from the histograms of every hour and
    app merged (``None`` when no event had a duration). ``previous_count`` is the
    type's count in the previous period, ``None`` when there is no comparison.
    """

    name: str
    colour: str
    count: int
    success: int
    failure: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    previous_count: int | None


@attrs.frozen(kw_only=True)
class Totals:
    """The range's totals; ``throttled`` is ``None`` when the body lacks it."""

    count: int
    installs: int
    success: int
    failure: int
    duplicates: int
    rejected: int
    throttled: int | None


@attrs.frozen(kw_only=True)
class Period:
    """The previous period compared with: its bounds (ms) and total count."""

    from_ms: int
    to_ms: int
    count: int


@attrs.frozen(kw_only=True)
class DashboardView:
    """Everything the dashboard page shows, before formatting."""

    totals: Totals
    types: tuple[TypeRow, ...]
    previous: Period | None
    events: tuple[ChartLine, ...]
    success_rate: tuple[ChartLine, ...]
    p95: tuple[ChartLine, ...]
    installs: tuple[ChartLine, ...]
    #: First and last bucket start over all rows, shared by every chart.
    x_range: tuple[int, int] | None
    rejected_by_code: tuple[tuple[str, int], ...]


def _int(value: object) -> int:
    """Read a count from untrusted JSON-ish data; anything odd counts as 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _rows(stats: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    series = stats.get("series")
    if not isinstance(series, list):
        return []
    return [row for row in series if isinstance(row, Mapping)]


def _type_counts(stats: Mapping[str, Any]) -> dict[str, int]:
    by_type = _mapping(_mapping(stats.get("totals")).get("by_type"))
    return {str(k): _int(v) for k, v in by_type.items()}


def _outcomes(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """``{type: [count, success, failure]}`` summed over apps and buckets."""
    acc: dict[str, list[int]] = {}
    for row in rows:
        slot = acc.setdefault(str(row.get("type", "")), [0, 0, 0])
        slot[0] += _int(row.get("count"))
        slot[1] += _int(row.get("success"))
        slot[2] += _int(row.get("failure"))
    return acc


def _totals(totals: Mapping[str, Any], outcomes: Mapping[str, list[int]]) -> Totals:
    success = sum(o[1] for o in outcomes.values())
    failure = sum(o[2] for o in outcomes.values())
    if "success" in totals and "failure" in totals:
        success, failure = _int(totals["success"]), _int(totals["failure"])
    return Totals(
        count=_int(totals.get("count")),
        installs=_int(totals.get("installs")),
        success=success,
        failure=failure,
        duplicates=_int(totals.get("duplicates")),
        rejected=_int(totals.get("rejected")),
        throttled=_int(totals["throttled"]) if "throttled" in totals else None,
    )


def _group(
    rows: Iterable[Mapping[str, Any]], names: Mapping[str, str], field: str, *, merge: str
) -> dict[str, dict[int, float]]:
    """``field`` per line name and bucket; rows of one bucket merge by ``sum`` or ``max``.

    ``names`` maps a type to its line; a type not in it is left out.
    """
    acc: dict[str, dict[int, float]] = {}
    for row in rows:
        name = names.get(str(row.get("type", "")))
        value = _float(row.get(field))
        if name is None or value is None:
            continue
        bucket = _int(row.get("bucket_start"))
        slot = acc.setdefault(name, {})
        if merge == "sum":
            slot[bucket] = slot.get(bucket, 0.0) + value
        else:
            slot[bucket] = max(slot.get(bucket, value), value)
    return acc


def _lines(
    grouped: Mapping[str, Mapping[int, float]], colours: Mapping[str, str]
) -> tuple[ChartLine, ...]:
    order = sorted(grouped, key=lambda name: (name == OTHER, name))
    return tuple(
        ChartLine(
            name=name,
            colour=colours.get(name, _OTHER_COLOUR),
            points=tuple(sorted(grouped[name].items())),
        )
        for name in order
    )


def _success_line(rows: Iterable[Mapping[str, Any]]) -> tuple[ChartLine, ...]:
    # Successes and failures add across apps and types; the rate is taken after.
    judged: dict[int, list[int]] = {}
    for row in rows:
        slot = judged.setdefault(_int(row.get("bucket_start")), [0, 0])
        slot[0] += _int(row.get("success"))
        slot[1] += _int(row.get("failure"))
    points = tuple((x, 100.0 * s / (s + f)) for x, (s, f) in sorted(judged.items()) if s + f)
    return (ChartLine(name="success rate", colour="#009e73", points=points),) if points else ()


def _type_rows(
    ranked: Sequence[str],
    *,
    counts: Mapping[str, int],
    outcomes: Mapping[str, list[int]],
    durations: Mapping[str, Any],
    colours: Mapping[str, str],
    previous: Mapping[str, int] | None,
) -> tuple[TypeRow, ...]:
    rows = []
    for kind in ranked:
        merged = _mapping(durations.get(kind))
        count, success, failure = outcomes.get(kind, [0, 0, 0])
        rows.append(
            TypeRow(
                name=kind,
                colour=colours.get(kind, _OTHER_COLOUR),
                count=counts.get(kind, count),
                success=success,
                failure=failure,
                p50_ms=_float(merged.get("p50_ms")),
                p95_ms=_float(merged.get("p95_ms")),
                p99_ms=_float(merged.get("p99_ms")),
                previous_count=None if previous is None else previous.get(kind, 0),
            )
        )
    return tuple(rows)


def _previous_period(previous: Mapping[str, Any] | None) -> Period | None:
    if previous is None:
        return None
    return Period(
        from_ms=_int(previous.get("from")),
        to_ms=_int(previous.get("to")),
        count=_int(_mapping(previous.get("totals")).get("count")),
    )


def build_view(
    stats: Mapping[str, Any], previous: Mapping[str, Any] | None = None
) -> DashboardView:
    """The :class:`DashboardView` of a stats body (and of the previous period's).

    Types are ranked by count (then name). Every type has a table row; the
    charts draw the :data:`MAX_LINES` - 1 busiest and fold the rest into
    ``other`` (summed for events, the largest for installs, left out of the
    p95 chart, where a maximum over unrelated types would mislead).
    """
    totals = _mapping(stats.get("totals"))
    rows = _rows(stats)
    counts = _type_counts(stats)
    outcomes = _outcomes(rows)
    every = set(counts) | set(outcomes)
    ranked = sorted(every, key=lambda k: (-counts.get(k, outcomes.get(k, [0])[0]), k))
    kept = ranked[: MAX_LINES - 1] if len(ranked) > MAX_LINES else ranked
    colours = {kind: _PALETTE[i % len(_PALETTE)] for i, kind in enumerate(sorted(kept))}
    colours[OTHER] = _OTHER_COLOUR
    folded = {kind: kind if kind in colours else OTHER for kind in ranked}
    own = {kind: kind for kind in kept}
    buckets = [_int(row.get("bucket_start")) for row in rows]
    return DashboardView(
        totals=_totals(totals, outcomes),
        types=_type_rows(
            ranked,
            counts=counts,
            outcomes=outcomes,
            durations=_mapping(stats.get("durations_by_type")),
            colours=colours,
            previous=None if previous is None else _type_counts(previous),
        ),
        previous=_previous_period(previous),
        events=_lines(_group(rows, folded, "count", merge="sum"), colours),
        success_rate=_success_line(rows),
        # Percentiles do not add: across apps a bucket shows its slowest app.
        p95=_lines(_group(rows, own, "p95_ms", merge="max"), colours),
        # Installs overlap between apps and types, so they are not summed.
        installs=_lines(_group(rows, folded, "installs", merge="max"), colours),
        x_range=(min(buckets), max(buckets)) if buckets else None,
        rejected_by_code=tuple(
            (str(code), _int(n))
            for code, n in sorted(_mapping(totals.get("rejected_by_code")).items())
        ),
    )


def resolve_range(params: Mapping[str, str], now_ms: int) -> dict[str, str]:
    """The query parameters with a ``range`` preset turned into ``from``/``to``.

    A preset ends at the end of the current UTC hour (so it covers whole hours,
    the current one included) and replaces any ``from``/``to``; without
    ``range`` the parameters are returned as they are (``from``/``to`` in ms or
    ISO 8601, as ``GET /v1/stats`` takes them). An unknown preset is a 400.
    """
    resolved = dict(params)
    preset = resolved.get("range")
    if not preset:
        resolved.pop("range", None)
        return resolved
    if preset not in PRESETS:
        names = ", ".join(PRESETS)
        raise IngestError(400, "bad_query", f"range must be one of {names}")
    end = now_ms - now_ms % HOUR_MS + HOUR_MS
    resolved["from"] = str(end - PRESETS[preset][1])
    resolved["to"] = str(end)
    return resolved


def previous_query(query: StatsQuery, now_ms: int) -> StatsQuery | None:
    """The same query over the period of equal length just before ``query``'s.

    The range counts whole hours from ``from`` (rounded down, as the stats
    are) to ``to`` or the end of the current hour, whichever is first. There
    is no previous period for an open range (no ``from``) or one that would
    start before the epoch.
    """
    start = query.from_hour_ms
    if start <= 0:
        return None
    end = min(query.to_ms, now_ms - now_ms % HOUR_MS + HOUR_MS)
    end = end + (-end % HOUR_MS)  # an hour is in range when it starts before ``to``
    span = end - start
    if span <= 0 or start - span < 0:
        return None
    return attrs.evolve(query, from_ms=start - span, to_ms=start)
