"""``make demo``: the whole system on one machine, in well under a minute.

Starts ``telemetry-collector serve`` on a free 127.0.0.1 port (SQLite in a
temporary directory; HTTPS with a throwaway certificate when ``trustme`` is
installed, plain HTTP on loopback otherwise), records a few hundred events of
several types through :class:`~telemetry_core.TelemetryService`, submits them,
prints the collector's aggregates, stops the collector and exits 0.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["main"]

_TYPES = {
    # type -> (median duration ms, failure rate)
    "command_executed": (40.0, 0.05),
    "file_opened": (4.0, 0.01),
    "build_finished": (900.0, 0.15),
    "plugin_loaded": (12.0, 0.0),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _tls_files(tmp: Path) -> tuple[Path, Path, Path] | None:
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = (tmp / "server.pem", tmp / "server.key", tmp / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(str(paths[0]))
    cert.private_key_pem.write_to_path(str(paths[1]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return paths


def _get(url: str, context: ssl.SSLContext | None, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - our own loopback URL
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _wait_ready(base: str, context: ssl.SSLContext | None, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the collector exited during start-up")
        try:
            _get(f"{base}/ping", context)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the collector did not start within 20 s")


def _simulate(config: Any, n_events: int, rng: random.Random) -> None:
    from telemetry_core import TelemetryService

    with TelemetryService(config) as telemetry:
        for i in range(n_events):
            etype = rng.choice(list(_TYPES))
            median, failure_rate = _TYPES[etype]
            telemetry.track(
                etype,
                {"command": rng.choice(["run", "build", "test", "lint"]), "step": i % 10},
                duration_ms=round(rng.lognormvariate(0, 0.6) * median, 3),
                success=rng.random() >= failure_rate,
            )
        submitted = telemetry.submit_now()
    print(
        f"client: recorded {n_events} events, sent {submitted.events_sent} in "
        f"{submitted.submissions} requests, accepted {submitted.events_accepted}, "
        f"duplicates {submitted.events_duplicate}, rejected {submitted.events_rejected}"
    )


def main() -> int:
    """Run the demo; return the process exit code."""
    from telemetry_core import TelemetryConfig
    from telemetry_core.collector.cli import format_stats_table

    started = time.monotonic()
    rng = random.Random(2024)
    api_key = "demo-" + secrets.token_hex(8)
    admin_token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="telemetry-demo-") as tmp_name:
        tmp = Path(tmp_name)
        port = _free_port()
        tls = _tls_files(tmp)
        scheme = "https" if tls else "http"
        base = f"{scheme}://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(tls[2])) if tls else None
        command = [sys.executable, "-m", "telemetry_core.collector", "serve",
                   "--db", str(tmp / "collector.db"), "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
        if tls:
            command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        env = {**os.environ, "TELEMETRY_COLLECTOR_API_KEYS": api_key,
               "TELEMETRY_COLLECTOR_ADMIN_TOKEN": admin_token}  # fmt: skip
        env.pop("DO_NOT_TRACK", None)
        print(f"collector: starting on {base} (SQLite in {tmp})")
        proc = subprocess.Popen(command, env=env)
        try:
            _wait_ready(base, context, proc)
            info = _get(f"{base}/v1/info", context)
            print(f"collector: {info['name']} {info['version']}, schema {info['schema_version']}")
            config = TelemetryConfig(
                app="demo-app",
                db_path=tmp / "client.db",
                enabled=True,
                remote_enabled=True,
                endpoint=f"{base}/v1/submit",
                api_key=api_key,
                ca_bundle=str(tls[2]) if tls else None,
                submission_batch_size=100,
                submission_rate_limit=60_000,
            )
            _simulate(config, 400, rng)
            stats = _get(f"{base}/v1/stats?bucket=day", context, admin_token)
            print()
            print(format_stats_table(stats))
            print()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        print(f"collector: stopped; demo took {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
