"""The collector's dashboard page, drawn on the server from a view model.

:func:`render_dashboard` takes the ``GET /v1/stats`` body (DESIGN §7) of the
chosen range, and optionally that of the previous period of equal length;
:func:`~telemetry_core.collector.dashboard_model.build_view` turns them into a
:class:`~telemetry_core.collector.dashboard_model.DashboardView` and
:func:`render_view` draws it: range presets and a date picker, tiles for the
totals (with the change against the previous period), SVG charts (events, success
rate, p95 duration on a log scale, distinct installs) and a table per type with
p50/p95/p99 over the range. Nothing is fetched and no script runs, so the page
works offline and under a strict ``Content-Security-Policy``; the only forms are
the filter (GET) and the sign-out button (``POST /logout``).

Every string that reaches the page is escaped: event types, app names and filter
values come from clients and from the query string. Numbers shown as text carry
stable ``data-testid`` attributes (percentiles also their exact value in
``data-ms``) so tests and scrapers can read them without parsing charts.

:func:`render_login` is the small form page that posts the admin token to
``/login``; the application owns the routes and the cookie.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

from telemetry_core.collector.aggregation import format_significant
from telemetry_core.collector.auth import is_ascii_digits
from telemetry_core.collector.charts import LinearAxis, LogAxis, line_chart
from telemetry_core.collector.dashboard_model import (
    PRESETS,
    DashboardView,
    Period,
    Totals,
    TypeRow,
    build_view,
)

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "LOGIN_TOKEN_FIELD",
    "render_dashboard",
    "render_login",
    "render_view",
]

#: Name of the form field that carries the admin token in ``POST /login``.
LOGIN_TOKEN_FIELD: Final = "token"

#: Shown where a value cannot be computed (no durations, nothing judged).
_NO_VALUE: Final = "\N{EN DASH}"
#: Query parameters a preset link keeps (the range itself is replaced).
_KEPT_BY_PRESETS: Final = ("app", "type", "bucket")

_CSS: Final = """
:root { color-scheme: light; --fg: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 16px 24px; background: #fff; border-bottom: 1px solid var(--line);
         display: flex; justify-content: space-between; align-items: center; gap: 16px; }
