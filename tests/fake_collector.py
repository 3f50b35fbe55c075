"""A scriptable HTTPS collector for client tests (protocol v1, DESIGN §7).

:class:`FakeCollector` is a real threaded HTTPS server on ``127.0.0.1`` (port 0)
with a certificate from a throwaway trustme CA. It implements enough of the
protocol for the client to be tested end to end: ``POST /v1/submit`` (gzip,
``X-API-Key``, per-event decoding and validation, deduplication by event id,
the 413 rules), ``GET /ping`` and ``GET /v1/info``. Tests queue canned answers
for the next submits with :meth:`FakeCollector.script` (any status,
``Retry-After``, a delay, a reset connection, a truncated response).

In process::

    with FakeCollector(trustme.CA()) as collector:
        ...  # point the client at collector.submit_url, ca_bundle=collector.ca_path

From a subprocess (or to drive a client that runs in-process while the server
runs elsewhere)::

    python -m tests.fake_collector --port-file F [--events-file E] [--api-key K]

writes ``{"url", "submit_url", "ca_path", "pid"}`` as JSON to ``F`` once
listening, appends every distinct event as one JSON line to ``E``, and stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import msgspec

from telemetry_core.schema import (
    MAX_BODY_BYTES,
    MAX_COMPRESSED_BODY_BYTES,
    Event,
    EventError,
    Limits,
    ServerInfo,
    SubmitEnvelope,
    SubmitResponse,
    validate_event,
)

__all__ = ["FakeCollector", "Reply", "RequestRecord"]

#: How long close() waits for handler threads after shutting their sockets down.
SHUTDOWN_TIMEOUT: Final = 5.0
#: Idle keep-alive connections are dropped after this many seconds.
IDLE_TIMEOUT: Final = 10.0

_event_decoder = msgspec.json.Decoder(Event)
_envelope_decoder = msgspec.json.Decoder(SubmitEnvelope)


@attrs.frozen(kw_only=True)
class Reply:
    """A canned answer for one ``POST /v1/submit``.

    :param status: HTTP status to send.
    :param headers: extra response headers, e.g. ``{"Retry-After": "3"}``.
    :param body: the exact body to send; ``None`` sends the normal
        ``SubmitResponse`` for a 200 and a small JSON error otherwise.
    :param delay: seconds to wait before answering (interrupted by close()).
    :param action: ``"reset"`` closes the connection with a TCP RST instead of
        answering; ``"truncate"`` sends the headers and only half the body, then
        closes the connection.
    :param store: whether the batch is processed and stored before answering;
        ``None`` means "when status is 200 and the action is not a reset".
    """

    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes | None = None
    delay: float = 0.0
    action: Literal["reset", "truncate"] | None = None
    store: bool | None = None

    @property
    def stores(self) -> bool:
        """Whether this reply processes and stores the batch."""
        if self.store is not None:
            return self.store
        return self.status == 200 and self.action != "reset"


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request the server saw: ``headers`` has lowercase names; ``body_size``
    is the body as sent (compressed or not); ``status`` is what was answered
    (0 for a reset connection)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body_size: int
    status: int


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    collector: FakeCollector


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = IDLE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        """``/ping`` and ``/v1/info``."""
        self.server.collector._handle_get(self)

    def do_POST(self) -> None:
        """``/v1/submit``."""
        self.server.collector._handle_post(self)


class FakeCollector:
    """A real HTTPS collector on ``127.0.0.1`` for tests; thread-safe.

    :param ca: a ``trustme.CA`` that issues the server certificate (for
        ``127.0.0.1``, ``::1`` and ``localhost``); ``None`` serves plain HTTP.
    :param api_keys: accepted ``X-API-Key`` values; empty accepts any request.
    :param max_events: more events than this in one request gives 413.
    :param max_body_bytes: a decompressed body larger than this gives 413.
    :param max_compressed_body_bytes: a body as sent larger than this gives 413.
    :param port: port to listen on (0 picks a free one).
    :param on_event: called with every newly stored (distinct) event.
    """

    def __init__(
        self,
        ca: Any | None,
        *,
        api_keys: Iterable[str] = (),
        max_events: int | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_compressed_body_bytes: int = MAX_COMPRESSED_BODY_BYTES,
        port: int = 0,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.api_keys: set[str] = set(api_keys)
        self.max_events = max_events
        self.max_body_bytes = max_body_bytes
        self.max_compressed_body_bytes = max_compressed_body_bytes
        self.on_event = on_event
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._events: list[Event] = []
        self._seen: set[str] = set()
        self._requests: list[RequestRecord] = []
        self._script: deque[Reply] = deque()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        #: Events received again after they were stored (deduplicated).
        self.duplicates = 0
        #: TCP connections accepted so far (keep-alive reuses one).
        self.connections_accepted = 0
        self._tmpdir = Path(tempfile.mkdtemp(prefix="fake-collector-"))
        self._context: ssl.SSLContext | None = None
        self.ca_path: str | None = None
        if ca is not None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "::1", "localhost").configure_cert(self._context)
            ca_file = self._tmpdir / "ca.pem"
            ca.cert_pem.write_to_path(str(ca_file))
            self.ca_path = str(ca_file)
        self._server = _Server(("127.0.0.1", port), _Handler, bind_and_activate=True)
        self._server.collector = self
        self._server.process_request = self._process_request  # type: ignore[method-assign]
        self.port: int = self._server.server_address[1]
        scheme = "https" if self._context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.submit_url = f"{self.url}/v1/submit"
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-collector-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()

    # -- public API -----------------------------------------------------------

    def __enter__(self) -> FakeCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def events(self) -> list[Event]:
        """Distinct events stored so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._events)

    @property
    def event_ids(self) -> list[str]:
        """Ids of :attr:`events`, in arrival order."""
        with self._lock:
            return [e.id for e in self._events]

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request seen so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def submit_requests(self) -> list[RequestRecord]:
        """The ``POST /v1/submit`` requests seen so far."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/submit"]

    def script(self, *replies: Reply | int) -> None:
        """Queue canned answers for the next submits, in order (an int is a status).

        Once the script is used up the server answers normally again.
        """
        with self._lock:
            self._script.extend(Reply(status=r) if isinstance(r, int) else r for r in replies)

    def clear_script(self) -> None:
        """Drop the canned answers not used yet."""
        with self._lock:
            self._script.clear()

    def wait_for_events(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` distinct events arrived or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._events) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
            return True

    def close(self) -> None:
        """Stop serving, drop open connections and remove the CA file; bounded."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._serve_thread.join(max(0.0, deadline - time.monotonic()))
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    # -- connection handling ----------------------------------------------------

    def _process_request(self, request: socket.socket, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True
        )
        with self._lock:
            self._threads.add(thread)
            self.connections_accepted += 1
        thread.start()

    def _serve_connection(self, raw: socket.socket, client_address: Any) -> None:
        conn: socket.socket = raw
        try:
            raw.settimeout(IDLE_TIMEOUT)
            with self._lock:
                self._connections.add(raw)
            if self._closing.is_set():
                return
            if self._context is not None:
                # Handshake here, not in accept(): a stalled or untrusting client
                # must not block the listener.
                try:
                    conn = self._context.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):
                    return
                # wrap_socket detached ``raw``: close() must shut the TLS socket down.
                with self._lock:
                    self._connections.discard(raw)
                    self._connections.add(conn)
            with contextlib.suppress(OSError, ssl.SSLError):
                _Handler(conn, client_address, self._server)
        finally:
            with self._lock:
                self._connections.discard(raw)
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                conn.close()
            with contextlib.suppress(OSError):
                raw.close()

    # -- request handling -------------------------------------------------------

    def _log(self, handler: _Handler, body_size: int, status: int) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = RequestRecord(
            method=handler.command,
            path=handler.path,
            headers=headers,
            body_size=body_size,
            status=status,
        )
        with self._lock:
            self._requests.append(record)

    def _send(
        self,
        handler: _Handler,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        truncate: bool = False,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if truncate:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if truncate:
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.wfile.write(body)

    @staticmethod
    def _error(code: str, message: str) -> bytes:
        return json.dumps({"error": code, "message": message}).encode()

    def _handle_get(self, handler: _Handler) -> None:
        path = handler.path.split("?", 1)[0]
        if path == "/ping":
            status, body = 200, b'{"ok": true}'
        elif path == "/v1/info":
            limits = Limits(
                max_events_per_batch=self.max_events or Limits().max_events_per_batch,
                max_body_bytes=self.max_body_bytes,
                max_compressed_body_bytes=self.max_compressed_body_bytes,
            )
            status = 200
            body = msgspec.json.encode(
                ServerInfo(name="fake-collector", version="0", limits=limits)
            )
        else:
            status, body = 404, self._error("not_found", path)
        self._log(handler, 0, status)
        self._send(handler, status, body)

    def _read_body(self, handler: _Handler) -> bytes | None:
        length = handler.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return None
        size = int(length)
        if size > self.max_compressed_body_bytes:
            # Drain bounded so the client sees the 413 rather than a reset.
            remaining = size
            while remaining > 0:
                chunk = handler.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
            return b""
        return handler.rfile.read(size)

    def _handle_post(self, handler: _Handler) -> None:
        path = handler.path.split("?", 1)[0]
        body = self._read_body(handler)
        size = len(body) if body is not None else 0
        if path != "/v1/submit":
            self._log(handler, size, 404)
            self._send(handler, 404, self._error("not_found", path))
            return
        with self._lock:
            reply = self._script.popleft() if self._script else None
        if reply is not None and reply.delay > 0 and self._closing.wait(reply.delay):
            self._log(handler, size, 0)
            handler.close_connection = True
            return
        if reply is not None and reply.action == "reset":
            if reply.stores and body is not None:
                self._process(handler, body)
            self._log(handler, size, 0)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close() sends an RST instead of a FIN.
                handler.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            return
        if reply is not None and not reply.stores:
            status = reply.status
            answer = reply.body if reply.body is not None else self._error("scripted", str(status))
        else:
            if body is None:
                status, answer = 411, self._error("length_required", "Content-Length is required")
            else:
                status, answer = self._process(handler, body, declared=size)
            if reply is not None:
                status = reply.status
                answer = reply.body if reply.body is not None else answer
        self._log(handler, size, status)
        self._send(
            handler,
            status,
            answer,
            reply.headers if reply is not None else None,
            truncate=reply is not None and reply.action == "truncate",
        )

    def _process(self, handler: _Handler, body: bytes, declared: int = 0) -> tuple[int, bytes]:
        """Check, decode, validate and store one submission; return (status, body)."""
        if declared > self.max_compressed_body_bytes:
            return 413, self._error("too_large", "request body too large")
        if handler.headers.get_content_type() != "application/json":
            return 415, self._error("unsupported_media_type", "expected application/json")
        if self.api_keys and handler.headers.get("X-API-Key") not in self.api_keys:
            return 401, self._error("unauthorized", "missing or unknown API key")
        encoding = (handler.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, self.max_body_bytes + 1)
            except zlib.error:
                return 400, self._error("bad_encoding", "invalid gzip body")
            if len(body) > self.max_body_bytes or inflater.unconsumed_tail:
                return 413, self._error("too_large", "decompressed body too large")
        elif encoding != "identity":
            return 415, self._error("unsupported_encoding", encoding)
        if len(body) > self.max_body_bytes:
            return 413, self._error("too_large", "request body too large")
        try:
            envelope = _envelope_decoder.decode(body)
        except msgspec.DecodeError as exc:
            return 400, self._error("malformed", str(exc))
        if self.max_events is not None and len(envelope.events) > self.max_events:
            return 413, self._error("too_many_events", f"at most {self.max_events} events")
        accepted = duplicates = 0
        errors: list[EventError] = []
        fresh: list[Event] = []
        now_ms = int(time.time() * 1000)
        with self._lock:
            for index, raw in enumerate(envelope.events):
                try:
                    event = _event_decoder.decode(raw)
                except msgspec.DecodeError as exc:
                    errors.append(EventError(index=index, code="malformed", message=str(exc)))
                    continue
                problem = validate_event(event, now_ms=now_ms)
                if problem is not None:
                    errors.append(EventError(index=index, code=problem[0], message=problem[1]))
                    continue
                if event.id in self._seen:
                    duplicates += 1
                    continue
                self._seen.add(event.id)
                self._events.append(event)
                fresh.append(event)
                accepted += 1
            self.duplicates += duplicates
            self._changed.notify_all()
        if self.on_event is not None:
            for event in fresh:
                self.on_event(event)
        response = SubmitResponse(
            success=not errors,
            accepted=accepted,
            rejected=len(errors),
            duplicates=duplicates,
            errors=errors,
        )
        return 200, msgspec.json.encode(response)


def main(argv: list[str] | None = None) -> int:
    """Run a fake collector until SIGTERM/SIGINT (see the module docstring)."""
    import trustme

    parser = argparse.ArgumentParser(prog="python -m tests.fake_collector")
    parser.add_argument("--port-file", required=True, help="write url/ca_path JSON here")
    parser.add_argument("--events-file", help="append each distinct event as a JSON line")
    parser.add_argument("--api-key", action="append", default=[], help="accepted X-API-Key")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-events", type=int, default=None)
    parser.add_argument("--plain-http", action="store_true", help="serve http, not https")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    events_lock = threading.Lock()
    events_file = open(args.events_file, "ab") if args.events_file else None  # noqa: SIM115

    def on_event(event: Event) -> None:
        if events_file is not None:
            with events_lock:
                events_file.write(msgspec.json.encode(event) + b"\n")
                events_file.flush()

    collector = FakeCollector(
        None if args.plain_http else trustme.CA(),
        api_keys=args.api_key,
        max_events=args.max_events,
        port=args.port,
        on_event=on_event,
    )
    try:
        info = {
            "url": collector.url,
            "submit_url": collector.submit_url,
            "ca_path": collector.ca_path,
            "pid": os.getpid(),
        }
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(args.port_file)
        while not stop.wait(0.2):
            pass
    finally:
        collector.close()
        if events_file is not None:
            events_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
