"""Unit tests for telemetry_core.collector.dashboard (pure rendering)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from telemetry_core.collector.dashboard import LOGIN_TOKEN_FIELD, render_dashboard, render_login

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _row(kind: str, bucket: int, count: int, success: int, failure: int, **extra: Any) -> dict:
    row = {
        "app": "demo",
        "type": kind,
        "bucket_start": bucket,
        "count": count,
        "success": success,
        "failure": failure,
        "p50_ms": 10.0,
        "p95_ms": 40.0,
        "p99_ms": 90.0,
        "installs": 3,
    }
    row.update(extra)
    return row


def _stats() -> dict[str, Any]:
    return {
        "totals": {
            "count": 57,
            "by_type": {"command_executed": 45, "error": 12},
            "installs": 7,
            "duplicates": 4,
            "rejected": 2,
            "throttled": 9,
            "rejected_by_code": {"pii": 1, "invalid_type": 1},
        },
        "series": [
            _row("command_executed", T0, 20, 18, 2),
            _row("command_executed", T0 + HOUR, 25, 25, 0, p95_ms=123.4),
            _row("error", T0 + HOUR, 12, 0, 12, p95_ms=None, p50_ms=None, p99_ms=None),
        ],
    }


class _TestIds(HTMLParser):
    """Collect the text of every element carrying a data-testid, plus all attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: dict[str, list[str]] = {}
        self.attrs: list[dict[str, str | None]] = []
        self._open: list[tuple[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        self.attrs.append(found)
        if tag in {"input", "meta", "br", "img", "line", "circle", "polyline"}:
            return
        self._open.append((tag, found.get("data-testid")))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, test_id in self._open:
            if test_id:
                self.texts.setdefault(test_id, []).append(data)

    def text(self, test_id: str) -> list[str]:
        return ["".join(self.texts.get(test_id, []))] if test_id in self.texts else []


def _parse(page: str) -> _TestIds:
    parser = _TestIds()
    parser.feed(page)
    parser.close()
    return parser


def test_totals_are_rendered_as_text_with_test_ids() -> None:
    page = _parse(render_dashboard(_stats(), title="Telemetry"))
    assert page.text("total-count") == ["57"]
    assert page.text("total-installs") == ["7"]
    assert page.text("total-duplicates") == ["4"]
    assert page.text("total-rejected") == ["2"]
    assert page.text("total-throttled") == ["9"]
    # 43 successes out of 57 judged events (18 + 25 of command_executed, none of error).
    assert page.text("success-rate") == ["75.4%"]


def test_per_type_rows_and_rejected_codes() -> None:
    page = render_dashboard(_stats(), title="Telemetry")
    rows = re.findall(
        r'data-type="([^"]*)"><td data-testid="type-name">[^<]*</td>'
        r'<td class="num" data-testid="type-count">(\d+)</td>'
        r'<td class="num" data-testid="type-success-rate">([^<]*)</td>'
        r'<td class="num" data-testid="type-p95">([^<]*)</td>',
        page,
    )
    assert rows == [
        ("command_executed", "45", "95.6%", "123.4 ms"),
        ("error", "12", "0.0%", "\N{EN DASH}"),
    ]
    assert re.findall(r'data-code="([^"]*)"><td>[^<]*</td><td[^>]*>(\d+)<', page) == [
        ("invalid_type", "1"),
        ("pii", "1"),
    ]


def test_charts_are_inline_svg_without_network_or_script() -> None:
    page = render_dashboard(_stats(), title="Telemetry")
    for chart in ("chart-events", "chart-success", "chart-p95", "chart-installs"):
        assert '<svg viewBox="0 0 640 220" role="img" aria-label=' in page
        assert f'data-testid="{chart}"' in page
    # One line per type in the events chart, both types present.
    assert page.count('data-series="command_executed"') >= 3
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page
    assert "src=" not in page
    assert page.startswith("<!doctype html>")
    assert page.rstrip().endswith("</html>")


def test_hostile_type_and_filter_values_are_escaped() -> None:
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    stats = _stats()
    stats["totals"]["by_type"] = {hostile: 3}
    stats["totals"]["rejected_by_code"] = {hostile: 1}
    stats["series"] = [_row(hostile, T0, 3, 3, 0, app=hostile)]
    page = render_dashboard(
        stats,
        title=hostile,
        filters={"app": hostile, "type": hostile, "from": hostile, "bucket": hostile},
    )
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;" in page
    parsed = _parse(page)
    assert "script" not in parsed.tags
    assert "img" not in parsed.tags
    assert not any(key.startswith("on") for attrs in parsed.attrs for key in attrs)
    # The hostile name survives as data, intact, where a reader looks for it.
    assert any(attrs.get("data-type") == hostile for attrs in parsed.attrs)
    assert any(attrs.get("value") == hostile for attrs in parsed.attrs)
    assert parsed.text("title") == [hostile]


def test_empty_stats_render_a_complete_page() -> None:
    for stats in ({}, {"totals": {}, "series": []}, {"totals": None, "series": "nope"}):
        page = render_dashboard(stats, title="Empty")
        parsed = _parse(page)
        assert parsed.text("total-count") == ["0"]
        assert parsed.text("success-rate") == ["\N{EN DASH}"]
        assert parsed.text("types-empty") == ["No events"]
        assert parsed.text("chart-events-empty") == ["No data in range"]
        assert page.rstrip().endswith("</html>")


def test_malformed_numbers_do_not_break_rendering() -> None:
    stats = {
        "totals": {"count": "many", "installs": float("nan"), "by_type": {"a": None}},
        "series": [
            {"type": "a", "bucket_start": T0, "count": "x", "p95_ms": float("inf")},
            "not a row",
        ],
    }
    parsed = _parse(render_dashboard(stats, title="Odd"))
    assert parsed.text("total-count") == ["0"]
    assert parsed.text("total-installs") == ["0"]


def test_single_bucket_and_many_types() -> None:
    series = [_row(f"type_{i:02d}", T0, i + 1, i + 1, 0) for i in range(14)]
    stats = {
        "totals": {"count": sum(range(1, 15)), "by_type": {r["type"]: r["count"] for r in series}},
        "series": series,
    }
    page = render_dashboard(stats, title="Many")
    # The nine busiest types get their own line; the rest fold into "other".
    assert 'data-series="other"' in page
    assert 'data-series="type_13"' in page
    assert 'data-series="type_00"' not in page
    # The table still lists every type.
    assert page.count('data-testid="type-row"') == 14


def test_filter_form_submits_get_with_current_values() -> None:
    page = render_dashboard(
        _stats(),
        title="T",
        filters={"from": "2026-01-01", "to": "2026-01-02", "app": "demo", "bucket": "day"},
    )
    assert '<form class="filters" method="get" action="/">' in page
    assert 'name="from" value="2026-01-01"' in page
    assert 'name="app" value="demo"' in page
    assert 'name="type" value=""' in page
    assert '<option value="day" selected>' in page
    assert '<option value="hour">' in page


def test_generated_at_is_shown_in_utc() -> None:
    parsed = _parse(render_dashboard(_stats(), title="T", generated_at_ms=T0 + HOUR))
    assert parsed.text("generated-at") == ["Generated 2026-01-01 01:00 UTC"]


def test_login_page_posts_the_token_and_escapes_the_error() -> None:
    page = render_login(None)
    assert '<form class="login" method="post" action="/login"' in page
    assert f'name="{LOGIN_TOKEN_FIELD}" type="password"' in page
    assert 'data-testid="login-error"' not in page
    hostile = "<b>bad</b> token"
    page = render_login(hostile)
    parsed = _parse(page)
    assert parsed.text("login-error") == [hostile]
    assert "<b>" not in page


def test_success_rate_prefers_the_totals_when_given() -> None:
    stats = _stats()
    stats["totals"].update(success=9, failure=1)
    assert _parse(render_dashboard(stats, title="T")).text("success-rate") == ["90.0%"]