header form button, .presets a { font: inherit; padding: 4px 12px; border-radius: 4px;
         border: 1px solid var(--line); background: #fff; color: var(--fg); text-decoration: none; }
header form button { cursor: pointer; }
.presets { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 10px; align-items: center; }
.presets a[aria-current="page"] { background: var(--fg); color: #fff; border-color: var(--fg); }
.range { color: var(--muted); margin: 0 0 12px; }
.tile .delta { font-size: 12px; color: var(--muted); font-variant-numeric: tabular-nums; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: var(--muted); }
main { padding: 16px 24px 40px; max-width: 1400px; }
form.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: end; margin-bottom: 16px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters input, form.filters select { font: inherit; padding: 4px 6px; min-width: 120px; }
form.filters button { font: inherit; padding: 5px 14px; }
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
.legend span { display: inline-flex; align-items: center; gap: 4px; }
.legend svg.swatch { width: 10px; height: 10px; display: inline-block; }
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

#: The policy every dashboard and login page is sent with: nothing may load and
#: no script may run; the one inline stylesheet is allowed by its hash, so no
#: other style (an injected ``style`` attribute or element) applies.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()}'; "
    "img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt_ms(value: float | None) -> str:
    """A duration for people: four significant digits, seconds from 10 s."""
    if value is None:
        return _NO_VALUE
    if value >= 10_000:
        return f"{format_significant(value / 1000)} s"
    return f"{format_significant(value)} ms"


def _fmt_rate(success: int, failure: int) -> str:
    judged = success + failure
    if judged == 0:
        return _NO_VALUE
    return f"{100.0 * success / judged:.1f}%"


def _fmt_change(current: int, previous: int | None) -> str:
    """The change from ``previous`` to ``current`` in percent, ``new`` from zero."""
    if previous is None:
        return _NO_VALUE
    if previous == 0:
        return "new" if current else "0%"
    return f"{100.0 * (current - previous) / previous:+.1f}%"


def _fmt_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _picker_value(text: str | None) -> str:
    """A ``from``/``to`` parameter (ms or ISO 8601) as a ``datetime-local`` value
    in UTC, or empty when it does not read as a time."""
    if not text:
        return ""
    try:
        if is_ascii_digits(text):
            moment = datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M")


def _presets(filters: Mapping[str, str], action: str) -> str:
    kept = {name: filters[name] for name in _KEPT_BY_PRESETS if filters.get(name)}
    current = filters.get("range") or ("" if filters.get("from") or filters.get("to") else "all")
    links = []
    for key, label in [*((k, v[0]) for k, v in PRESETS.items()), ("all", "All time")]:
        query = urlencode({**({"range": key} if key != "all" else {}), **kept})
        href = f"{action}?{query}" if query else action
        marker = ' aria-current="page"' if key == current else ""
        links.append(f'<a href="{_esc(href)}"{marker} data-testid="preset-{key}">{_esc(label)}</a>')
    return f'<nav class="presets" aria-label="Range">{"".join(links)}</nav>'


def _filter_form(filters: Mapping[str, str], action: str) -> str:
    fields = [
        f'<label>{name} (UTC)<input type="datetime-local" name="{name}" '
        f'value="{_esc(_picker_value(filters.get(name)))}" data-testid="filter-{name}"></label>'
        for name in ("from", "to")
    ]
    fields.extend(
        f'<label>{name}<input type="text" name="{name}" value="{_esc(filters.get(name, ""))}" '
        f'placeholder="any" data-testid="filter-{name}"></label>'
        for name in ("app", "type")
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


def _range_note(stats_range: tuple[int, int] | None, previous: Period | None) -> str:
    parts = []
    if stats_range is not None:
        start, end = stats_range
        parts.append(f"Showing {_fmt_time(start)} to {_fmt_time(end)} UTC")
    if previous is not None:
        parts.append(
            f"compared with {_fmt_time(previous.from_ms)} to {_fmt_time(previous.to_ms)} UTC"
        )
    else:
        parts.append("pick a range to compare it with the period before")
    note = "; ".join(parts)
    return f'<p class="range" data-testid="range-note">{_esc(note[:1].upper() + note[1:])}.</p>'


def _tile(label: str, value: str, test_id: str, note: str = "") -> str:
    extra = f'<div class="delta" data-testid="{_esc(test_id)}-change">{_esc(note)}</div>'
    return (
        f'<div class="tile"><div class="label">{_esc(label)}</div>'
        f'<div class="value" data-testid="{_esc(test_id)}">{_esc(value)}</div>'
        f"{extra if note else ''}</div>"
    )


def _tiles(totals: Totals, previous: Period | None) -> str:
    note = ""
    if previous is not None:
        note = f"{_fmt_change(totals.count, previous.count)} vs {previous.count} before"
    tiles = [
        _tile("Events", str(totals.count), "total-count", note),
        _tile("Distinct installs", str(totals.installs), "total-installs"),
        _tile("Success rate", _fmt_rate(totals.success, totals.failure), "success-rate"),
        _tile("Duplicates", str(totals.duplicates), "total-duplicates"),
        _tile("Rejected", str(totals.rejected), "total-rejected"),
    ]
    if totals.throttled is not None:
        tiles.append(_tile("Throttled", str(totals.throttled), "total-throttled"))
    return f'<section class="tiles" data-testid="tiles">{"".join(tiles)}</section>'


def _figure(caption: str, body: str) -> str:
    return f"<figure><figcaption>{_esc(caption)}</figcaption>{body}</figure>"


def _charts(view: DashboardView) -> str:
    x = view.x_range
    charts = [
        _figure(
            "Events over time, per type",
            line_chart("chart-events", view.events, x, label="events", axis=LinearAxis()),
        ),
        _figure(
            "Success rate (%)",
            line_chart(
                "chart-success",
                view.success_rate,
                x,
                label="success rate",
                axis=LinearAxis(top=100.0),
            ),
        ),
        _figure(
            "p95 duration per type (ms, log scale)",
            line_chart("chart-p95", view.p95, x, label="p95 duration in ms", axis=LogAxis()),
        ),
        _figure(
            "Distinct installs, per type",
            line_chart(
                "chart-installs", view.installs, x, label="distinct installs", axis=LinearAxis()
            ),
        ),
    ]
    return f'<section class="charts">{"".join(charts)}</section>'


def _ms_cell(test_id: str, value: float | None) -> str:
    exact = "" if value is None else f' data-ms="{value!r}"'
    return f'<td class="num" data-testid="{test_id}"{exact}>{_esc(_fmt_ms(value))}</td>'


def _type_row(row: TypeRow) -> str:
    previous = _NO_VALUE if row.previous_count is None else str(row.previous_count)
    return (
        f'<tr data-testid="type-row" data-type="{_esc(row.name)}">'
        f'<td data-testid="type-name">{_esc(row.name)}</td>'
        f'<td class="num" data-testid="type-count">{row.count}</td>'
        f'<td class="num" data-testid="type-previous">{previous}</td>'
        f'<td class="num" data-testid="type-change">'
        f"{_esc(_fmt_change(row.count, row.previous_count))}</td>"
        f'<td class="num" data-testid="type-success-rate">'
        f"{_esc(_fmt_rate(row.success, row.failure))}</td>"
        f"{_ms_cell('type-p50', row.p50_ms)}{_ms_cell('type-p95', row.p95_ms)}"
        f"{_ms_cell('type-p99', row.p99_ms)}</tr>"
    )


def _type_table(view: DashboardView) -> str:
    heads = ["events", "previous period", "change", "success rate", "p50", "p95", "p99"]
    head = "".join(f'<th class="num">{h}</th>' for h in heads)
    body = "".join(_type_row(row) for row in view.types) or (
        f'<tr><td colspan="{len(heads) + 1}" class="empty" data-testid="types-empty">'
        "No events</td></tr>"
    )
    return (
        '<h2>By type</h2><table data-testid="type-table"><thead><tr><th>type</th>'
        f"{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _code_table(codes: tuple[tuple[str, int], ...]) -> str:
    if not codes:
        return ""
    rows = "".join(
        f'<tr data-testid="rejected-row" data-code="{_esc(code)}"><td>{_esc(code)}</td>'
        f'<td class="num" data-testid="rejected-count">{n}</td></tr>'
        for code, n in codes
    )
    return (
        '<h2>Rejected, by code</h2><table data-testid="rejected-table"><thead><tr>'
        f'<th>code</th><th class="num">events</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _header(title: str, generated_at_ms: int | None, sign_out: bool) -> str:
    subtitle = ""
    if generated_at_ms is not None:
        subtitle = (
            f'<p data-testid="generated-at">Generated {_esc(_fmt_time(generated_at_ms))} UTC</p>'
        )
    button = (
        '<form method="post" action="/logout" data-testid="sign-out-form">'
        '<button type="submit" data-testid="sign-out">Sign out</button></form>'
        if sign_out
        else ""
    )
    return (
        f'<header><div><h1 data-testid="title">{_esc(title)}</h1>{subtitle}</div>{button}</header>'
    )


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def render_view(
    view: DashboardView,
    *,
    title: str,
    filters: Mapping[str, str] | None = None,
    action: str = "/",
    generated_at_ms: int | None = None,
    stats_range: tuple[int, int] | None = None,
    sign_out: bool = True,
) -> str:
    """Draw ``view`` as a complete HTML document.

    ``filters`` are the current query parameters (``range``, ``from``, ``to``,
    ``app``, ``type``, ``bucket``) that prefill the presets and the filter
    form, which submits them with GET to ``action``. ``stats_range`` is the
    range shown, ``(from, to)`` in ms, for the note under the filters.
    ``sign_out`` adds the sign-out button (``POST /logout``).
    """
    filters = filters or {}
    body = (
        f"{_header(title, generated_at_ms, sign_out)}<main>"
        f"{_presets(filters, action)}{_filter_form(filters, action)}"
        f"{_range_note(stats_range, view.previous)}{_tiles(view.totals, view.previous)}"
        f"{_charts(view)}{_type_table(view)}{_code_table(view.rejected_by_code)}</main>"
    )
    return _page(title, body)


def render_dashboard(
    stats: Mapping[str, Any],
    *,
    title: str,
    filters: Mapping[str, str] | None = None,
    action: str = "/",
    generated_at_ms: int | None = None,
    previous: Mapping[str, Any] | None = None,
    sign_out: bool = True,
) -> str:
    """Return the dashboard page for a ``GET /v1/stats`` body.

    ``stats`` is the stats body of DESIGN §7 (``totals``, ``series`` and
    ``durations_by_type``); ``previous``, when given, is the body of the
    previous period of equal length, for the comparison. Missing or malformed
    fields render as zero or a dash rather than failing. See
    :func:`render_view` for the other arguments. Every client-supplied string
    is escaped.
    """
    return render_view(
        build_view(stats, previous),
        title=title,
        filters=filters,
        action=action,
        generated_at_ms=generated_at_ms,
        stats_range=_bounds(stats),
        sign_out=sign_out,
    )


def _bounds(stats: Mapping[str, Any]) -> tuple[int, int] | None:
    """The body's ``(from, to)`` when both are set (not the open defaults)."""
    start, end = stats.get("from"), stats.get("to")
    if type(start) is int and type(end) is int and 0 < start < end < 2**62:
        return start, end
    return None


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
    return _page(
        f"{title} · sign in",
        f'<form class="login" method="post" action="/login" data-testid="login-form">'
        f"<h1>{_esc(title)}</h1>{message}"
        f'<label for="token">Admin token</label>'
        f'<input id="token" name="{LOGIN_TOKEN_FIELD}" type="password" required '
        f'autocomplete="current-password" autofocus data-testid="login-token">'
        '<button type="submit" data-testid="login-submit">Sign in</button></form>',
    )
