"""Protocol v1 over real HTTPS: ``telemetry-collector serve`` runs as a subprocess
on 127.0.0.1 with a throwaway trustme certificate, and every status code of
docs/protocol.md is provoked from outside."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from telemetry_core.schema import new_event_id

KEY = "protocol-test-key"
ADMIN = "protocol-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class CollectorProcess:
    """A ``telemetry-collector serve`` subprocess over HTTPS on a free loopback port."""

    def __init__(self, tmp: Path, ca: trustme.CA, *extra: str) -> None:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.cert_path = tmp / "server.pem"
        self.key_path = tmp / "server.key"
        self.ca_path = tmp / "ca.pem"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_path))
        cert.private_key_pem.write_to_path(str(self.key_path))
        ca.cert_pem.write_to_path(str(self.ca_path))
        self.db = tmp / "collector.db"
        self.port = free_port()
        self.log = (tmp / "collector.log").open("wb")
        env = {**os.environ, "TELEMETRY_COLLECTOR_API_KEYS": KEY,
               "TELEMETRY_COLLECTOR_ADMIN_TOKEN": ADMIN}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "telemetry_core.collector", "serve", "--db", str(self.db),
             "--port", str(self.port), "--tls-cert", str(self.cert_path),
             "--tls-key", str(self.key_path), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.context = ssl.create_default_context(cafile=str(self.ca_path))
        self.url = f"https://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log_text()}")
            try:
                if self.request("GET", "/ping")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"collector did not start: {self.log_text()}")

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def submit(self, payload: Any, **headers: str) -> tuple[int, dict[str, str], Any]:
        h = {"X-API-Key": KEY, "Content-Type": "application/json"}
        h.update(headers)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, hdrs, data = self.request("POST", "/v1/submit", body, h)
        return status, hdrs, json.loads(data)

    def stats(self, query: str = "") -> Any:
        status, _, data = self.request(
            "GET", f"/v1/stats{query}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert status == 200
        return json.loads(data)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.log.close()
        return code


@pytest.fixture(scope="module")
def module_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def collector(tmp_path: Path, module_ca: trustme.CA) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(tmp_path, module_ca, "--rate-limit", "60000", "--rate-burst", "1500")
    yield proc
    proc.stop()


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": int(time.time() * 1000),
        "install_id": "install-1",
        "app": "demo",
        "duration_ms": 10.0,
        "success": True,
    }
    base.update(fields)
    return base


def test_statuses_over_https(collector: CollectorProcess) -> None:
    good = event()
    status, _, body = collector.submit({"events": [good, event(type="BAD"), good]})
    assert status == 200
    assert (body["accepted"], body["rejected"], body["duplicates"]) == (1, 1, 1)
    assert body["errors"][0]["index"] == 1

    status, _, body = collector.submit({"events": [good]})  # a retry
    assert (status, body["accepted"], body["duplicates"]) == (200, 0, 1)

    status, _, body = collector.submit(b"{nope")
    assert (status, body["error"]["code"]) == (400, "malformed")
    status, _, body = collector.submit({"events": []}, **{"X-API-Key": "stolen"})
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    status, _, body = collector.submit(b"{}", **{"Content-Type": "text/csv"})
    assert status == 415
    status, _, body = collector.submit(b"{}", **{"Content-Encoding": "zstd"})
    assert status == 415
    status, _, data = collector.request("PUT", "/v1/submit", b"{}", {"X-API-Key": KEY})
    assert status == 405 and json.loads(data)["error"]["code"] == "method_not_allowed"
    status, _, body = collector.submit({"events": [event() for _ in range(1001)]})
    assert (status, body["error"]["code"]) == (413, "too_many_events")
    bomb = gzip.compress(b'{"events": [' + b" " * 50_000_000 + b"]}")
    status, _, body = collector.submit(bomb, **{"Content-Encoding": "gzip"})
    assert (status, body["error"]["code"]) == (413, "too_large")
    status, _, body = collector.submit(b" " * (1024 * 1024 + 1))
    assert status == 413

    assert collector.request("GET", "/ping")[0] == 200
    status, _, data = collector.request("GET", "/v1/info")
    info = json.loads(data)
    assert status == 200 and info["limits"]["max_events_per_batch"] == 1000
    assert collector.request("GET", "/v1/stats", headers={"X-API-Key": KEY})[0] == 401
    assert collector.request("GET", "/metrics")[0] == 401
    stats = collector.stats()
    assert stats["totals"]["count"] == 1
    assert stats["totals"]["duplicates"] == 2
    assert stats["totals"]["rejected_by_code"] == {"invalid_type": 1}


def test_rate_limit_429_with_integer_retry_after(collector: CollectorProcess) -> None:
    status, _, _ = collector.submit({"events": [event() for _ in range(1000)]})
    assert status == 200
    status, hdrs, body = collector.submit({"events": [event() for _ in range(1000)]})
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert int(hdrs["retry-after"]) >= 1


def test_concurrent_duplicate_batches_counted_once(collector: CollectorProcess) -> None:
    batch = {"events": [event(install_id=f"i{i % 7}") for i in range(200)]}
    results: list[Any] = []

    def send() -> None:
        results.append(collector.submit(batch)[2])

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r["accepted"] for r in results) == 200
    assert sum(r["duplicates"] for r in results) == 600
    stats = collector.stats()
    assert stats["totals"]["count"] == 200
    assert stats["totals"]["installs"] == 7


def _wait_for_queue_depth(collector: CollectorProcess, depth: int) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    needle = f"telemetry_collector_queue_depth {depth}.0".encode()
    deadline = time.monotonic() + 30
    for _ in range(1500):
        if needle in collector.request("GET", "/metrics", headers=auth)[2]:
            return
        assert time.monotonic() < deadline, "the batch never reached the store's queue"
        time.sleep(0.02)
    raise AssertionError("the batch never reached the store's queue")


def test_overload_503_with_retry_after(tmp_path: Path, module_ca: trustme.CA) -> None:
    collector = CollectorProcess(tmp_path, module_ca, "--max-pending-events", "1")
    blocker = sqlite3.connect(collector.db, isolation_level=None, timeout=5)
    results: list[int] = []
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the collector's writer now waits
        in_flight = threading.Thread(
            target=lambda: results.append(collector.submit({"events": [event()]})[0])
        )
        in_flight.start()
        _wait_for_queue_depth(collector, 1)
        status, hdrs, body = collector.submit({"events": [event()]})
        assert (status, body["error"]["code"]) == (503, "overloaded")
        assert hdrs["retry-after"] == "1"
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    in_flight.join(30)
    assert results == [200]
    assert collector.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_commits_in_flight_batch_and_exits_0(
    tmp_path: Path, module_ca: trustme.CA, sig: signal.Signals
) -> None:
    collector = CollectorProcess(tmp_path, module_ca)
    blocker = sqlite3.connect(collector.db, isolation_level=None, timeout=5)
    batch = {"events": [event(install_id=f"i{i}") for i in range(3)]}
    answers: list[tuple[int, Any]] = []
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # the batch is now in flight: its commit waits
        in_flight = threading.Thread(target=lambda: answers.append(collector.submit(batch)[::2]))
        in_flight.start()
        _wait_for_queue_depth(collector, 3)
        collector.proc.send_signal(sig)
        # The listener closes first: once new connections are refused, shutdown has begun
        # while the batch is still waiting for its commit.
        deadline = time.monotonic() + 30
        for _ in range(1500):
            try:
                with socket.create_connection(("127.0.0.1", collector.port), timeout=1):
                    pass
            except OSError:
                break
            assert time.monotonic() < deadline, "the collector kept accepting connections"
            time.sleep(0.02)
        assert collector.proc.poll() is None, collector.log_text()
        assert answers == []
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    in_flight.join(30)
    assert collector.stop() == 0, collector.log_text()
    assert answers == [(200, {"success": True, "accepted": 3, "rejected": 0,
                              "duplicates": 0, "errors": []})]  # fmt: skip
    assert "collector stopped" in collector.log_text()
    conn = sqlite3.connect(collector.db)
    try:
        stored = {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()
    assert stored == {e["id"] for e in batch["events"]}


def _open_tls(proc: CollectorProcess) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proc.port), timeout=20)
    return proc.context.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_response(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Read one response up to the server closing the connection (bounded by the timeout)."""
    data = b""
    for _ in range(10_000):
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, OSError):
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _stalled_upload(
    proc: CollectorProcess, body: bytes, extra: int, **headers: str
) -> ssl.SSLSocket:
    """Send headers declaring ``extra`` more bytes than ``body``, then ``body``, then stall."""
    sock = _open_tls(proc)
    h = {"Host": "127.0.0.1", "X-API-Key": KEY, "Content-Type": "application/json",
         "Content-Length": str(len(body) + extra), **headers}  # fmt: skip
    head = "POST /v1/submit HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def test_stalled_body_is_cut_off_and_in_flight_bytes_are_bounded(
    tmp_path: Path, module_ca: trustme.CA
) -> None:
    """Review finding 2 against a real server: uploads that inflate to ~3 MiB and then
    stall are admitted only while the in-flight budget (7 MiB) holds them; the next one
    gets 503 + Retry-After at once, and every stalled one gets 408 and is closed at the
    body deadline (1 s), after which a normal batch is accepted again."""
    proc = CollectorProcess(tmp_path, module_ca, "--body-timeout", "2", "--max-inflight-mb", "7")
    sockets: list[ssl.SSLSocket] = []
    try:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        part = compressor.compress(b'{"events":[' + b" " * (3 * 1024 * 1024))
        part += compressor.flush(zlib.Z_SYNC_FLUSH)
        gzip_header = {"Content-Encoding": "gzip"}
        sockets += [_stalled_upload(proc, part, 100, **gzip_header) for _ in range(3)]
        answers = [_read_response(sock) for sock in sockets]
        assert sorted(status for status, _, _ in answers) == [408, 408, 503], proc.log_text()
        for status, headers, body in answers:
            assert headers["connection"] == "close"
            code = json.loads(body)["error"]["code"]
            if status == 503:
                assert (headers["retry-after"], code) == ("1", "overloaded")
            else:
                assert code == "request_timeout"
        ok_status, _, ok = proc.submit({"events": [event()]})
        assert ok_status == 200 and ok["accepted"] == 1
        log = proc.log_text()
        assert "Traceback" not in log and "Exception in ASGI" not in log
    finally:
        for sock in sockets:
            sock.close()
        assert proc.stop() == 0


