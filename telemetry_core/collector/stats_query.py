"""Reading a stats request: the one place that turns query parameters into a
:class:`~telemetry_core.collector.store.StatsQuery` (``/v1/stats``, the
dashboard and ``telemetry-collector stats`` all use it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from telemetry_core import schema
from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.store import StatsQuery

__all__ = ["parse_stats_query"]

#: What no stored app name holds: control characters (NUL included) and lone surrogates.
_NOT_IN_APP: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _bad(message: str) -> IngestError:
    return IngestError(400, "bad_query", message)


def _app_filter(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) > schema.MAX_SHORT_STRING_LENGTH:
        raise _bad(f"app must be at most {schema.MAX_SHORT_STRING_LENGTH} characters")
    if _NOT_IN_APP.search(value):
        raise _bad("app must not contain control characters")
    return value


def _type_filter(value: str | None) -> str | None:
    if not value:
        return None
    if not schema.EVENT_TYPE_PATTERN.match(value):
        raise _bad(
            "type must be an event type: a lowercase letter, then up to 63 of a-z 0-9 _ . : -"
        )
    return value


def _parse_time(name: str, value: str) -> int:
    # ASCII digits only: int() would also read "١٢" or "1_000", a number nobody wrote.
    digits = value[1:] if value[:1] == "-" else value
    if digits.isascii() and digits.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{name} must be milliseconds or ISO-8601: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _range(from_ms: int, to_ms: int, params: Mapping[str, str]) -> None:
    if from_ms < 0 or to_ms > _LATEST_MS:
        raise _bad(f"from and to must lie between 0 and {_LATEST_MS} ms since the epoch")
    if from_ms > to_ms:
        shown = f"from {params.get('from', '')[:40]!r} is after to {params.get('to', '')[:40]!r}"
        raise _bad(f"{shown}: the range is empty (swap them?)")
    if from_ms == to_ms:
        raise _bad("from and to are the same instant: the range is empty (to is exclusive)")


#: The latest instant a query may name (far beyond any event's timestamp).
_LATEST_MS: Final = 2**62


def parse_stats_query(params: Mapping[str, str]) -> StatsQuery:
    """Build a :class:`StatsQuery` from ``from``, ``to`` (ms or ISO-8601; naive
    means UTC), ``app``, ``type`` and ``bucket`` (``hour``/``day``).

    The one place stats filters are checked (``/v1/stats``, the dashboard and
    ``telemetry-collector stats``): bad input raises an :class:`IngestError`
    400 ``bad_query`` whose message says what is wrong in words.
    """
    from_ms = _parse_time("from", params["from"]) if params.get("from") else 0
    to_ms = _parse_time("to", params["to"]) if params.get("to") else _LATEST_MS
    bucket = params.get("bucket") or "hour"
    if bucket not in ("hour", "day"):
        raise _bad("bucket must be hour or day")
    _range(from_ms, to_ms, params)
    return StatsQuery(
        from_ms=from_ms,
        to_ms=to_ms,
        app=_app_filter(params.get("app")),
        event_type=_type_filter(params.get("type")),
        bucket="day" if bucket == "day" else "hour",
    )
