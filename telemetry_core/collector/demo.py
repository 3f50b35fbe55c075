"""``make demo`` (``python -m telemetry_core.collector.demo``): the whole system on
one machine, in well under a minute.

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
    """A throwaway CA and server certificate: ``dev-cert`` (openssl), else trustme."""
    from telemetry_core.collector.devcert import DevCertError, write_dev_certificates

    try:
        made = write_dev_certificates(tmp / "tls", ("127.0.0.1",))
        return made["server.pem"], made["server.key"], made["ca.pem"]
    except DevCertError:
        pass
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


def _wait_ready(base: str, context: ssl.SSLContext | None, proc: subprocess.Popen[bytes]) -> bool:
    """True once ``/ping`` answers; False when the collector exits or 20 s pass."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            _get(f"{base}/ping", context)
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _simulate(config: Any, n_events: int, rng: random.Random) -> None:
    from telemetry_core import TelemetryService

    recorded = 0
    with TelemetryService(config) as telemetry:
        for i in range(n_events):
            etype = rng.choice(list(_TYPES))
            median, failure_rate = _TYPES[etype]
            event_id = telemetry.track(
                etype,
                {"command": rng.choice(["run", "build", "test", "lint"]), "step": i % 10},
                duration_ms=round(rng.lognormvariate(0, 0.6) * median, 3),
                success=rng.random() >= failure_rate,
            )
            recorded += event_id is not None
        submitted = telemetry.submit_now()
    print(
        f"client: recorded {recorded} of {n_events} events, sent {submitted.events_sent} in "
        f"{submitted.submissions} requests, accepted {submitted.events_accepted}, "
        f"duplicates {submitted.events_duplicate}, rejected {submitted.events_rejected}"
    )


def _start_collector(
    tmp: Path, tls: tuple[Path, Path, Path] | None, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, ssl.SSLContext | None]:
    """Start the collector on a free loopback port (a few tries: the port is
    picked before the collector binds it, and another process may take it first)."""
    scheme = "https" if tls else "http"
    context = ssl.create_default_context(cafile=str(tls[2])) if tls else None
    for _attempt in range(3):
        port = _free_port()
        base = f"{scheme}://127.0.0.1:{port}"
        command = [sys.executable, "-m", "telemetry_core.collector", "serve",
                   "--db", str(tmp / "collector.db"), "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"]  # fmt: skip
        if tls:
            command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        print(f"collector: starting on {base} (SQLite in {tmp})")
        proc = subprocess.Popen(command, env=env)
        if _wait_ready(base, context, proc):
            return proc, base, context
        _stop(proc)
    raise SystemExit("the collector did not start (see its messages above)")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then wait for the graceful shutdown (SIGKILL past 30 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def main() -> int:
    """Run the demo; return the process exit code."""
    from telemetry_core import TelemetryConfig
    from telemetry_core.collector.cli import format_stats_table
    from telemetry_core.config import do_not_track

    started = time.monotonic()
    rng = random.Random(2024)
    api_key = "demo-" + secrets.token_hex(8)
    admin_token = secrets.token_hex(16)
    if do_not_track():
        print("DO_NOT_TRACK is set: the simulated app records nothing, as it must.")
        print("Run `DO_NOT_TRACK= make demo` to see events flow.")
    # The collector gets only what the demo chose: an operator's collector settings in
    # the environment (a PostgreSQL URL, other keys) must not leak into it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_COLLECTOR_")}
    env["TELEMETRY_COLLECTOR_API_KEYS"] = api_key
    env["TELEMETRY_COLLECTOR_ADMIN_TOKEN"] = admin_token
    with tempfile.TemporaryDirectory(prefix="telemetry-demo-") as tmp_name:
        tmp = Path(tmp_name)
        tls = _tls_files(tmp)
        if tls is None:
            print("trustme is not installed: plain HTTP, which the client allows on loopback only")
        proc, base, context = _start_collector(tmp, tls, env)
        try:
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
            code = _stop(proc)
        print(f"collector: stopped (exit status {code}); demo took "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
