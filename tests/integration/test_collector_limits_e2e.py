"""The collector's limits seen from a client, end to end (DESIGN §4-§7): a batch over
the body limit is split by the client and delivered, not lost; past the connection
cap the collector answers 503 with ``Retry-After``. Both drive a real
``telemetry-collector serve`` subprocess over HTTPS on 127.0.0.1 (trustme CA).
"""

from __future__ import annotations

import http.client
import random
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from telemetry_core import TelemetryConfig, TelemetryService
from tests.integration.collector_process import API_KEY, CollectorProcess

_ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;!-"


@pytest.mark.slow
def test_batch_over_the_body_limit_is_split_not_lost(tmp_path: Path) -> None:
    """1,000 valid events of ~14 KB each (every one under max_event_bytes) in one
    batch of the allowed size 1,000 make a gzip body of several MiB. Before the
    fix the collector answered 413 and closed before reading the body, so the
    client saw ``TLS failure: EOF occurred in violation of protocol``, a network
    error, never split, and the events died after max_retries. Now the client
    refuses such a batch locally (``too_large``) and the worker splits it:
    every event is accepted."""
    rng = random.Random(1)
    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with CollectorProcess(ca, tmp_path / "collector", ["--db", str(tmp_path / "c.db")]) as server:
        config = TelemetryConfig(
            app="review",
            db_path=tmp_path / "client.db",
            enabled=True,
            remote_enabled=True,
            endpoint=f"{server.base_url}/v1/submit",
            api_key=API_KEY,
            ca_bundle=str(ca_path),
            submission_batch_size=1000,
            submission_rate_limit=10**9,
            max_retries=0,
            do_not_track=False,
        )
        with TelemetryService(config, background=False) as telemetry:
            for _ in range(1000):
                props = {f"p{j}": "".join(rng.choices(_ALPHABET, k=1000)) for j in range(14)}
                assert telemetry.track("big_event", props) is not None
            stats = telemetry.submit_now()
            queue = telemetry.queue_stats()
    assert (stats.events_accepted, queue.dead, queue.pending) == (1000, 0, 0), stats.last_error


def test_connection_cap_503_carries_retry_after(tmp_path: Path) -> None:
    """Past ``--max-connections`` uvicorn answered a bare ``503 Service
    Unavailable`` (text/plain, no Retry-After). DESIGN §7: 503 overloaded +
    ``Retry-After``, which the app's own cap now sends."""
    ca = trustme.CA()
    extra = ["--max-connections", "1"]
    with CollectorProcess(
        ca, tmp_path / "collector", ["--db", str(tmp_path / "c.db")], extra_args=extra
    ) as server:
        context = server.ssl_context()
        held: list[ssl.SSLSocket] = []
        try:
            for _ in range(2):
                raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                held.append(sock)
                sock.sendall(
                    b"POST /v1/submit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nX-API-Key: " + API_KEY.encode() + b"\r\n"
                    b"Content-Length: 100000\r\n\r\n{"
                )
            conn = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=context, timeout=10
            )
            try:
                conn.request(
                    "POST",
                    "/v1/submit",
                    body=b'{"events": []}',
                    headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
                )
                response = conn.getresponse()
                answer = response.read()
                status, retry_after = response.status, response.getheader("Retry-After")
                content_type = response.getheader("Content-Type")
            finally:
                conn.close()
        finally:
            for sock in held:
                sock.close()
    assert status == 503
    assert retry_after is not None and retry_after.isdigit()
    assert content_type == "application/json"
    assert b'"code":"overloaded"' in answer
