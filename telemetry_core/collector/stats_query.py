"""Reading a stats request: the one place that turns query parameters into a
:class:`~telemetry_core.collector.store.StatsQuery` (``/v1/stats``, the
dashboard and ``telemetry-collector stats`` all use it)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.store import StatsQuery

__all__ = ["parse_stats_query"]


def _parse_time(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise IngestError(
            400, "bad_query", f"{name} must be milliseconds or ISO-8601: {value[:40]!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def parse_stats_query(params: Mapping[str, str]) -> StatsQuery:
    """Build a :class:`StatsQuery` from ``from``, ``to`` (ms or ISO-8601; naive
    means UTC), ``app``, ``type`` and ``bucket`` (``hour``/``day``); 400 on bad input."""
    from_ms = _parse_time("from", params["from"]) if params.get("from") else 0
    to_ms = _parse_time("to", params["to"]) if params.get("to") else 2**62
    bucket = params.get("bucket") or "hour"
    if bucket not in ("hour", "day"):
        raise IngestError(400, "bad_query", "bucket must be hour or day")
    if not 0 <= from_ms < to_ms <= 2**62:
        raise IngestError(400, "bad_query", "need 0 <= from < to")
    return StatsQuery(
        from_ms=from_ms,
        to_ms=to_ms,
        app=params.get("app") or None,
        event_type=params.get("type") or None,
        bucket="day" if bucket == "day" else "hour",
    )
