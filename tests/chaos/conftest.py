"""Fixtures of the chaos suites: CA, killable collector processes, figures, the log vault.

``TELEMETRY_CHAOS_FULL=1`` (``make chaos``) selects the full scale; without it
the suites run scaled down for ``make test``. Figures of every suite are
collected in one JSON document: printed at the end of the session, written to
``docs/reliability.json`` in full mode, otherwise under the pytest tmp dir.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.integration.collector_process import start_collector

#: Full scale (``make chaos``) or the scaled-down CI run.
FULL = os.environ.get("TELEMETRY_CHAOS_FULL", "") == "1"
ROOT = Path(__file__).resolve().parents[2]
#: Secrets of the chaos suites; none of them may ever appear in a log line.
API_KEY = "chaos-submit-key-5f3a9c1e7d"
ADMIN_TOKEN = "chaos-admin-token-b8e2d4f6a0"
#: A marker put into property values; property values must never be logged.
PROPERTY_MARKER = "propval-7c1d93ab"


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
        self.starts += 1
        self.logs.append("")
        index = len(self.logs) - 1
        buf: list[str] = []

        def on_line(line: str) -> None:
            buf.append(line)
            self.logs[index] = "".join(buf)

        try:
            self.process, self._reader, self.port = start_collector(
                self.store_args,
                self.cert_path,
                self.key_path,
                api_key=API_KEY,
                admin_token=ADMIN_TOKEN,
                extra_args=self.extra_args,
                on_line=on_line,
                timeout=timeout,
                merge_stdout=True,
                name=self.name,
            )
        except RuntimeError:
            self.process = None
            self._reader = None
            raise

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
