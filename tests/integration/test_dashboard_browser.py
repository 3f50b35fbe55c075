"""The dashboard in headless Debian Chromium, driven by playwright, against a real collector.

A ``telemetry-collector serve --db`` subprocess receives known events over HTTPS;
the browser signs in with the admin token through the login form, reads the
numbers the page shows, filters by type, and saves a screenshot under the
test's temporary directory. A second test loads 6,000 events spread over three
days and checks what a reader relies on: time labels that do not overlap,
presets and date pickers that change the range, p50/p95/p99 per type equal to
the merged-histogram values of ``/v1/stats`` (and within 1 % of the exact
ones), the comparison with the previous period, and a sign-out after which the
session is refused. Skipped when chromium or playwright is missing, except
under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trustme

from telemetry_core.collector.aggregation import format_significant
from telemetry_core.collector.auth import AdminAuth
from telemetry_core.schema import MAX_BATCH_EVENTS, Event, SubmitRequest, new_event_id
from tests.integration.collector_process import CollectorProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run)")
    pytest.skip(reason)


@pytest.fixture
def sync_api() -> Any:
    """playwright's sync API module, or a skip (a failure under CI=true)."""
    try:
        from playwright import sync_api
    except ImportError as exc:
        _missing(f"playwright is not installed: {exc}")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        _missing(f"{CHROMIUM} is not installed")
    return sync_api


@pytest.fixture
def collector(tls_ca: trustme.CA, tmp_path: Path) -> Iterator[CollectorProcess]:
    """A SQLite-backed collector holding known events (see :func:`_known_events`)."""
    with CollectorProcess(tls_ca, tmp_path / "collector", ["--db", str(tmp_path / "c.db")]) as c:
        yield c


def _known_events(now_ms: int) -> list[Event]:
    """10 events: cmd.run 5 (4 ok, 1 failed), error 2 (failed), startup 3 (no outcome)."""

    def event(kind: str, minutes_ago: int, install: int, success: bool | None) -> Event:
        return Event(
            id=new_event_id(),
            type=kind,
            timestamp=now_ms - minutes_ago * MINUTE,
            install_id=f"install-{install}",
            app="demo",
            duration_ms=10.0 * (install + 1),
            success=success,
            properties={"command": kind},
        )

    return [
        event("cmd.run", 5, 0, True),
        event("cmd.run", 6, 1, True),
        event("cmd.run", 7, 2, True),
        event("cmd.run", 65, 0, True),
        event("cmd.run", 66, 3, False),
        event("error", 8, 1, False),
        event("error", 70, 2, False),
        event("startup", 9, 0, None),
        event("startup", 10, 1, None),
        event("startup", 71, 3, None),
    ]


