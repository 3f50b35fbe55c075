"""Unit tests for telemetry_core.collector.dashboard: the page drawn from a stats
body, and (last) the dashboard route of a real app on a real SQLite file."""

from __future__ import annotations

import base64
import hashlib
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from starlette.exceptions import StarletteDeprecationWarning

from telemetry_core.collector.app import create_app
from telemetry_core.collector.dashboard import (
    CONTENT_SECURITY_POLICY,
    LOGIN_TOKEN_FIELD,
    render_dashboard,
    render_login,
)
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.sqlite_store import SQLiteStore
from tests.conftest import wire_event

with warnings.catch_warnings():
    # starlette warns at import that it prefers httpx2 over the installed httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _row(
    kind: str, bucket: int, count: int, success: int, failure: int, **extra: Any
) -> dict[str, Any]:
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
        "durations_by_type": {
            "command_executed": {"p50_ms": 10.0, "p95_ms": 41.234567, "p99_ms": 0.000400321},
            "error": {"p50_ms": None, "p95_ms": None, "p99_ms": None},
        },
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


def test_per_type_rows_show_merged_percentiles_and_rejected_codes() -> None:
    page = render_dashboard(_stats(), title="Telemetry")
    rows = re.findall(
        r'data-type="([^"]*)"><td data-testid="type-name">[^<]*</td>'
        r'<td class="num" data-testid="type-count">(\d+)</td>.*?'
        r'<td class="num" data-testid="type-success-rate">([^<]*)</td>'
        r'<td class="num" data-testid="type-p50"[^>]*>([^<]*)</td>'
        r'<td class="num" data-testid="type-p95"[^>]*>([^<]*)</td>'
        r'<td class="num" data-testid="type-p99"[^>]*>([^<]*)</td>',
        page,
    )
    # The merged-histogram values of durations_by_type, not the worst bucket's
    # 123.4 ms; four significant digits, so 0.0004 ms does not read as 0.0.
    assert rows == [
        ("command_executed", "45", "95.6%", "10 ms", "41.23 ms", "0.0004003 ms"),
        ("error", "12", "0.0%", "\N{EN DASH}", "\N{EN DASH}", "\N{EN DASH}"),
    ]
    assert 'data-testid="type-p99" data-ms="0.000400321"' in page
    assert re.findall(r'data-code="([^"]*)"><td>[^<]*</td><td[^>]*>(\d+)<', page) == [
        ("invalid_type", "1"),
        ("pii", "1"),
    ]


def test_previous_period_is_compared_per_type_and_in_total() -> None:
    previous = {
        "from": T0 - 2 * HOUR,
        "to": T0,
        "totals": {"count": 50, "by_type": {"command_executed": 36, "gone": 14}},
        "series": [],
    }
    parsed = _parse(render_dashboard(_stats(), title="T", previous=previous))
    assert parsed.text("total-count-change") == ["+14.0% vs 50 before"]
    page = render_dashboard(_stats(), title="T", previous=previous)
    cells = re.findall(
        r'data-type="([^"]*)">.*?data-testid="type-previous">([^<]*)<'
        r'.*?data-testid="type-change">([^<]*)<',
        page,
    )
    assert cells == [("command_executed", "36", "+25.0%"), ("error", "0", "new")]
    note = _parse(page).text("range-note")[0]
    assert note == "Compared with 2025-12-31 22:00 to 2026-01-01 00:00 UTC."
    # Without a previous period there is nothing to compare and it says so.
    alone = _parse(render_dashboard(_stats(), title="T"))
    assert alone.text("total-count-change") == []
    assert alone.text("range-note") == ["Pick a range to compare it with the period before."]


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
    bodies: list[dict[str, Any]] = [
        {},
        {"totals": {}, "series": []},
        {"totals": None, "series": "nope"},
    ]
    for stats in bodies:
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


