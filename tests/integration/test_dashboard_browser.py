"""The dashboard in headless Debian Chromium, driven by playwright, against a real collector.

A ``telemetry-collector serve --db`` subprocess receives known events over HTTPS;
the browser signs in with the admin token through the login form, reads the
numbers the page shows, filters by type, and saves a screenshot under the
test's temporary directory. Skipped when chromium or playwright is missing,
except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trustme

from telemetry_core.schema import Event, SubmitRequest, new_event_id
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

    def drive_browser() -> None:
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
                response = page.goto(f"{collector.base_url}/")
                assert response is not None and response.status == 401
                # Review finding 14: the page renders under its own strict CSP.
                assert "default-src 'none'" in response.headers["content-security-policy"]
                page.get_by_test_id("login-token").fill("not-the-token")
                page.get_by_test_id("login-submit").click()
                page.get_by_test_id("login-error").wait_for()
                page.get_by_test_id("login-token").fill(collector.admin_token)
                page.get_by_test_id("login-submit").click()
                page.get_by_test_id("tiles").wait_for()

                def text(test_id: str) -> str:
                    value: str = page.get_by_test_id(test_id).inner_text()
                    return value.strip()

                assert text("total-count") == "10"
                assert text("total-installs") == "4"
                assert text("total-duplicates") == "3"
                assert text("total-rejected") == "1"
                assert text("total-throttled") == "0"
                # 4 successes out of 7 events with an outcome.
                assert text("success-rate") == "57.1%"
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
                assert text("total-count") == "2"
                assert text("success-rate") == "0.0%"
                assert page.get_by_test_id("type-row").count() == 1
                # The inline stylesheet applied: tiles are laid out, not unstyled text.
                display = page.evaluate(
                    "getComputedStyle(document.querySelector('[data-testid=tiles]')).display"
                )
                assert display in ("grid", "flex"), display
                blocked = [m for m in console if "Content Security Policy" in m]
                assert blocked == [], blocked
                context.close()
            finally:
                browser.close()

    # playwright's sync API refuses to run where an asyncio loop is running; a
    # fresh thread guarantees there is none, whatever other plugins did.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(drive_browser).result(timeout=100)

    assert screenshot.exists()
    width, height = _png_size(screenshot)
    assert width >= 1000
    assert height >= 600
    # A blank page compresses to a few kilobytes; charts, tiles and text do not.
    assert screenshot.stat().st_size > 20_000
