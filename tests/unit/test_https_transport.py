"""Unit tests of the ``https`` transport plugin that need no server."""

from __future__ import annotations

import email.utils
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import ConfigError
from telemetry_core.protocols import Transport
from telemetry_core_plugins import https_transport
from telemetry_core_plugins._https_client import USER_AGENT, parse_retry_after
from telemetry_core_plugins.https_transport import HttpsTransport

NOW = 1_800_000_000.0
KEY = "tc_secret_0123456789abcdef"


def config(tmp_path: Path, **changes: object) -> TelemetryConfig:
    values: dict[str, object] = {"endpoint": "https://collector.example/v1/submit", "api_key": KEY}
    values.update(changes)
    return TelemetryConfig(app="demo", db_path=tmp_path / "t.db", **values)  # type: ignore[arg-type]


def test_is_a_transport(tmp_path: Path) -> None:
    assert isinstance(HttpsTransport(config(tmp_path)), Transport)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("99999999", 3600.0),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        (email.utils.formatdate(NOW + 10**6, usegmt=True), 3600.0),
        (None, None),
        ("", None),
        ("-5", None),
        ("soon", None),
        ("1e3", None),
        ("١٢", None),  # non-ASCII digits are not delta-seconds
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW, maximum=3600.0) == expected


def test_user_agent_carries_the_version() -> None:
    from telemetry_core import __version__

    assert f"telemetry-core/{__version__}" == USER_AGENT


@pytest.mark.parametrize(
    "endpoint",
    [
        None,
        "",
        "ftp://collector.example/v1/submit",
        "http://collector.example/v1/submit",
        # Only config.validate_endpoint (the shared check) refuses credentials.
        "https://user:pw@collector.example/v1/submit",
        "https://collector.example:99999/v1/submit",
    ],
)
def test_rejects_bad_endpoints(tmp_path: Path, endpoint: str | None) -> None:
    cfg = config(tmp_path, endpoint=None)
    # Bypass the config's own validation: the transport re-checks on its own.
    object.__setattr__(cfg, "endpoint", endpoint)
    with pytest.raises(ConfigError) as info:
        HttpsTransport(cfg)
    assert info.value.setting == "endpoint"


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:8080/v1/submit", "http://localhost/v1/submit", "http://[::1]:9/v1/submit"],
)
def test_plain_http_allowed_to_loopback(tmp_path: Path, endpoint: str) -> None:
    assert HttpsTransport(config(tmp_path, endpoint=endpoint)).endpoint == endpoint


def test_repr_hides_the_api_key(tmp_path: Path) -> None:
    transport = HttpsTransport(config(tmp_path))
    assert KEY not in repr(transport)
    assert KEY not in repr(transport._get_client())
    assert "collector.example" in repr(transport)


def test_ping_never_raises(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens (connection refused), nothing leaves the host.
    transport = HttpsTransport(config(tmp_path, endpoint="https://127.0.0.1:9/v1/submit"))
    assert transport.ping() is False
    transport.close()


def test_ping_failures_log_the_exception_type_but_never_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = HttpsTransport(config(tmp_path, endpoint="https://127.0.0.1:9/v1/submit"))
    with caplog.at_level(logging.DEBUG, logger="telemetry_core"):
        assert transport.ping() is False  # refused, inside the client

        def broken() -> object:
            raise RuntimeError(f"cannot build a client for {KEY}")

        transport._get_client = broken  # type: ignore[method-assign]
        assert transport.ping() is False  # raised before the client
    transport.close()
    messages = [record.getMessage() for record in caplog.records]
    assert any("GET /ping failed" in m for m in messages)
    assert "telemetry-core: https ping failed: RuntimeError" in messages
    assert all(KEY not in m for m in messages)


def test_close_before_use_is_harmless(tmp_path: Path) -> None:
    HttpsTransport(config(tmp_path)).close()


def test_hook_make_transport(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    made = https_transport.telemetry_make_transport(name="https", config=cfg)
    assert isinstance(made, HttpsTransport)
    assert https_transport.telemetry_make_transport(name="file-drop", config=cfg) is None


def test_hook_list_providers() -> None:
    (info,) = https_transport.telemetry_list_providers()
    assert (info.kind, info.name) == ("transport", "https")


def test_importing_does_not_import_urllib3() -> None:
    code = (
        "import sys\n"
        "import telemetry_core, telemetry_core_plugins.https_transport\n"
        "import telemetry_core_plugins.exponential_jitter, telemetry_core_plugins.token_bucket\n"
        "assert 'urllib3' not in sys.modules, 'urllib3 imported at import time'\n"
        "from telemetry_core_plugins.https_transport import HttpsTransport\n"
        "from telemetry_core.config import TelemetryConfig\n"
        "t = HttpsTransport(TelemetryConfig(app='demo', db_path='/nonexistent/t.db',\n"
        "                   endpoint='https://127.0.0.1:9/v1/submit'))\n"
        "assert 'urllib3' not in sys.modules, 'urllib3 imported by the constructor'\n"
        "t.ping()\n"
        "assert 'urllib3' in sys.modules, 'first use imports urllib3'\n"
        "t.close()\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_refused_connection_is_not_reported_as_a_timeout(tmp_path: Path) -> None:
    # urllib3's NewConnectionError derives from ConnectTimeoutError; the message
    # users see in `telemetry submit` and last_error must still say what happened.
    import socket

    from telemetry_core.errors import TransportError
    from telemetry_core.schema import Event, new_event_id

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = HttpsTransport(config(tmp_path, endpoint=f"https://127.0.0.1:{port}/v1/submit"))
    event = Event(id=new_event_id(), type="refused", timestamp=1, install_id="i", app="a")
    try:
        with pytest.raises(TransportError) as info:
            transport.submit_batch([event])
    finally:
        transport.close()
    assert info.value.retryable
    assert "timed out" not in str(info.value)
    assert "cannot connect" in str(info.value)


def test_without_a_ca_bundle_the_system_ca_directory_is_read_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    from telemetry_core_plugins import _https_client

    hashed = tmp_path / "certs"
    hashed.mkdir()
    (hashed / "1a2b3c4d.0").write_text("not parsed until a handshake needs it\n")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "bundle.pem").write_text("")

    def paths(capath: Path) -> ssl.DefaultVerifyPaths:
        return ssl.DefaultVerifyPaths(
            "/nonexistent/cert.pem", str(capath), "SSL_CERT_FILE", "/x", "SSL_CERT_DIR", "/y"
        )

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths(hashed))
    assert _https_client._hashed_ca_dir() == str(hashed)
    context = _https_client._ssl_context(None)
    # Nothing parsed up front; certificates are verified, host names checked.
    assert context.cert_store_stats()["x509"] == 0
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    # A directory without hashed names, or a CA file named by the environment:
    # OpenSSL's own defaults (the whole bundle).
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths(plain))
    assert _https_client._hashed_ca_dir() is None
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths(hashed))
    monkeypatch.setenv("SSL_CERT_FILE", str(plain / "bundle.pem"))
    assert _https_client._hashed_ca_dir() is None


def test_release_idle_after_use_drops_the_pool(tmp_path: Path) -> None:
    transport = HttpsTransport(config(tmp_path, endpoint="https://127.0.0.1:9/v1/submit"))
    transport.release_idle()  # never used: nothing to release
    assert transport._client is None
    assert transport.ping() is False  # refused; the client and its pool now exist
    client = transport._client
    assert client is not None and client._pool is not None
    transport.release_idle()
    assert client._pool is None