# --- round 2 finding 1: a 413 the client can read, however large its body ---


@pytest.mark.parametrize("mib", [6, 20])
def test_oversized_body_gets_a_readable_413_not_an_eof(
    collector: CollectorProcess, mib: int
) -> None:
    """A client that writes its whole body before reading (urllib3, as the https
    transport) must see the 413, not a reset or a TLS EOF: the collector reads
    and discards the rest of the body (within its drain bound) before answering."""
    import urllib3

    body = b"x" * (mib * 1024 * 1024)
    with urllib3.PoolManager(
        ssl_context=collector.context, retries=False, timeout=urllib3.Timeout(total=60)
    ) as pool:
        response = pool.request(
            "POST",
            f"{collector.url}/v1/submit",
            body=body,
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        assert response.status == 413
        assert response.headers["Connection"] == "close"
        assert response.json()["error"]["code"] == "too_large"
    assert "drained=yes" in collector.log_text()


def test_chunked_oversized_body_is_refused_mid_stream_and_answered(
    collector: CollectorProcess,
) -> None:
    """Without a Content-Length the 413 comes while the body streams; the rest is drained."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", collector.port, context=collector.context, timeout=60
    )
    try:
        conn.request(
            "POST",
            "/v1/submit",
            body=iter([b"x" * (256 * 1024)] * 24),  # 6 MiB
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert (response.status, answer["error"]["code"]) == (413, "too_large")
    assert "drained=yes" in collector.log_text()


def test_declared_body_past_the_drain_bound_is_answered_and_closed_unread(
    collector: CollectorProcess,
) -> None:
    """A declared length above the drain bound (32 MiB by default) is not read at
    all: the 413 is written and the connection closed without waiting for the body."""
    raw = socket.create_connection(("127.0.0.1", collector.port), timeout=30)
    with collector.context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(
            b"POST /v1/submit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nX-API-Key: " + KEY.encode() + b"\r\n"
            b"Content-Length: 41943040\r\n\r\n" + b"x" * 65536
        )
        received = b""
        for _ in range(1000):  # until the collector closes (bounded by the socket timeout)
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in received.lower()
    assert "drained=no" in collector.log_text()