def _submit(collector: CollectorProcess, payload: bytes) -> dict[str, Any]:
    with httpx.Client(verify=collector.ssl_context(), timeout=30) as client:
        response = client.post(
            f"{collector.base_url}/v1/submit",
            content=payload,
            headers={"Content-Type": "application/json", "X-API-Key": collector.api_key},
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _in_browser(sync_api: Any, drive: Callable[[Any, Any], None], *, timeout: float) -> None:
    """Run ``drive(page, context)`` in Chromium, then check that the console logged no
    Content Security Policy violation.

    playwright's sync API refuses to run where an asyncio loop is running; a fresh
    thread guarantees there is none, whatever other plugins did."""

    def run() -> None:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                # The test CA is not in Chromium's store; TLS itself is tested elsewhere.
                context = browser.new_context(
                    ignore_https_errors=True, viewport={"width": 1280, "height": 900}
                )
                page = context.new_page()
                console: list[str] = []
                page.on("console", lambda message: console.append(message.text))
                drive(page, context)
                blocked = [m for m in console if "Content Security Policy" in m]
                assert blocked == [], blocked
                context.close()
            finally:
                browser.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(run).result(timeout=timeout)


def test_dashboard_renders_the_collectors_numbers(
    sync_api: Any, collector: CollectorProcess, tmp_path: Path
) -> None:
    events = _known_events(int(time.time() * 1000))
    first = msgspec.json.encode(SubmitRequest(events=events[:6]))
    # One event with a bad type rides along as raw JSON: rejected, the rest stored.
    bad = msgspec.json.encode(
        {"id": new_event_id(), "type": "Bad Type", "timestamp": 1, "install_id": "x", "app": "demo"}
    )
    first = first[:-2] + b"," + bad + b"]}"
    answer = _submit(collector, first)
    assert (answer["accepted"], answer["rejected"]) == (6, 1)
    answer = _submit(collector, msgspec.json.encode(SubmitRequest(events=events[3:])))
    assert (answer["accepted"], answer["duplicates"]) == (4, 3)

    screenshot = tmp_path / "dashboard.png"

    def drive(page: Any, context: Any) -> None:
        response = page.goto(f"{collector.base_url}/")
        assert response is not None and response.status == 401
        # Review finding 14: the page renders under its own strict CSP.
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp
        page.get_by_test_id("login-token").fill("not-the-token")
        page.get_by_test_id("login-submit").click()
        page.get_by_test_id("login-error").wait_for()
        page.get_by_test_id("login-token").fill(collector.admin_token)
        page.get_by_test_id("login-submit").click()
        page.get_by_test_id("tiles").wait_for()

        assert _text(page, "total-count") == "10"
        assert _text(page, "total-installs") == "4"
        assert _text(page, "total-duplicates") == "3"
        assert _text(page, "total-rejected") == "1"
        assert _text(page, "total-throttled") == "0"
        # 4 successes out of 7 events with an outcome.
        assert _text(page, "success-rate") == "57.1%"
        counts = {
            row.get_attribute("data-type"): row.get_by_test_id("type-count").inner_text()
            for row in page.get_by_test_id("type-row").all()
        }
        assert counts == {"cmd.run": "5", "error": "2", "startup": "3"}
        codes = page.locator('[data-testid="rejected-row"][data-code="invalid_type"]')
        assert codes.get_by_test_id("rejected-count").inner_text() == "1"
        for chart in ("chart-events", "chart-success", "chart-p95", "chart-installs"):
            assert page.get_by_test_id(chart).is_visible()
        page.screenshot(path=str(screenshot), full_page=True)

        # The filter form submits GET parameters and the page follows them.
        page.get_by_test_id("filter-type").fill("error")
        page.get_by_test_id("filter-bucket").select_option("day")
        page.get_by_test_id("filter-submit").click()
        page.wait_for_url("**/?*type=error*")
        assert _text(page, "total-count") == "2"
        assert _text(page, "success-rate") == "0.0%"
        assert page.get_by_test_id("type-row").count() == 1
        # The inline stylesheet applied: tiles are laid out, not unstyled text.
        display = page.evaluate(
            "getComputedStyle(document.querySelector('[data-testid=tiles]')).display"
        )
        assert display in ("grid", "flex"), display

    _in_browser(sync_api, drive, timeout=100)

    assert screenshot.exists()
    width, height = _png_size(screenshot)
    assert width >= 1000
    assert height >= 600
    # A blank page compresses to a few kilobytes; charts, tiles and text do not.
    assert screenshot.stat().st_size > 20_000


#: The three days' mix: type -> (share, duration in ms drawn from rng or None, P(success)).
_MIX: dict[str, tuple[float, Callable[[random.Random], float] | None, float | None]] = {
    "cmd.run": (0.4, lambda rng: rng.lognormvariate(3.0, 0.5), 0.9),
    "startup": (0.2, lambda rng: rng.uniform(1.5, 3.0), None),
    "sync.upload": (0.1, lambda rng: rng.lognormvariate(6.8, 0.2), 0.95),
    "cache.hit": (0.2, lambda rng: rng.uniform(0.0002, 0.0008), None),
    "error": (0.1, None, 0.0),
}


def _three_days(now_ms: int, n: int = 6000) -> list[Event]:
    """``n`` events of the :data:`_MIX` spread evenly over the 72 hours before now."""
    rng = random.Random(20261204)
    kinds = list(_MIX)
    weights = [_MIX[k][0] for k in kinds]
    events = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        _, duration, p_success = _MIX[kind]
        success = None if p_success is None else rng.random() < p_success
        events.append(
            Event(
                id=new_event_id(),
                type=kind,
                timestamp=now_ms - rng.randrange(0, 3 * DAY),
                install_id=f"install-{rng.randrange(40)}",
                app=rng.choice(["desk", "cli"]),
                duration_ms=None if duration is None else duration(rng),
                success=success,
            )
        )
    return events


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[
        min(len(ordered), max(1, -(-int(q * 1_000_000) * len(ordered) // 1_000_000))) - 1
    ]


def _admin_get(collector: CollectorProcess, path: str, **headers: str) -> httpx.Response:
    with httpx.Client(verify=collector.ssl_context(), timeout=30) as client:
        return client.get(f"{collector.base_url}{path}", headers=headers)


def _stats(collector: CollectorProcess, query: str) -> dict[str, Any]:
    response = _admin_get(
        collector, f"/v1/stats?{query}", Authorization=f"Bearer {collector.admin_token}"
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _window(events: list[Event], start: int, end: int) -> list[Event]:
    return [e for e in events if start <= e.timestamp < end]


def _no_overlap(boxes: list[dict[str, float]]) -> list[tuple[int, int]]:
    """Pairs of boxes (by index) that overlap; boxes are playwright bounding boxes."""
    clashes = []
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            apart_x = a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
            apart_y = a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]
            if not (apart_x or apart_y):
                clashes.append((i, j))
    return clashes


@pytest.mark.timeout(300)
def test_three_days_of_events_read_well_and_add_up(
    sync_api: Any, collector: CollectorProcess, tmp_path: Path
) -> None:
    events = _three_days(int(time.time() * 1000))
    for start in range(0, len(events), MAX_BATCH_EVENTS):
        batch = events[start : start + MAX_BATCH_EVENTS]
        answer = _submit(collector, msgspec.json.encode(SubmitRequest(events=batch)))
        assert answer["accepted"] == len(batch), answer
    screenshot = tmp_path / "dashboard-3-days.png"

    def drive(page: Any, context: Any) -> None:
        _sign_in(page, collector)
        _check_all_time(page, collector, events)
        _check_presets_and_comparison(page, collector, events, tmp_path)
        _check_date_picker_and_old_params(page, collector, events)
        page.goto(f"{collector.base_url}/?range=7d")
        page.screenshot(path=str(screenshot), full_page=True)
        _check_sign_out(page, context, collector)

    _in_browser(sync_api, drive, timeout=280)
    width, height = _png_size(screenshot)
    assert width >= 1000 and height >= 900
    assert screenshot.stat().st_size > 50_000


def _sign_in(page: Any, collector: CollectorProcess) -> None:
    page.goto(f"{collector.base_url}/")
    page.get_by_test_id("login-token").fill(collector.admin_token)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("tiles").wait_for()


def _text(page: Any, test_id: str) -> str:
    value: str = page.get_by_test_id(test_id).inner_text()
    return value.strip()


def _rows(page: Any) -> dict[str, Any]:
    return {row.get_attribute("data-type"): row for row in page.get_by_test_id("type-row").all()}


def _check_all_time(page: Any, collector: CollectorProcess, events: list[Event]) -> None:
    assert _text(page, "total-count") == str(len(events))
    # Time labels: short, several per chart, and no two of them overlap on screen.
    for chart in ("chart-events", "chart-success", "chart-p95", "chart-installs"):
        labels = page.locator(f'[data-testid="{chart}"] text.tick-x')
        texts = labels.all_text_contents()
        assert 3 <= len(texts) <= 12, (chart, texts)
        assert all(len(t) <= 11 for t in texts), texts
        boxes = [label.bounding_box() for label in labels.all()]
        assert _no_overlap(boxes) == [], (chart, texts)
    # The p95 chart is logarithmic: the ~2 ms startup line is not flattened to
    # the floor by the ~900 ms uploads (on a linear axis it would sit at 0.2 %).
    y_ticks = page.locator('[data-testid="chart-p95"] text.tick-y').all_text_contents()
    assert {"1", "100"} <= set(y_ticks), y_ticks
    startup = page.locator('[data-testid="chart-p95"] g[data-series="startup"] circle')
    heights = [float(c.get_attribute("cy")) for c in startup.all()]
    assert heights and max(heights) < 220 - 28 - 40, heights  # well above the x axis
    # p50/p95/p99 per type: the merged-histogram values of /v1/stats, and within
    # 1 % (plus the rounding) of the exact nearest-rank percentile of what was sent.
    merged = _stats(collector, "")["durations_by_type"]
    rows = _rows(page)
    assert set(rows) == set(_MIX)
    for kind, row in rows.items():
        durations = [e.duration_ms for e in events if e.type == kind and e.duration_ms is not None]
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            cell = row.get_by_test_id(f"type-{name}")
            expected = merged[kind][f"{name}_ms"]
            if not durations:
                assert expected is None and cell.get_attribute("data-ms") is None
                continue
            assert float(cell.get_attribute("data-ms")) == expected
            shown = cell.inner_text().strip()
            assert shown in (
                f"{format_significant(expected)} ms",
                f"{format_significant(expected / 1000)} s",
            ), shown
            exact = _nearest_rank(durations, q)
            assert abs(expected - exact) <= 0.01001 * exact, (kind, name, expected, exact)
    # The sub-microsecond type reads as itself, not 0.0.
    assert rows["cache.hit"].get_by_test_id("type-p50").inner_text().startswith("0.000")


def _check_presets_and_comparison(
    page: Any, collector: CollectorProcess, events: list[Event], tmp_path: Path
) -> None:
    page.get_by_test_id("preset-24h").click()
    page.wait_for_url("**/?range=24h")
    page.screenshot(path=str(tmp_path / "dashboard-24h.png"), full_page=True)
    assert page.get_by_test_id("preset-24h").get_attribute("aria-current") == "page"
    start_text = page.get_by_test_id("filter-from").input_value()
    end_text = page.get_by_test_id("filter-to").input_value()
    stats = _stats(collector, f"from={start_text}&to={end_text}")
    start, end = stats["from"], stats["to"]
    assert end - start == DAY and start % HOUR == 0
    current = _window(events, start, end)
    before = _window(events, start - DAY, start)
    assert 0 < len(current) < len(events)
    assert _text(page, "total-count") == str(len(current)) == str(stats["totals"]["count"])
    change = 100.0 * (len(current) - len(before)) / len(before)
    assert _text(page, "total-count-change") == f"{change:+.1f}% vs {len(before)} before"
    for kind, row in _rows(page).items():
        now_n = sum(e.type == kind for e in current)
        then_n = sum(e.type == kind for e in before)
        assert row.get_by_test_id("type-count").inner_text() == str(now_n)
        assert row.get_by_test_id("type-previous").inner_text() == str(then_n)
        assert row.get_by_test_id("type-change").inner_text() == (
            f"{100.0 * (now_n - then_n) / then_n:+.1f}%"
        )
        merged = stats["durations_by_type"][kind]
        data_ms = row.get_by_test_id("type-p95").get_attribute("data-ms")
        assert (None if data_ms is None else float(data_ms)) == merged["p95_ms"]
    assert "compared with" in _text(page, "range-note")
    page.get_by_test_id("preset-30d").click()
    page.wait_for_url("**/?range=30d")
    assert _text(page, "total-count") == str(len(events))


def _check_date_picker_and_old_params(
    page: Any, collector: CollectorProcess, events: list[Event]
) -> None:
    newest = max(e.timestamp for e in events)
    day_start = newest - newest % DAY - DAY
    page.get_by_test_id("preset-all").click()
    page.get_by_test_id("filter-from").fill(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(day_start / 1000))
    )
    page.get_by_test_id("filter-to").fill(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime((day_start + DAY) / 1000))
    )
    page.get_by_test_id("filter-type").fill("cmd.run")
    page.get_by_test_id("filter-submit").click()
    page.wait_for_url("**/?from=*type=cmd.run*")
    picked = [e for e in _window(events, day_start, day_start + DAY) if e.type == "cmd.run"]
    assert _text(page, "total-count") == str(len(picked))
    # The old query parameters still work: milliseconds and ISO 8601 mixed.
    iso_end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((day_start + DAY) / 1000))
    page.goto(f"{collector.base_url}/?from={day_start}&to={iso_end}&type=cmd.run")
    assert _text(page, "total-count") == str(len(picked))


def _check_sign_out(page: Any, context: Any, collector: CollectorProcess) -> None:
    session = next(c["value"] for c in context.cookies() if c["name"] == AdminAuth.COOKIE)
    page.get_by_test_id("sign-out").click()
    page.get_by_test_id("login-form").wait_for()
    assert not any(c["name"] == AdminAuth.COOKIE for c in context.cookies())
    response = page.goto(f"{collector.base_url}/")
    assert response is not None and response.status == 401
    # A copy of the old cookie is refused too: the session ended on the server.
    replay = _admin_get(collector, "/", Cookie=f"{AdminAuth.COOKIE}={session}")
    assert replay.status_code == 401 and "login-form" in replay.text
