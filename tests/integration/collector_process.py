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
from collections.abc import Callable
from pathlib import Path

import trustme

__all__ = ["ADMIN_TOKEN", "API_KEY", "CollectorProcess", "collector_command", "start_collector"]

#: Submission key and admin token of test collectors (throwaway values).
API_KEY = "test-submit-key"
ADMIN_TOKEN = "test-admin-token-123"

_LISTENING = re.compile(r"running on https://127\.0\.0\.1:(\d+)")


def collector_command() -> list[str]:
    """The installed ``telemetry-collector`` console script (or ``python -m``)."""
    script = Path(sys.executable).with_name("telemetry-collector")
    if script.exists():
        return [str(script)]
    found = shutil.which("telemetry-collector")
    return [found] if found else [sys.executable, "-m", "telemetry_core.collector"]


def start_collector(
    store_args: list[str],
    cert_path: Path,
    key_path: Path,
    *,
    api_key: str,
    admin_token: str,
    extra_args: list[str],
    on_line: Callable[[str], None],
    timeout: float,
    merge_stdout: bool = False,
    name: str = "collector",
) -> tuple[subprocess.Popen[str], threading.Thread, int]:
    """Spawn ``telemetry-collector serve`` on 127.0.0.1 port 0 and wait for its port.

    Secrets go through the environment, as an operator would pass them. A
    thread drains stderr (with stdout too when ``merge_stdout``) for the
    process's whole life, handing each line to ``on_line``. Returns the
    process, the draining thread and the bound port; on failure the process is
    killed, the thread joined and RuntimeError raised with the output so far.
    """
    env = dict(os.environ)
    env["TELEMETRY_COLLECTOR_API_KEYS"] = api_key
    env["TELEMETRY_COLLECTOR_ADMIN_TOKEN"] = admin_token
    process = subprocess.Popen(
        [
            *collector_command(),
            "serve",
            *store_args,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-cert",
            str(cert_path),
            "--tls-key",
            str(key_path),
            *extra_args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if merge_stdout else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE,
        text=True,
        env=env,
    )
    stream = process.stdout if merge_stdout else process.stderr
    assert stream is not None
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def drain() -> None:
        for line in stream:
            seen.append(line)
            on_line(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    problem = f"{name} did not start within {timeout} s"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            problem = f"{name} exited early"
            break
        match = _LISTENING.search(line)
        if match:
            return process, reader, int(match.group(1))
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    reader.join(timeout=10)
    stream.close()
    raise RuntimeError(f"{problem}:\n{''.join(seen)}")


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
        self.process, self._reader, self.port = start_collector(
            store_args,
            self.cert_path,
            self.key_path,
            api_key=api_key,
            admin_token=admin_token,
            extra_args=extra_args or [],
            on_line=self.stderr_lines.append,
            timeout=start_timeout,
        )
        self.base_url = f"https://127.0.0.1:{self.port}"

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
