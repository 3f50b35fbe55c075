"""Running the collector (``server.py``): what stops the start with a clear message."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from telemetry_core.collector.cli import main


def test_a_busy_metrics_port_stops_serve_with_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        args = ["serve", "--db", str(tmp_path / "c.db"), "--api-key", "k"]
        result = CliRunner().invoke(main, [*args, "--port", "0", "--metrics-port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
