"""Every shell command in README.md and docs/*.md runs as written.

The ``sh`` code blocks are read from the documents and run in order, README first,
in one sandbox (a temporary working directory and home, so nothing touches the
developer's own telemetry data), each expected to exit 0. ``text`` blocks hold
synopses with ``[optional]`` parts and are not run.

Where a document names a deployment's own things, the test substitutes what a
reader would have on a test machine, and only these:

* ``/var/lib/telemetry/collector.db``, ``/etc/telemetry/*`` and ``/backup/`` become
  files in the sandbox (the certificate and key from ``dev-cert``, a keys file
  and an admin token file);
* ``--host 0.0.0.0`` becomes ``--host 127.0.0.1`` (tests listen on loopback only) and
  the documented ports (8787, 8443), and the default port of a command that
  names none (``TELEMETRY_COLLECTOR_PORT``), become one free port;
* ``https://collector.example`` (the "your collector" of the docs) becomes the
  collector the README's own commands started;
* a PostgreSQL URL becomes a throwaway database (the line is skipped, with a
  reason, when no server runs; under CI=true it must run).

A ``telemetry-collector serve`` line runs in the background until the next one,
a ``kill %1`` (the reader's shell job) or the end; it must come up and answer
``/ping`` (over https, or http when the document runs it without TLS). Commands that install
packages, build wheels or run suites and benchmarks are covered by their own
tests, named in :data:`COVERED_ELSEWHERE`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 60

#: Command prefixes not run here, and the test that covers each.
COVERED_ELSEWHERE = {
    "make demo": "tests/integration/test_collector_demo.py",
    "make test": "the whole suite is this command",
    "make bench": "tests/unit/test_bench_smoke.py",
    "make chaos": "tests/chaos (make chaos is its full-scale run)",
    "python3 -m venv": "tests/unit/test_packaging.py (installs into fresh environments)",
    ".venv/bin/pip install": "tests/unit/test_packaging.py",
    ".venv/bin/python -m build": "tests/unit/test_packaging.py (builds the wheel)",
    "pip install dist/": "tests/unit/test_packaging.py",
    "pip install ./examples/": "tests/integration/test_example_plugin.py",
    ".venv/bin/python -m bench": "tests/unit/test_bench_smoke.py",
}


def shell_commands(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, command) of every command in the ``sh`` blocks of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    in_sh = False
    pending = ""
    heredoc: str | None = None
    start = 0
    for number, line in enumerate(lines, 1):
        if heredoc is not None:  # a here-document's body belongs to its command
            pending += line + "\n"
            if line.strip() == heredoc:
                heredoc = None
                yield start, pending.rstrip("\n")
                pending = ""
            continue
        if line.strip().startswith("```"):
            in_sh = line.strip() == "```sh"
            continue
        if not in_sh:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        marker = re.search(r"<<-?\s*'?\"?(\w+)", command)
        if marker is not None:
            heredoc, pending = marker.group(1), command + "\n"
            continue
        if command and not command.startswith("#"):
            yield start, command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Sandbox:
    """The reader's machine: a working directory, a home, and what they started."""

    def __init__(self, root: Path) -> None:
        self.cwd = root / "work"
        self.cwd.mkdir()
        self.etc = root / "etc"
        self.etc.mkdir()
        (root / "backup").mkdir()
        self.root = root
        self.port = _free_port()
        self.server: subprocess.Popen[bytes] | None = None
        home = root / "home"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if "_TELEMETRY_" not in k and k not in {"DO_NOT_TRACK", "TELEMETRY_APP"}
        }
        self.env.update(
            HOME=str(home),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_CONFIG_HOME=str(home / ".config"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # A command that names no port gets the free one too (8787 may be taken).
            TELEMETRY_COLLECTOR_PORT=str(self.port),
        )
        self.database_url: str | None = None

    def prepare_etc(self) -> None:
        """The deployment files the operations guide names, made from ``dev-cert``."""
        from telemetry_core.collector.devcert import write_dev_certificates

        made = write_dev_certificates(self.etc / "tls")
        (self.etc / "fullchain.pem").write_bytes(made["server.pem"].read_bytes())
        (self.etc / "privkey.pem").write_bytes(made["server.key"].read_bytes())
        (self.etc / "api-keys").write_text("docs-key-0123456789\n", encoding="utf-8")
        (self.etc / "admin-token").write_text("docs-admin-token\n", encoding="utf-8")

    def substitute(self, command: str) -> str:
        url = f"https://127.0.0.1:{self.port}"
        replacements = [
            ("/var/lib/telemetry/", f"{self.root}/"),
            ("/etc/telemetry/", f"{self.etc}/"),
            ("/backup/", f"{self.root}/backup/"),
            ("--host 0.0.0.0", "--host 127.0.0.1"),
            ("--tls-cert … --tls-key …",
             f"--tls-cert {self.etc}/fullchain.pem --tls-key {self.etc}/privkey.pem"),
            ("https://collector.example", url),
            ("127.0.0.1:8787", f"127.0.0.1:{self.port}"),
        ]  # fmt: skip
        for old, new in replacements:
            command = command.replace(old, new)
        command = re.sub(r"--port (8787|8443)\b", f"--port {self.port}", command)
        if self.database_url is not None:
            command = re.sub(r"postgresql://[^'\" ]+", self.database_url, command)
        return command

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            input="y\n",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def serve(self, command: str) -> None:
        """Start a collector the document starts, and wait for its /ping."""
        self.stop()
        argv = shlex.split(command.rstrip("& "))
        self.server = subprocess.Popen(
            argv, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only "is it up": the client commands check TLS
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                err = self.server.stderr.read().decode() if self.server.stderr else ""
                raise AssertionError(f"collector exited: {command}\n{err[-2000:]}")
            for scheme in ("https", "http"):  # a documented collector may run without TLS
                try:
                    with urllib.request.urlopen(  # noqa: S310 - a fixed http(s) loopback URL
                        f"{scheme}://127.0.0.1:{self.port}/ping", context=context, timeout=2
                    ):
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"collector did not come up: {command}")

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        if server.stderr is not None:
            server.stderr.close()


def _covered_elsewhere(command: str) -> str | None:
    for prefix, where in COVERED_ELSEWHERE.items():
        if command.startswith(prefix):
            return where
    return None


def test_documents_have_shell_commands() -> None:
    found = {p.name for p in DOCUMENTS for _ in shell_commands(p)}
    assert {"README.md", "client.md", "troubleshooting.md", "operations.md"} <= found


def test_every_documented_command_runs_as_written(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    sandbox.prepare_etc()
    not_run: list[str] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(sandbox.stop)
        _run_documents(sandbox, cleanup, not_run)
    if not_run and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"not run (no PostgreSQL): {not_run}")


def _run_documents(sandbox: Sandbox, cleanup: contextlib.ExitStack, not_run: list[str]) -> None:
    """Run every document's commands in order (README first); fail on the first error."""
    order = [ROOT / "README.md", ROOT / "docs" / "client.md", ROOT / "docs" / "troubleshooting.md"]
    order += [p for p in DOCUMENTS if p not in order]
    for path in order:
        for number, written in shell_commands(path):
            where = f"{path.relative_to(ROOT)}:{number}: {written}"
            if _covered_elsewhere(written) is not None:
                continue
            if "postgresql://" in written and sandbox.database_url is None:
                from tests.integration import pg

                if pg.unreachable() is not None:
                    not_run.append(where)
                    continue
                sandbox.database_url = cleanup.enter_context(pg.fresh_database())
            command = sandbox.substitute(written)
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                sandbox.env[name] = shlex.split(value)[0]
                continue
            if command.startswith("telemetry-collector serve"):
                sandbox.serve(command)
                continue
            if command.strip() == "kill %1":  # the reader's shell job: the collector started above
                assert sandbox.server is not None, f"{where}: nothing was started"
                sandbox.stop()
                continue
            result = sandbox.run(command)
            assert result.returncode == 0, f"{where}\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr, where
