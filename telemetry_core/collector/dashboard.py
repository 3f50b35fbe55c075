"""The collector's dashboard: one self-contained HTML page drawn on the server.

:func:`render_dashboard` turns the ``GET /v1/stats`` body (DESIGN §7) into a
complete page with inline CSS and inline SVG charts: events over time per type,
success rate over time, p95 duration per type, distinct installs per type, and
tiles for the totals. Nothing is fetched from the network and no script runs, so
the page works offline and behind a strict ``Content-Security-Policy``.

Every string that reaches the page is escaped: event types, app names and filter
values come from clients and from the query string. Numbers shown as text carry
stable ``data-testid`` attributes (and the hostile-safe ``data-type`` for per-type
rows) so tests and scrapers can read them without parsing charts.

:func:`render_login` is the small form page that posts the admin token to
``/login``; the application owns the route and the cookie.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from telemetry_core.collector.aggregation import DAY_MS

__all__ = [
    "LOGIN_TOKEN_FIELD",
    "render_dashboard",
    "render_login",
]

#: Name of the form field that carries the admin token in ``POST /login``.
LOGIN_TOKEN_FIELD: Final = "token"

#: Filter parameters the form submits, in display order (as ``GET /v1/stats``).
_FILTER_FIELDS: Final = ("from", "to", "app", "type")

# Colour-blind-friendly palette (Okabe-Ito, then a few extras); assigned to
# types in sorted order so a type keeps its colour across charts on one page.
_PALETTE: Final = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#f0e442",
    "#000000",
    "#7f7f7f",
    "#8c564b",
)

#: Shown where a value cannot be computed (no durations, nothing judged).
_NO_VALUE: Final = "\N{EN DASH}"

_CHART_WIDTH: Final = 640
_CHART_HEIGHT: Final = 220
_MARGIN_LEFT: Final = 56
_MARGIN_RIGHT: Final = 12
_MARGIN_TOP: Final = 12
_MARGIN_BOTTOM: Final = 28
#: Types beyond this many are folded into one "other" line so charts stay legible.
_MAX_LINES: Final = 10

_CSS: Final = """
:root { color-scheme: light; --fg: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 16px 24px; background: #fff; border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: var(--muted); }
main { padding: 16px 24px 40px; max-width: 1400px; }
form.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: end; margin-bottom: 16px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters input, form.filters select { font: inherit; padding: 4px 6px; min-width: 120px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.tile { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px; }
.tile .label { font-size: 12px; color: var(--muted); }
.tile .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr));
          gap: 16px; margin-top: 16px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px;
         padding: 12px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg { width: 100%; height: auto; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 12px; margin-top: 6px; }
.legend span::before { content: ""; display: inline-block; width: 10px; height: 10px;
                       margin-right: 4px; background: var(--c); border-radius: 2px; }