def test_filter_form_offers_date_pickers_prefilled_from_old_style_values() -> None:
    page = render_dashboard(
        _stats(),
        title="T",
        filters={"from": "2026-01-01", "to": str(T0 + 36 * HOUR), "app": "demo", "bucket": "day"},
    )
    assert '<form class="filters" method="get" action="/">' in page
    # ISO 8601 and milliseconds, as /v1/stats takes them, both prefill the picker in UTC.
    assert 'type="datetime-local" name="from" value="2026-01-01T00:00"' in page
    assert 'type="datetime-local" name="to" value="2026-01-02T12:00"' in page
    assert 'name="app" value="demo"' in page
    assert 'name="type" value=""' in page
    assert '<option value="day" selected>' in page
    assert '<option value="hour">' in page
    unreadable = render_dashboard(_stats(), title="T", filters={"from": "yesterday-ish"})
    assert 'name="from" value=""' in unreadable


def test_presets_link_to_a_range_keeping_the_other_filters() -> None:
    page = render_dashboard(
        _stats(), title="T", filters={"range": "7d", "type": "a b", "from": "1", "to": "2"}
    )
    links = dict(re.findall(r'<a href="([^"]*)"[^>]*data-testid="preset-(\w+)"', page))
    assert links == {
        "/?range=24h&amp;type=a+b": "24h",
        "/?range=7d&amp;type=a+b": "7d",
        "/?range=30d&amp;type=a+b": "30d",
        "/?type=a+b": "all",
    }
    assert re.findall(r'aria-current="page" data-testid="preset-(\w+)"', page) == ["7d"]
    assert re.findall(
        r'aria-current="page" data-testid="preset-(\w+)"', render_dashboard({}, title="T")
    ) == ["all"]


def test_sign_out_button_posts_to_logout() -> None:
    page = render_dashboard(_stats(), title="T")
    assert '<form method="post" action="/logout" data-testid="sign-out-form">' in page
    assert 'data-testid="sign-out"' in page
    assert 'action="/logout"' not in render_dashboard(_stats(), title="T", sign_out=False)


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


def test_csp_allows_exactly_the_pages_one_stylesheet() -> None:
    for page in (render_dashboard(_stats(), title="T"), render_login("x")):
        styles = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)
        assert len(styles) == 1
        digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}';" in CONTENT_SECURITY_POLICY
        assert " style=" not in page  # a style attribute would be blocked by the policy
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY  # default-src 'none' covers scripts


def test_range_note_names_the_range_shown_but_not_the_open_default() -> None:
    bounded = {**_stats(), "from": T0, "to": T0 + 2 * HOUR}
    note = _parse(render_dashboard(bounded, title="T")).text("range-note")
    assert note == [
        "Showing 2026-01-01 00:00 to 2026-01-01 02:00 UTC; "
        "pick a range to compare it with the period before."
    ]
    open_ended = {**_stats(), "from": 0, "to": 2**62}
    assert "Showing" not in _parse(render_dashboard(open_ended, title="T")).text("range-note")[0]


def _app_client(tmp_path: Path, now_ms: int) -> TestClient:
    store = SQLiteStore(tmp_path / "c.db")
    settings = CollectorSettings(api_keys=("submit-key-1",), admin_token="admin-token-123")
    return TestClient(create_app(settings, store, clock=lambda: now_ms / 1000))


def test_the_app_serves_presets_and_the_previous_period(tmp_path: Path) -> None:
    now = 1_800_000_000_000  # 2027-01-15T08:00Z
    bearer = {"Authorization": "Bearer admin-token-123"}
    events = [
        wire_event(type="run", timestamp=now - hours * HOUR - 1) for hours in (1, 2, 30, 30, 30)
    ]
    with _app_client(tmp_path, now) as client:
        sent = client.post(
            "/v1/submit", json={"events": events}, headers={"X-API-Key": "submit-key-1"}
        )
        assert sent.status_code == 200 and sent.json()["accepted"] == 5
        page = client.get("/?range=24h", headers=bearer)
        assert page.status_code == 200
        parsed = _parse(page.text)
        assert parsed.text("total-count") == ["2"]
        assert parsed.text("total-count-change") == ["-33.3% vs 3 before"]
        assert 'aria-current="page" data-testid="preset-24h"' in page.text
        assert 'data-testid="sign-out"' not in page.text  # a Bearer caller has no session
        refused = client.get("/?range=1y", headers=bearer)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "bad_query"
        assert "<" not in refused.json()["error"]["message"]
