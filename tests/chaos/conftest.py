"""Fixtures of the chaos suites: CA, killable collector processes, figures, the log vault.

``TELEMETRY_CHAOS_FULL=1`` (``make chaos``) selects the full scale; without it
the suites run scaled down for ``make test``. Figures of every suite are
collected in one JSON document: printed at the end of the session, written to
``docs/reliability.json`` in full mode, otherwise under the pytest tmp dir.
"""

from __future__ import annotations

import json
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

#: Full scale (``make chaos``) or the scaled-down CI run.
FULL = os.environ.get("TELEMETRY_CHAOS_FULL", "") == "1"
ROOT = Path(__file__).resolve().parents[2]
#: Secrets of the chaos suites; none of them may ever appear in a log line.
API_KEY = "chaos-submit-key-5f3a9c1e7d"
ADMIN_TOKEN = "chaos-admin-token-b8e2d4f6a0"
#: A marker put into property values; property values must never be logged.
PROPERTY_MARKER = "propval-7c1d93ab"

_LISTENING = re.compile(r"running on https://127\.0\.0\.1:(\d+)")


def collector_command() -> list[str]:
    """The installed ``telemetry-collector`` console script (or ``python -m``)."""
    script = Path(sys.executable).with_name("telemetry-collector")
    if script.exists():
        return [str(script)]
    found = shutil.which("telemetry-collector")
    return [found] if found else [sys.executable, "-m", "telemetry_core.collector"]


class LogVault:
    """Every log text captured during the chaos session, with where it came from."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def add(self, source: str, text: str) -> None:
        """Keep ``text`` (a log) captured from ``source``."""
        with self._lock:
            self.entries.append((source, text))


class Figures:
    """The figures of every suite: ``record(suite, name, value)``."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def record(self, suite: str, **values: Any) -> None:
        """Merge ``values`` into the figures of ``suite``."""
        self.data.setdefault(suite, {}).update(values)


class Collector:
    """A ``telemetry-collector serve`` subprocess over HTTPS that can be killed and restarted.

    Stderr is drained by a thread for the process's whole life and kept in
    :attr:`log_text` (across restarts) for assertions and the log vault.
    """

    def __init__(
        self,
        cert_dir: Path,
        store_args: list[str],
        *,
        extra_args: list[str] | None = None,
        vault: LogVault | None = None,
        name: str = "collector",
    ) -> None:
        self.cert_path = cert_dir / "server.pem"
        self.key_path = cert_dir / "server.key"
        self.store_args = store_args
        self.extra_args = extra_args or []
        self.vault = vault
        self.name = name
        self.logs: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.starts = 0
        self.kills = 0
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait for its port (bounded)."""
        env = dict(os.environ)
        env["TELEMETRY_COLLECTOR_API_KEYS"] = API_KEY
        env["TELEMETRY_COLLECTOR_ADMIN_TOKEN"] = ADMIN_TOKEN
        process = subprocess.Popen(
            [
                *collector_command(),
                "serve",
                *self.store_args,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-cert",
                str(self.cert_path),
                "--tls-key",
                str(self.key_path),
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.process = process
        self.starts += 1
        lines: queue.Queue[str | None] = queue.Queue()
        buf: list[str] = []
        self.logs.append("")
        index = len(self.logs) - 1

        def drain() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                buf.append(line)
                self.logs[index] = "".join(buf)
                lines.put(line)
            lines.put(None)

        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text}")
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                return
        self.kill()
        raise RuntimeError(f"{self.name} did not start within {timeout} s:\n{self.log_text}")

    @property
    def log_text(self) -> str:
        """Everything every run of this collector wrote."""
        return "".join(self.logs)

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``."""
        return ("127.0.0.1", self.port)

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the process in KiB, from /proc."""
        assert self.process is not None
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        values = dict(
            (line.split(":")[0], int(line.split()[1]))
            for line in text.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))
        )
        return values["VmRSS"], values["VmHWM"]

    def _reap(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed)."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.kills += 1
        self._reap()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, graceful; SIGKILL past ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self._reap()
        if self.vault is not None:
            self.vault.add(self.name, self.log_text)
        return self.process.returncode


@pytest.fixture(scope="session")
def chaos_ca() -> trustme.CA:
    """One throwaway CA for the session."""
    return trustme.CA()


@pytest.fixture(scope="session")
def cert_dir(chaos_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Server cert/key for 127.0.0.1 and the CA bundle (``ca.pem``) in one directory."""
    path = tmp_path_factory.mktemp("certs")
    cert = chaos_ca.issue_cert("127.0.0.1", "localhost")
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(path / "server.pem"), append=i > 0)
    cert.private_key_pem.write_to_path(str(path / "server.key"))
    chaos_ca.cert_pem.write_to_path(str(path / "ca.pem"))
    return path


@pytest.fixture(scope="session")
def server_context(chaos_ca: trustme.CA) -> ssl.SSLContext:
    """A server-side TLS context with a 127.0.0.1 certificate (for the fault proxy)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    chaos_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_context(chaos_ca: trustme.CA) -> ssl.SSLContext:
    """A client TLS context trusting only the chaos CA."""
    context = ssl.create_default_context()
    chaos_ca.configure_trust(context)
    return context


_VAULT = LogVault()
_FIGURES = Figures()


@pytest.fixture(scope="session")
def log_vault() -> LogVault:
    """The session's captured logs (checked for secrets by test_security)."""
    return _VAULT


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's figures (written at the end of the session)."""
    return _FIGURES


@pytest.fixture
def collectors(cert_dir: Path, log_vault: LogVault) -> Iterator[list[Collector]]:
    """A list to put :class:`Collector` objects in; all are stopped after the test."""
    made: list[Collector] = []
    yield made
    for collector in made:
        collector.stop()


@pytest.fixture
def vault_caplog(caplog: pytest.LogCaptureFixture, log_vault: LogVault) -> Iterator[Any]:
    """``caplog`` whose text goes to the log vault after the test."""
    yield caplog
    log_vault.add("client-caplog", caplog.text)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Print the figures and write them (``docs/reliability.json`` in full mode)."""
    if not _FIGURES.data:
        return
    document: dict[str, Any] = {"mode": "full" if FULL else "ci", "suites": _FIGURES.data}
    if FULL:
        target = ROOT / "docs" / "reliability.json"
        # A partial rerun (one suite) updates its own figures and keeps the others.
        if target.exists():
            previous = json.loads(target.read_text())
            document["suites"] = {**previous.get("suites", {}), **_FIGURES.data}
    else:
        base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        target = Path(base) / "chaos-figures.json"
    text = json.dumps(document, indent=2, sort_keys=True)
    target.write_text(text + "\n")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"chaos figures ({target}):")
        reporter.write_line(text)
