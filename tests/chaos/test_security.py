"""Security checks: transport rules, admin-only reads, consent, and secrets in logs.

The last test of this module (and, by file order, of the chaos session) greps
every log captured by the chaos suites (collector subprocess output, chaos
client log files, in-process client logs) for the submission key, the admin
token and the property-value marker.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from telemetry_core import TelemetryConfig, TelemetryService
from telemetry_core.errors import ConfigError
from tests.chaos.conftest import (
    ADMIN_TOKEN,
    API_KEY,
    PROPERTY_MARKER,
    Collector,
    Figures,
    LogVault,
)
from tests.chaos.faultproxy import FaultProxy

pytestmark = [pytest.mark.timeout(120)]
APP = Path(__file__).with_name("chaos_app.py")
_CHECKS: dict[str, int] = {}


def _count(name: str, n: int = 1) -> None:
    _CHECKS[name] = _CHECKS.get(name, 0) + n


def _collector(
    tmp_path: Path, cert_dir: Path, collectors: list[Collector], vault: LogVault
) -> Collector:
    collector = Collector(
        cert_dir, ["--db", str(tmp_path / "collector.db")], vault=vault, name="collector-security"
    )
    collectors.append(collector)
    collector.start()
    return collector


# -- transport rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://telemetry.example.com/v1/submit",
        "http://10.0.0.1/v1/submit",
        "http://[2001:db8::1]:8080/v1/submit",
        "HTTP://example.org/v1/submit",
        "ftp://127.0.0.1/v1/submit",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Explicit, environment and transport paths all refuse; nothing touches the network."""
    attempts: list[Any] = []

    def no_network(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ConfigError):
        TelemetryConfig(app="secapp", db_path=tmp_path / "t.db", endpoint=endpoint)
    with pytest.raises(ConfigError):
        TelemetryConfig.from_env(
            "secapp",
            tmp_path / "t.db",
            environ={"SECAPP_TELEMETRY_ENDPOINT": endpoint},
            strict=True,
        )
    # Not strict: the environment's value is reported and not used (DESIGN §4).
    lenient = TelemetryConfig.from_env(
        "secapp", tmp_path / "t.db", environ={"SECAPP_TELEMETRY_ENDPOINT": endpoint}
    )
    assert lenient.endpoint is None
    assert any("SECAPP_TELEMETRY_ENDPOINT" in problem for problem in lenient.problems)
    # A configuration that bypassed validation is refused again by the transport.
    from telemetry_core_plugins.https_transport import HttpsTransport

    config = TelemetryConfig(
        app="secapp", db_path=tmp_path / "t.db", endpoint="https://127.0.0.1:9/v1/submit"
    )
    object.__setattr__(config, "endpoint", endpoint)
    with pytest.raises(ConfigError):
        HttpsTransport(config)
    assert attempts == []
    assert not (tmp_path / "t.db").exists()
    _count("plain_http_refusals", 3)


def test_plain_http_to_loopback_is_allowed(tmp_path: Path) -> None:
    """The one exception: loopback (local development)."""
    for host in ("127.0.0.1", "localhost", "[::1]"):
        TelemetryConfig(app="secapp", db_path=tmp_path / "t.db", endpoint=f"http://{host}/v1")


def _stats(collector: Collector, context: ssl.SSLContext) -> dict[str, Any]:
    with httpx.Client(verify=context, timeout=30) as http:
        response = http.get(
            f"{collector.base_url}/v1/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def test_untrusted_certificate_refused_unless_its_ca_is_configured(  # noqa: PLR0917
    tmp_path: Path,
    cert_dir: Path,
    collectors: list[Collector],
    log_vault: LogVault,
    client_context: ssl.SSLContext,
    vault_caplog: pytest.LogCaptureFixture,
) -> None:
    """Without ``ca_bundle`` nothing is sent (TLS refused); with it, everything arrives."""
    vault_caplog.set_level(logging.DEBUG, logger="telemetry_core")
    collector = _collector(tmp_path, cert_dir, collectors, log_vault)
    db = tmp_path / "data" / "telemetry.db"
    config = TelemetryConfig(
        app="secapp",
        db_path=db,
        enabled=True,
        remote_enabled=True,
        endpoint=f"{collector.base_url}/v1/submit",
        api_key=API_KEY,
        submission_interval=3600.0,
        timeout=2.0,
    )
    with TelemetryService(config) as service:
        for i in range(20):
            assert service.track("sec.event", {"note": f"{PROPERTY_MARKER}{i}"}) is not None
        service.submit_now()
        assert service.queue_stats().pending == 20
        assert "TLS" in (service.get_submission_stats().last_error or "")
    assert _stats(collector, client_context)["totals"]["count"] == 0
    # The failed entries are scheduled for a retry by the backoff, so the trusted
    # run uses its own database rather than waiting for them to come due.
    trusted = config.evolve(ca_bundle=str(cert_dir / "ca.pem"), db_path=tmp_path / "ok.db")
    with TelemetryService(trusted) as service:
        for i in range(20):
            assert service.track("sec.event", {"note": f"{PROPERTY_MARKER}{i}"}) is not None
        service.submit_now()
        assert service.queue_stats().pending == 0
    assert _stats(collector, client_context)["totals"]["count"] == 20
    collector.stop()
    # The property values really travelled (so the log grep below is not vacuous).
    conn = sqlite3.connect(tmp_path / "collector.db")
    try:
        stored = [row[0] for row in conn.execute("SELECT properties FROM events")]
    finally:
        conn.close()
    assert all(PROPERTY_MARKER in p for p in stored) and len(stored) == 20
    _count("untrusted_cert_refusals")


