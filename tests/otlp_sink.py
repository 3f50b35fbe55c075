"""A scriptable OTLP/HTTP logs receiver for client tests.

:class:`OtlpSink` is a real threaded HTTPS server on ``127.0.0.1`` (port 0)
with a certificate from a throwaway trustme CA. It decodes every
``POST /v1/logs`` body with the official ``opentelemetry-proto`` classes (gzip
included) and keeps each log record with its resource and the request's
headers, as an OpenTelemetry Collector's receiver would see them. Tests queue
canned answers for the next requests with :meth:`OtlpSink.script`.
"""

from __future__ import annotations

import gzip
import http.server
import ssl
import tempfile
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trustme
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

__all__ = ["Answer", "OtlpSink", "ReceivedRecord"]


@attrs.frozen
class Answer:
    """A canned answer: status, headers and body."""

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""


@attrs.frozen
class ReceivedRecord:
    """One log record as received: the record, its resource attributes (as
    Python values) and the headers of its request."""

    record: Any
    resource: dict[str, Any]
    scope_name: str
    headers: dict[str, str]

    def attributes(self) -> dict[str, Any]:
        """The record's attributes as Python values (``None`` for an empty value)."""
        return {kv.key: _value(kv.value) for kv in self.record.attributes}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


class OtlpSink:
    """The receiver (see the module docstring); a context manager."""

    def __init__(self, ca: trustme.CA) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="otlp-sink-"))
        self.ca_path = str(self._dir / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        cert = ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        self.records: list[ReceivedRecord] = []
        self.requests = 0
        self._answers: deque[Answer] = deque()
        self._lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = sink._answer(body, headers)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}/v1/logs"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with ``answers``, in order (then 200 again)."""
        with self._lock:
            self._answers.extend(answers)

    def _answer(self, body: bytes, headers: dict[str, str]) -> Answer:
        with self._lock:
            self.requests += 1
            if self._answers:
                return self._answers.popleft()
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        received = []
        for resource_logs in request.resource_logs:
            resource = {kv.key: _value(kv.value) for kv in resource_logs.resource.attributes}
            for scope_logs in resource_logs.scope_logs:
                received.extend(
                    ReceivedRecord(record, resource, scope_logs.scope.name, headers)
                    for record in scope_logs.log_records
                )
        with self._lock:
            self.records.extend(received)
        response = logs_service_pb2.ExportLogsServiceResponse()
        return Answer(200, {"Content-Type": "application/x-protobuf"}, response.SerializeToString())

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> OtlpSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