.empty { color: var(--muted); padding: 24px 0; text-align: center; }
table { border-collapse: collapse; background: #fff; margin-top: 16px; min-width: 50%; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
h2 { font-size: 16px; margin: 24px 0 0; }
.error { color: #b00020; }
.login { max-width: 360px; margin: 80px auto; background: #fff; padding: 24px;
         border: 1px solid var(--line); border-radius: 6px; }
.login input { width: 100%; font: inherit; padding: 6px; margin: 8px 0 12px; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


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


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return _NO_VALUE
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    return f"{value:.1f} ms"


def _fmt_rate(success: int, failure: int) -> str:
    judged = success + failure
    if judged == 0:
        return _NO_VALUE
    return f"{100.0 * success / judged:.1f}%"


def _fmt_time(ms: int, *, with_date: bool = True) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M" if with_date else "%H:%M")


def _nice_max(value: float) -> float:
    """Round ``value`` up to 1, 2 or 5 times a power of ten, for axis ticks."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    base = 10.0**exponent
    for step in (1.0, 2.0, 5.0, 10.0):
        if value <= step * base:
            return step * base
    return 10.0 * base  # pragma: no cover - the loop always returns


def _fmt_tick(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _line_chart(
    test_id: str,
    lines: Mapping[str, Sequence[tuple[int, float]]],
    colours: Mapping[str, str],
    *,
    y_label: str,
    y_max: float | None = None,
    y_format: str = "{:g}",
) -> str:
    """Draw one SVG line chart; ``lines`` maps a name to (x ms, y) points."""
    points = [p for series in lines.values() for p in series]
    if not points:
        return f'<div class="empty" data-testid="{_esc(test_id)}-empty">No data in range</div>'
    x_lo = min(x for x, _ in points)
    x_hi = max(x for x, _ in points)
    # Four equal steps of 1, 2 or 5 times a power of ten: round tick labels.
    top = y_max if y_max is not None else 4 * _nice_max(max(y for _, y in points) / 4)
    plot_w = _CHART_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = _CHART_HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM

    def sx(x: int) -> float:
        if x_hi == x_lo:
            return _MARGIN_LEFT + plot_w / 2
        return _MARGIN_LEFT + plot_w * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return _MARGIN_TOP + plot_h * (1 - min(y, top) / top)

    parts = [
        f'<svg viewBox="0 0 {_CHART_WIDTH} {_CHART_HEIGHT}" role="img" '
        f'aria-label="{_esc(y_label)}" data-testid="{_esc(test_id)}">'
    ]
    for i in range(5):
        value = top * i / 4
        y = sy(value)
        parts.append(
            f'<line x1="{_MARGIN_LEFT}" x2="{_CHART_WIDTH - _MARGIN_RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e8eb"/>'
            f'<text x="{_MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_esc(_fmt_tick(value) if y_format == '{:g}' else y_format.format(value))}</text>"
        )
    span_days = (x_hi - x_lo) / DAY_MS
    ticks = sorted({x_lo, x_hi, *(x_lo + (x_hi - x_lo) * k // 4 for k in range(1, 4))})
    for x in ticks:
        anchor = "start" if x == x_lo and len(ticks) > 1 else "end" if x == x_hi else "middle"
        if len(ticks) == 1:
            anchor = "middle"
        parts.append(
            f'<text x="{sx(x):.1f}" y="{_CHART_HEIGHT - 8}" text-anchor="{anchor}">'
            f"{_esc(_fmt_time(x, with_date=span_days >= 1 or len(ticks) == 1))}</text>"
        )
    for name, series in lines.items():
        colour = colours.get(name, "#7f7f7f")
        ordered = sorted(series)
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ordered)
        parts.append(f'<g data-series="{_esc(name)}">')
        if len(ordered) > 1:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'
            )
        for x, y in ordered:
            label = f"{name} · {_fmt_time(x)} · {y_format.format(y)}"
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
                f"<title>{_esc(label)}</title></circle>"
            )
        parts.append("</g>")
    parts.append("</svg>")
    legend = "".join(
        f'<span style="--c:{colours.get(name, "#7f7f7f")}">{_esc(name)}</span>' for name in lines
    )
    parts.append(f'<div class="legend">{legend}</div>')
    return "".join(parts)


def _figure(caption: str, body: str) -> str:
    return f"<figure><figcaption>{_esc(caption)}</figcaption>{body}</figure>"


def _tile(label: str, value: str, test_id: str) -> str:
    return (
        f'<div class="tile"><div class="label">{_esc(label)}</div>'
        f'<div class="value" data-testid="{_esc(test_id)}">{_esc(value)}</div></div>'
    )


def _rows(stats: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    series = stats.get("series")
    if not isinstance(series, list):
        return []
    return [row for row in series if isinstance(row, Mapping)]


def _group_lines(
    rows: Iterable[Mapping[str, Any]], keep: set[str], field: str, *, merge: str
) -> dict[str, list[tuple[int, float]]]:
    """Collect ``field`` per type and bucket; apps merge by ``sum`` or ``max``."""
    acc: dict[str, dict[int, float]] = {}
    for row in rows:
        kind = str(row.get("type", ""))
        name = kind if kind in keep else "other"
        value = _float(row.get(field))
        if value is None:
            continue
        bucket = _int(row.get("bucket_start"))
        slot = acc.setdefault(name, {})
        if merge == "sum":
            slot[bucket] = slot.get(bucket, 0.0) + value
        else:
            slot[bucket] = max(slot.get(bucket, value), value)
    return {name: sorted(points.items()) for name, points in acc.items()}


def _filter_form(filters: Mapping[str, str], action: str) -> str:
    fields = []
    hints = {"from": "ms or ISO 8601", "to": "ms or ISO 8601", "app": "any", "type": "any"}
    for name in _FILTER_FIELDS:
        fields.append(
            f'<label>{_esc(name)}<input type="text" name="{_esc(name)}" '
            f'value="{_esc(filters.get(name, ""))}" placeholder="{_esc(hints[name])}" '
            f'data-testid="filter-{_esc(name)}"></label>'
        )
    bucket = filters.get("bucket", "hour")
    options = "".join(
        f'<option value="{b}"{" selected" if bucket == b else ""}>{b}</option>'
        for b in ("hour", "day")
    )
    fields.append(
        f'<label>bucket<select name="bucket" data-testid="filter-bucket">{options}</select></label>'
    )
    fields.append('<button type="submit" data-testid="filter-submit">Apply</button>')
    return f'<form class="filters" method="get" action="{_esc(action)}">{"".join(fields)}</form>'


def render_dashboard(
    stats: Mapping[str, Any],
    *,
    title: str,
    filters: Mapping[str, str] | None = None,
    action: str = "/",
    generated_at_ms: int | None = None,
) -> str:
    """Return the dashboard page for a ``GET /v1/stats`` body.

    ``stats`` is the stats body of DESIGN §7: ``totals`` (``count``,
    ``by_type``, ``installs``, ``duplicates``, ``rejected`` and, when present,
    ``throttled`` and ``rejected_by_code``) and ``series`` rows (``app``,
    ``type``, ``bucket_start`` in ms, ``count``, ``success``, ``failure``,
    ``p50_ms``, ``p95_ms``, ``p99_ms``, ``installs``). Missing or malformed
    fields render as zero or a dash rather than failing. ``title`` heads the
    page. ``filters`` holds the current query parameters (``from``, ``to``,
    ``app``, ``type``, ``bucket``) to prefill the filter form, which submits
    them with GET to ``action``. ``generated_at_ms`` is shown in the header
    when given. The result is a complete HTML document with every
    client-supplied string escaped.
    """
    filters = filters or {}
    totals_raw = stats.get("totals")
    totals: Mapping[str, Any] = totals_raw if isinstance(totals_raw, Mapping) else {}
    rows = _rows(stats)
    by_type_raw = totals.get("by_type")
    by_type: dict[str, int] = (
        {str(k): _int(v) for k, v in by_type_raw.items()}
        if isinstance(by_type_raw, Mapping)
        else {}
    )

    per_type: dict[str, dict[str, float]] = {}
    for row in rows:
        kind = str(row.get("type", ""))
        agg = per_type.setdefault(kind, {"count": 0, "success": 0, "failure": 0, "p95": -1.0})
        agg["count"] += _int(row.get("count"))
        agg["success"] += _int(row.get("success"))
        agg["failure"] += _int(row.get("failure"))
        p95 = _float(row.get("p95_ms"))
        if p95 is not None:
            agg["p95"] = max(agg["p95"], p95)
    for kind, count in by_type.items():
        per_type.setdefault(kind, {"count": count, "success": 0, "failure": 0, "p95": -1.0})
    total_success = sum(int(a["success"]) for a in per_type.values())
    total_failure = sum(int(a["failure"]) for a in per_type.values())
    if "success" in totals and "failure" in totals:
        total_success, total_failure = _int(totals["success"]), _int(totals["failure"])

    ranked = sorted(per_type, key=lambda k: (-by_type.get(k, int(per_type[k]["count"])), k))
    keep = set(ranked[: _MAX_LINES - 1] if len(ranked) > _MAX_LINES else ranked)
    colours = {kind: _PALETTE[i % len(_PALETTE)] for i, kind in enumerate(sorted(keep))}
    colours["other"] = "#bbbbbb"

    tiles = [
        _tile("Events", str(_int(totals.get("count"))), "total-count"),
        _tile("Distinct installs", str(_int(totals.get("installs"))), "total-installs"),
        _tile("Success rate", _fmt_rate(total_success, total_failure), "success-rate"),
        _tile("Duplicates", str(_int(totals.get("duplicates"))), "total-duplicates"),
        _tile("Rejected", str(_int(totals.get("rejected"))), "total-rejected"),
    ]
    if "throttled" in totals:
        tiles.append(_tile("Throttled", str(_int(totals.get("throttled"))), "total-throttled"))
    for key in ("p95_ms", "p50_ms", "p99_ms"):
        if key in totals:
            label = f"{key[:3]} duration"
            tiles.append(_tile(label, _fmt_ms(_float(totals.get(key))), f"total-{key[:3]}"))

    # Successes and failures add across apps and types; the rate is taken after.
    judged: dict[int, list[int]] = {}
    for row in rows:
        slot = judged.setdefault(_int(row.get("bucket_start")), [0, 0])
        slot[0] += _int(row.get("success"))
        slot[1] += _int(row.get("failure"))
    rate_points = [(x, 100.0 * s / (s + f)) for x, (s, f) in sorted(judged.items()) if s + f]
    charts = [
        _figure(
            "Events over time, per type",
            _line_chart(
                "chart-events",
                _group_lines(rows, keep, "count", merge="sum"),
                colours,
                y_label="events",
            ),
        ),
        _figure(
            "Success rate (%)",
            _line_chart(
                "chart-success",
                {"success rate": rate_points} if rate_points else {},
                {"success rate": "#009e73"},
                y_label="success rate",
                y_max=100.0,
                y_format="{:.1f}",
            ),
        ),
        _figure(
            "p95 duration (ms), per type",
            _line_chart(
                "chart-p95",
                # Percentiles do not add: across apps show the worst bucket.
                _group_lines(rows, keep, "p95_ms", merge="max"),
                colours,
                y_label="p95 duration in ms",
                y_format="{:.1f}",
            ),
        ),
        _figure(
            "Distinct installs, per type",
            _line_chart(
                "chart-installs",
                # Installs overlap between apps and types, so they are not summed.
                _group_lines(rows, keep, "installs", merge="max"),
                colours,
                y_label="distinct installs",
            ),
        ),
    ]

    type_rows = []
    for kind in ranked:
        agg = per_type[kind]
        count = by_type.get(kind, int(agg["count"]))
        p95 = agg["p95"] if agg["p95"] >= 0 else None
        type_rows.append(
            f'<tr data-testid="type-row" data-type="{_esc(kind)}">'
            f'<td data-testid="type-name">{_esc(kind)}</td>'
            f'<td class="num" data-testid="type-count">{count}</td>'
            f'<td class="num" data-testid="type-success-rate">'
            f"{_esc(_fmt_rate(int(agg['success']), int(agg['failure'])))}</td>"
            f'<td class="num" data-testid="type-p95">{_esc(_fmt_ms(p95))}</td></tr>'
        )
    type_table = (
        '<h2>By type</h2><table data-testid="type-table"><thead><tr><th>type</th>'
        '<th class="num">events</th><th class="num">success rate</th>'
        '<th class="num">worst bucket p95</th></tr></thead><tbody>'
        + (
            "".join(type_rows)
            or '<tr><td colspan="4" class="empty" data-testid="types-empty">No events</td></tr>'
        )
        + "</tbody></table>"
    )

    codes_raw = totals.get("rejected_by_code")
    code_table = ""
    if isinstance(codes_raw, Mapping) and codes_raw:
        code_rows = "".join(
            f'<tr data-testid="rejected-row" data-code="{_esc(code)}"><td>{_esc(code)}</td>'
            f'<td class="num" data-testid="rejected-count">{_int(n)}</td></tr>'
            for code, n in sorted(codes_raw.items(), key=lambda item: str(item[0]))
        )
        code_table = (
            '<h2>Rejected, by code</h2><table data-testid="rejected-table"><thead><tr>'
            '<th>code</th><th class="num">events</th></tr></thead>'
            f"<tbody>{code_rows}</tbody></table>"
        )

    subtitle = ""
    if generated_at_ms is not None:
        subtitle = (
            f'<p data-testid="generated-at">Generated {_esc(_fmt_time(generated_at_ms))} UTC</p>'
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1 data-testid="title">{_esc(title)}</h1>{subtitle}</header>'
        f"<main>{_filter_form(filters, action)}"
        f'<section class="tiles" data-testid="tiles">{"".join(tiles)}</section>'
        f'<section class="charts">{"".join(charts)}</section>'
        f"{type_table}{code_table}</main></body></html>\n"
    )


def render_login(error: str | None = None, *, title: str = "telemetry-core collector") -> str:
    """Return the login page: a form posting the admin token to ``/login``.

    The token travels in the form field :data:`LOGIN_TOKEN_FIELD` of a
    ``POST`` (never in a URL). ``error``, when given, is shown above the form,
    escaped.
    """
    message = (
        f'<p class="error" role="alert" data-testid="login-error">{_esc(error)}</p>'
        if error
        else ""
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_esc(title)} · sign in</title><style>{_CSS}</style></head><body>"
        f'<form class="login" method="post" action="/login" data-testid="login-form">'
        f"<h1>{_esc(title)}</h1>{message}"
        f'<label for="token">Admin token</label>'
        f'<input id="token" name="{LOGIN_TOKEN_FIELD}" type="password" required '
        f'autocomplete="current-password" autofocus data-testid="login-token">'
        '<button type="submit" data-testid="login-submit">Sign in</button>'
        "</form></body></html>\n"
    )
