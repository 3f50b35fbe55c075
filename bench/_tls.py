"""A throwaway CA (trustme) and the raw baseline's TLS server that discards bodies."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme


class Certs:
    """CA bundle and a server certificate for 127.0.0.1, written under ``folder``."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca = folder / "ca.pem"
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"
        ca.cert_pem.write_to_path(str(self.ca))
        cert.private_key_pem.write_to_path(str(self.key))
        with self.cert.open("wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())


class _Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _BODY = b'{"success":true,"accepted":0,"rejected":0,"duplicates":0,"errors":[]}'

    def do_POST(self) -> None:
        """Read the body, drop it, answer 200 with keep-alive."""
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        # One write for head and body: two small writes meet Nagle and delayed ACK (40 ms).
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(self._BODY)}\r\n\r\n"
        )
        self.wfile.write(head.encode() + self._BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log line."""


@contextlib.contextmanager
def discard_server(certs: Certs) -> Iterator[str]:
    """A stdlib HTTPS server on 127.0.0.1 that discards bodies; yields its base URL."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.cert), str(certs.key))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
