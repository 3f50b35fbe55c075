"""A fault-injecting HTTPS proxy for the chaos suites (loopback only).

:class:`FaultProxy` listens on 127.0.0.1, terminates the client's TLS with a
trustme certificate, reads one HTTP/1.1 request at a time and, for each
exchange, draws a fault from a seeded :class:`random.Random`:

``reset``      close the connection with a TCP RST before forwarding anything;
``hang``       say nothing for ``hang_seconds`` (past the client's timeout), then close;
``status``     answer 500, 502, 503 or 429 itself, with ``Retry-After``;
``truncate``   forward, then send only part of the collector's answer and close;
``ack_lost``   forward (the collector stores the batch), then drop the answer (RST).

:meth:`FaultProxy.set_outage` overrides the draws for a scripted outage: every
exchange is answered with one status (with or without ``Retry-After``), or every
connection is refused (reset at once), until the outage is lifted.

Everything else is forwarded untouched to one of the upstream collectors
(round robin). When no upstream answers (a collector was killed), the proxy
answers 502 like any reverse proxy and counts ``upstream_down``. Every exchange
is counted by outcome in :attr:`FaultProxy.counts`, for the figures.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["FAULT_KINDS", "FaultProxy", "FaultRates"]

#: The faults the proxy can inject, in the order they are drawn.
FAULT_KINDS: Final = ("reset", "hang", "status", "truncate", "ack_lost")
_STATUSES: Final = (500, 502, 503, 429)
_MAX_HEADER_BYTES: Final = 64 * 1024
_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)


class FaultRates(dict[str, float]):
    """Probability of each fault kind per exchange (missing kinds are 0)."""

    @classmethod
    def uniform(cls, total: float) -> FaultRates:
        """``total`` probability of a fault, split evenly over every kind."""
        return cls({kind: total / len(FAULT_KINDS) for kind in FAULT_KINDS})

    @property
    def total(self) -> float:
        """Probability that an exchange is faulty."""
        return sum(self.values())


def _rst_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Request:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, _ = [*lines[0].split(" ", 2), "", ""][:3]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers.append((name.strip(), value.strip()))
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def _read_request(conn: ssl.SSLSocket, buffer: bytearray) -> _Request | None:
    """One request from ``conn`` (``buffer`` keeps pipelined leftovers); None at EOF."""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > _MAX_HEADER_BYTES:
            return None
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    head = bytes(buffer[:end])
    del buffer[: end + 4]
    request = _Request(head, b"")
    length = int(request.header("content-length") or "0")
    if length > _MAX_BODY_BYTES:
        return None
    while len(buffer) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    request.body = bytes(buffer[:length])
    del buffer[:length]
    return request


class FaultProxy:
    """A TLS-terminating, fault-injecting proxy in front of one or more collectors.

    :param server_context: the TLS context presented to clients (a trustme cert).
    :param upstream_context: the context used to reach the collectors.
    :param upstreams: ``(host, port)`` of each collector; replace with
        :meth:`set_upstreams` after a restart.
    :param rates: fault probabilities per exchange.
    :param seed: seeds the fault draws.
    :param hang_seconds: how long a ``hang`` lasts (keep it past the client's
        timeout; it bounds the fault).
    :param retry_after: the ``Retry-After`` value of injected 429/503/502/500.
    """

    def __init__(
        self,
        server_context: ssl.SSLContext,
        upstream_context: ssl.SSLContext,
        upstreams: Sequence[tuple[str, int]],
        *,
        rates: Mapping[str, float] | None = None,
        seed: int = 0,
        hang_seconds: float = 2.0,
        retry_after: str = "1",
        upstream_timeout: float = 30.0,
    ) -> None:
        self._server_context = server_context
        self._upstream_context = upstream_context
        self._upstreams = list(upstreams)
        self._rates = FaultRates(rates or {})
        self._rng = random.Random(seed)
        self._outage: tuple[int | str | None, str | None] = (None, None)
        self._lock = threading.Lock()
        self._next = 0
        self.hang_seconds = hang_seconds
        self.retry_after = retry_after
        self.upstream_timeout = upstream_timeout
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._acceptor.start()

    # -- control -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self.port}"

    def set_rates(self, rates: Mapping[str, float]) -> None:
        """Change the fault probabilities (e.g. to 0 for the final drain)."""
        with self._lock:
            self._rates = FaultRates(rates)

    def set_outage(self, status: int | str | None, *, retry_after: str | None = None) -> None:
        """Answer every exchange with ``status`` (an int), reset every connection
        (``"refuse"``), or lift the outage (None)."""
        with self._lock:
            self._outage = (status, retry_after)

    def set_upstreams(self, upstreams: Sequence[tuple[str, int]]) -> None:
        """Point the proxy at restarted collectors."""
        with self._lock:
            self._upstreams = list(upstreams)

    def faulty(self) -> int:
        """Exchanges that got an injected fault."""
        with self._lock:
            return sum(self.counts[k] for k in FAULT_KINDS)

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters (``exchanges``, each fault kind, ``forwarded``...)."""
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        """Stop accepting, close every connection, join the threads (bounded)."""
        self._stopping.set()
        self._acceptor.join(timeout=5)
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            _rst_close(sock)
        for thread in self._threads:
            thread.join(timeout=self.hang_seconds + 5)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- serving -------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.add(raw)
                self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _draw(self) -> tuple[str | None, tuple[str, int] | None, int, float]:
        with self._lock:
            self.counts["exchanges"] += 1
            roll = self._rng.random()
            fault = None
            edge = 0.0
            for kind in FAULT_KINDS:
                edge += self._rates.get(kind, 0.0)
                if roll < edge:
                    fault = kind
                    break
            upstream = None
            if self._upstreams:
                upstream = self._upstreams[self._next % len(self._upstreams)]
                self._next += 1
            if fault is not None:
                self.counts[fault] += 1
            status = self._rng.choice(_STATUSES)
            if fault == "status":
                self.counts[f"status_{status}"] += 1
            return fault, upstream, status, self._rng.random()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _serve(self, raw: socket.socket) -> None:
        conn: ssl.SSLSocket | None = None
        if self._outage[0] == "refuse":
            self._count("outage_refused")
            with self._lock:
                self._sockets.discard(raw)
            _rst_close(raw)
            return
        try:
            raw.settimeout(30)
            conn = self._server_context.wrap_socket(raw, server_side=True)
            buffer = bytearray()
            while not self._stopping.is_set():
                request = _read_request(conn, buffer)
                if request is None:
                    return
                if not self._exchange(conn, request):
                    return
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._sockets.discard(raw)
            _rst_close(conn if conn is not None else raw)

    def _exchange(self, conn: ssl.SSLSocket, request: _Request) -> bool:
        """Handle one exchange; return False when the connection must close."""
        outage, outage_retry_after = self._outage
        if outage == "refuse":
            self._count("outage_refused")
            return False
        if isinstance(outage, int):
            self._count(f"outage_{outage}")
            body = b'{"error": {"code": "outage", "message": "scripted outage"}}'
            extra = f"Retry-After: {outage_retry_after}\r\n" if outage_retry_after else ""
            conn.sendall(
                f"HTTP/1.1 {outage} Outage\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            return False
        fault, upstream, status, fraction = self._draw()
        if fault == "reset":
            return False
        if fault == "hang":
            self._stopping.wait(self.hang_seconds)
            return False
        if fault == "status":
            body = b'{"error": {"code": "injected", "message": "fault injected by the proxy"}}'
            conn.sendall(
                f"HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\n"
                f"Retry-After: {self.retry_after}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            return False
        answer = self._forward(request, upstream)
        if answer is None:
            self._count("upstream_down")
            body = b'{"error": {"code": "bad_gateway", "message": "no collector answered"}}'
            conn.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
                b"Retry-After: " + self.retry_after.encode() + b"\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            return False
        if fault == "ack_lost":
            return False
        if fault == "truncate":
            cut = max(1, int(len(answer) * fraction))
            conn.sendall(answer[:cut])
            return False
        self._count("forwarded")
        conn.sendall(answer)
        return True

    def _forward(self, request: _Request, upstream: tuple[str, int] | None) -> bytes | None:
        """Send ``request`` to ``upstream``; return the raw answer, or None when it is down."""
        if upstream is None:
            return None
        host, port = upstream
        client = http.client.HTTPSConnection(
            host, port, context=self._upstream_context, timeout=self.upstream_timeout
        )
        try:
            headers = {k: v for k, v in request.headers if k.lower() not in _HOP_BY_HOP}
            headers.pop("Host", None)
            client.request(request.method, request.target, body=request.body, headers=headers)
            response = client.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            client.close()
        lines = [f"HTTP/1.1 {response.status} {response.reason}"]
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(data)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
