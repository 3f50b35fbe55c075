"""``telemetry-collector dev-cert``: the files it writes serve TLS a client trusts."""

from __future__ import annotations

import signal
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from telemetry_core import TelemetryConfig, TelemetryService
from telemetry_core.collector.cli import main as collector_main
from telemetry_core.collector.devcert import DevCertError, write_dev_certificates
from tests.integration.collector_process import ADMIN_TOKEN, API_KEY, start_collector


def test_dev_cert_writes_a_ca_and_a_server_certificate_with_private_keys(tmp_path: Path) -> None:
    result = CliRunner().invoke(collector_main, ["dev-cert", "--out", str(tmp_path / "tls")])
    assert result.exit_code == 0, result.output
    assert "telemetry config set ca-bundle" in result.output
    for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
        assert (tmp_path / "tls" / name).is_file()
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / "tls" / key).stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "ca.key", "ca.pem", "server.key", "server.pem"
    ]  # fmt: skip


def test_dev_cert_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    first = write_dev_certificates(tmp_path)
    before = first["ca.pem"].read_bytes()
    with pytest.raises(DevCertError, match="--force"):
        write_dev_certificates(tmp_path)
    assert first["ca.pem"].read_bytes() == before
    write_dev_certificates(tmp_path, force=True)
    assert first["ca.pem"].read_bytes() != before


def test_a_client_trusting_the_dev_ca_delivers_to_a_collector_serving_its_certificate(
    tmp_path: Path,
) -> None:
    made = write_dev_certificates(tmp_path / "tls")
    lines: list[str] = []
    process, reader, port = start_collector(
        ["--db", str(tmp_path / "collector.db")],
        made["server.pem"],
        made["server.key"],
        api_key=API_KEY,
        admin_token=ADMIN_TOKEN,
        extra_args=[],
        on_line=lines.append,
        timeout=30,
    )
    try:
        # The server certificate verifies against the CA, for the loopback address.
        context = ssl.create_default_context(cafile=str(made["ca.pem"]))
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5),
            server_hostname="127.0.0.1",
        ) as tls:
            assert tls.version() is not None
        config = TelemetryConfig(
            app="devcert",
            db_path=tmp_path / "client.db",
            enabled=True,
            remote_enabled=True,
            endpoint=f"https://127.0.0.1:{port}",
            api_key=API_KEY,
            ca_bundle=str(made["ca.pem"]),
            do_not_track=False,
        )
        with TelemetryService(config, background=False) as service:
            service.track("command_executed", {"n": 1})
            stats = service.submit_now()
        assert stats.last_call is not None
        assert (stats.last_call.accepted, stats.last_call.failed) == (1, 0)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        reader.join(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
