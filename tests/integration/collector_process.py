"""Run ``telemetry-collector serve`` as a real subprocess over HTTPS on 127.0.0.1.

The collector listens on port 0 and the helper reads the bound port from its
log, so parallel tests never race for a port. Stderr is drained by a thread for
the process's whole life (a full pipe would stall the server) and kept for
assertions and failure messages.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import trustme

__all__ = ["ADMIN_TOKEN", "API_KEY", "CollectorProcess"]

#: Submission key and admin token of test collectors (throwaway values).
API_KEY = "test-submit-key"
ADMIN_TOKEN = "test-admin-token-123"

_LISTENING = re.compile(r"running on https://127\.0\.0\.1:(\d+)")


def _command() -> list[str]:
    script = Path(sys.executable).with_name("telemetry-collector")
    if script.exists():
        return [str(script)]
    found = shutil.which("telemetry-collector")
    return [found] if found else [sys.executable, "-m", "telemetry_core.collector"]


class CollectorProcess:
    """One ``telemetry-collector serve`` process with a trustme certificate.

    ``store_args`` is ``["--db", path]`` or ``["--database-url", url]``. Use as a
    context manager; leaving it sends SIGTERM (graceful shutdown) and waits.
    """

    def __init__(
        self,
        ca: trustme.CA,
        workdir: Path,
        store_args: list[str],
        *,
        api_key: str = API_KEY,
        admin_token: str = ADMIN_TOKEN,
        extra_args: list[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.cert_path = workdir / "server.pem"
        self.key_path = workdir / "server.key"
        for i, pem in enumerate(cert.cert_chain_pems):
            pem.write_to_path(str(self.cert_path), append=i > 0)
        cert.private_key_pem.write_to_path(str(self.key_path))
        self.ca = ca
        self.api_key = api_key
        self.admin_token = admin_token
        self.stderr_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        env = dict(os.environ)
        # Secrets through the environment, as an operator would pass them.
        env["TELEMETRY_COLLECTOR_API_KEYS"] = api_key
        env["TELEMETRY_COLLECTOR_ADMIN_TOKEN"] = admin_token
        self.process = subprocess.Popen(
            [
                *_command(),
                "serve",
                *store_args,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-cert",
                str(self.cert_path),
                "--tls-key",
                str(self.key_path),
                *(extra_args or []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        try:
            self.port = self._wait_for_port(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.base_url = f"https://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"collector exited early:\n{self.log()}")
            match = _LISTENING.search(line)
            if match:
                return int(match.group(1))
        raise RuntimeError(f"collector did not start within {timeout} s:\n{self.log()}")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the test CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def log(self) -> str:
        """Everything the process wrote to stderr so far."""
        return "".join(self.stderr_lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a graceful exit (SIGKILL past ``timeout``); return the code
        (0 after a graceful shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode

    def __enter__(self) -> CollectorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