# -- admin-only reads ---------------------------------------------------------------------


def test_admin_endpoints_refuse_submission_keys(
    tmp_path: Path,
    cert_dir: Path,
    collectors: list[Collector],
    log_vault: LogVault,
    client_context: ssl.SSLContext,
) -> None:
    """Stats, dashboard and metrics: every way of presenting a submission key is 401."""
    collector = _collector(tmp_path, cert_dir, collectors, log_vault)
    wrong: list[dict[str, str]] = [
        {},
        {"X-API-Key": API_KEY},
        {"Authorization": f"Bearer {API_KEY}"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
        {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"bearer  {API_KEY}"},
        {"Cookie": f"tc_admin={API_KEY}"},
        {"Cookie": f"tc_admin={ADMIN_TOKEN}"},
    ]
    paths = ("/v1/stats", "/metrics", "/", "/?type=x")
    with httpx.Client(verify=client_context, timeout=30, follow_redirects=False) as http:
        # The admin token first: refused attempts below may throttle this address.
        for path in paths:
            ok = http.get(
                f"{collector.base_url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert ok.status_code == 200, (path, ok.status_code)
        for path in paths:
            for headers in wrong:
                response = http.get(f"{collector.base_url}{path}", headers=headers)
                # 401, or 429 once this address has used up its refused admin attempts.
                assert response.status_code in (401, 429), (path, headers, response.status_code)
                assert "totals" not in response.text and "by_type" not in response.text
                _count("admin_refusals")
        for token in (API_KEY, "", ADMIN_TOKEN + " "):
            login = http.post(f"{collector.base_url}/login", data={"token": token})
            assert login.status_code in (401, 429)
            assert "Set-Cookie" not in login.headers
            _count("admin_refusals")
        # The submission key cannot read through the submit path either.
        submit = http.get(f"{collector.base_url}/v1/submit", headers={"X-API-Key": API_KEY})
        assert submit.status_code == 405


# -- consent -------------------------------------------------------------------------------


def _proxy_to(
    collector: Collector, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> FaultProxy:
    return FaultProxy(server_context, client_context, [collector.address])


@pytest.mark.parametrize("mode", ["do_not_track", "consent_off"])
def test_no_consent_writes_nothing_and_sends_nothing(  # noqa: PLR0917
    mode: str,
    tmp_path: Path,
    cert_dir: Path,
    collectors: list[Collector],
    log_vault: LogVault,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In process and in a real client subprocess: no file, no connection."""
    collector = _collector(tmp_path, cert_dir, collectors, log_vault)
    data = tmp_path / "data"
    with _proxy_to(collector, server_context, client_context) as proxy:
        if mode == "do_not_track":
            monkeypatch.setenv("DO_NOT_TRACK", "1")
        config = TelemetryConfig(
            app="secapp",
            db_path=data / "telemetry.db",
            enabled=mode == "do_not_track",  # DO_NOT_TRACK wins over an explicit yes
            remote_enabled=mode == "do_not_track",
            endpoint=f"{proxy.url}/v1/submit",
            api_key=API_KEY,
            ca_bundle=str(cert_dir / "ca.pem"),
            submission_interval=0.1,
        )
        with TelemetryService(config) as service:
            for i in range(50):
                assert service.track("sec.consent", {"i": i}, duration_ms=1.0) is None
            service.submit_now()
            service.get_submission_stats()
            service.queue_stats()
            service.status()
            service.event_counts()
            service.counters()
        env = dict(os.environ)
        env.pop("DO_NOT_TRACK", None)
        if mode == "do_not_track":
            env["DO_NOT_TRACK"] = "1"
        if mode == "do_not_track":
            # The chaos client enables consent explicitly; DO_NOT_TRACK must still win.
            log = tmp_path / "client.log"
            result = subprocess.run(
                [
                    sys.executable,
                    str(APP),
                    "record",
                    "--db",
                    str(data / "telemetry.db"),
                    "--endpoint",
                    f"{proxy.url}/v1/submit",
                    "--api-key",
                    API_KEY,
                    "--ca",
                    str(cert_dir / "ca.pem"),
                    "--count",
                    "50",
                    "--linger",
                    "1",
                    "--log",
                    str(log),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
        assert not data.exists(), list(data.rglob("*"))
        assert proxy.connections == 0
    _count(f"{mode}_runs")


# -- logs ------------------------------------------------------------------------------------


def test_zz_no_secret_or_property_value_in_any_captured_log(
    log_vault: LogVault, figures: Figures
) -> None:
    """Every captured log line of the chaos session is free of keys, tokens and values."""
    secrets = {"submission key": API_KEY, "admin token": ADMIN_TOKEN, "property": PROPERTY_MARKER}
    lines = 0
    leaks: list[str] = []
    for source, text in log_vault.entries:
        for line in text.splitlines():
            lines += 1
            for what, secret in secrets.items():
                if secret in line:
                    leaks.append(f"{source}: {what} in {line[:200]!r}")
    figures.record(
        "security",
        command="TELEMETRY_CHAOS_FULL=1 .venv/bin/pytest tests/chaos -v",
        checks=dict(sorted(_CHECKS.items())),
        log_sources_checked=len(log_vault.entries),
        log_lines_checked=lines,
        secret_leaks=len(leaks),
    )
    assert lines > 0
    assert not leaks, "\n".join(leaks[:20])
