"""The ``https`` transport over real HTTPS against the fake collector."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import TransportError
from telemetry_core.schema import Event, SubmitRequest, new_event_id
from telemetry_core_plugins._https_client import USER_AGENT
from telemetry_core_plugins.https_transport import HttpsTransport
from tests.fake_collector import FakeCollector, Reply

API_KEY = "tc_live_7f3a9c2e51d84b6f"
NOW = 1_800_000_000.0


def make_events(count: int, *, padding: int = 0) -> list[Event]:
    now_ms = int(time.time() * 1000)
    return [
        Event(
            id=new_event_id(),
            type="command_executed",
            timestamp=now_ms,
            install_id="install-1",
            app="demo",
            properties={"command": "run", "pad": "x" * padding},
        )
        for _ in range(count)
    ]


@pytest.fixture
def make_transport(tmp_path: Path) -> Any:
    """HttpsTransports for a fake collector (``submit_batch`` is ``begin_batch``
    and its wait, the path ``drain()`` overlaps), closed after the test."""
    made: list[HttpsTransport] = []

    def factory(collector: FakeCollector, **changes: Any) -> HttpsTransport:
        values: dict[str, Any] = {
            "endpoint": collector.submit_url,
            "ca_bundle": collector.ca_path,
            "api_key": API_KEY,
            "timeout": 5.0,
        }
        values.update(changes)
        config = TelemetryConfig(app="demo", db_path=tmp_path / "t.db", **values)
        transport = HttpsTransport(config, clock=lambda: NOW)
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        transport.close()


Factory = Callable[..., HttpsTransport]


def test_success(fake_collector: FakeCollector, make_transport: Factory) -> None:
    fake_collector.api_keys = {API_KEY}
    events = make_events(3)
    result = make_transport(fake_collector).submit_batch(events)
    assert (result.accepted, result.rejected, result.duplicates) == (3, 0, 0)
    assert result.status == 200 and result.success
    assert result.latency_ms > 0
    assert fake_collector.event_ids == [e.id for e in events]
    (request,) = fake_collector.submit_requests
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert "content-encoding" not in request.headers


def test_keep_alive_reuses_one_connection(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    transport = make_transport(fake_collector)
    for _ in range(3):
        transport.submit_batch(make_events(1))
    assert transport.ping()
    assert len(fake_collector.requests) == 4
    assert fake_collector.connections_accepted == 1


def test_partial_success_and_duplicates(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    transport = make_transport(fake_collector)
    good = make_events(2)
    transport.submit_batch(good[:1])
    bad = msgspec.structs.replace(make_events(1)[0], type="Not A Type")
    result = transport.submit_batch([good[0], bad, good[1]])
    assert (result.accepted, result.rejected, result.duplicates) == (1, 1, 1)
    assert not result.success
    (error,) = result.errors
    assert (error.index, error.code) == (1, "invalid_type")
    assert fake_collector.event_ids == [good[0].id, good[1].id]


def test_gzip_above_threshold(fake_collector: FakeCollector, make_transport: Factory) -> None:
    transport = make_transport(fake_collector, gzip_threshold=512)
    transport.submit_batch(make_events(1))
    events = make_events(20, padding=200)
    transport.submit_batch(events)
    small, large = fake_collector.submit_requests
    assert "content-encoding" not in small.headers
    assert large.headers["content-encoding"] == "gzip"
    raw = len(msgspec.json.encode(SubmitRequest(events=events)))
    assert large.body_size < raw
    assert len(fake_collector.events) == 21


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_retryable_status_with_retry_after_seconds(
    status: int, fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.script(Reply(status=status, headers={"Retry-After": "7"}))
    events = make_events(2)
    with pytest.raises(TransportError) as info:
        make_transport(fake_collector).submit_batch(events)
    error = info.value
    assert (error.retryable, error.status, error.retry_after, error.too_large) == (
        True,
        status,
        7.0,
        False,
    )
    assert fake_collector.events == []


def test_retry_after_http_date(fake_collector: FakeCollector, make_transport: Factory) -> None:
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    fake_collector.script(Reply(status=503, headers={"Retry-After": date}))
    with pytest.raises(TransportError) as info:
        make_transport(fake_collector).submit_batch(make_events(1))
    assert info.value.retry_after == 90.0


def test_retry_after_is_clamped(fake_collector: FakeCollector, make_transport: Factory) -> None:
    fake_collector.script(
        Reply(status=429, headers={"Retry-After": "999999"}),
        Reply(status=429, headers={"Retry-After": "soon"}),
        Reply(status=429),
    )
    transport = make_transport(fake_collector, max_retry_after=60.0)
    retry_afters = []
    for _ in range(3):
        with pytest.raises(TransportError) as info:
            transport.submit_batch(make_events(1))
        retry_afters.append(info.value.retry_after)
    assert retry_afters == [60.0, None, None]


def test_retry_then_success(fake_collector: FakeCollector, make_transport: Factory) -> None:
    fake_collector.script(503)
    transport = make_transport(fake_collector)
    events = make_events(2)
    with pytest.raises(TransportError):
        transport.submit_batch(events)
    assert transport.submit_batch(events).accepted == 2


def test_413_is_too_large(fake_collector: FakeCollector, make_transport: Factory) -> None:
    fake_collector.max_events = 2
    transport = make_transport(fake_collector)
    events = make_events(3)
    with pytest.raises(TransportError) as info:
        transport.submit_batch(events)
    assert (info.value.too_large, info.value.retryable, info.value.status) == (True, False, 413)
    assert transport.submit_batch(events[:2]).accepted == 2
    assert transport.submit_batch(events[2:]).accepted == 1


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 501, 502, 503, 504, 599])
def test_transient_statuses_are_retryable_with_their_retry_after(
    status: int, fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.script(Reply(status=status, headers={"Retry-After": "5"}))
    with pytest.raises(TransportError) as info:
        make_transport(fake_collector).submit_batch(make_events(1))
    assert (info.value.retryable, info.value.status, info.value.too_large) == (True, status, False)
    assert info.value.retry_after == 5.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 415, 422])
def test_permanent_refusals_are_terminal(
    status: int, fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.script(Reply(status=status, headers={"Retry-After": "5"}))
    with pytest.raises(TransportError) as info:
        make_transport(fake_collector).submit_batch(make_events(1))
    assert (info.value.retryable, info.value.status, info.value.too_large) == (False, status, False)
    assert info.value.retry_after is None


def test_wrong_api_key_is_401_terminal(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.api_keys = {"another-key"}
    with pytest.raises(TransportError) as info:
        make_transport(fake_collector).submit_batch(make_events(1))
    assert (info.value.status, info.value.retryable) == (401, False)
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)


def test_no_api_key_header_without_key(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    make_transport(fake_collector, api_key=None).submit_batch(make_events(1))
    (request,) = fake_collector.submit_requests
    assert "x-api-key" not in request.headers


def test_api_key_never_in_repr_or_errors(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    # A collector that echoes the key back must not get it into our messages.
    fake_collector.script(Reply(status=400, body=f'{{"error": "bad key {API_KEY}"}}'.encode()))
    transport = make_transport(fake_collector)
    assert API_KEY not in repr(transport)
    with pytest.raises(TransportError) as info:
        transport.submit_batch(make_events(1))
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)
    assert API_KEY not in repr(transport._get_client())


def test_untrusted_certificate_fails(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    transport = make_transport(fake_collector, ca_bundle=None)
    with pytest.raises(TransportError) as info:
        transport.submit_batch(make_events(1))
    assert info.value.retryable
    assert info.value.retry_after is None  # offline probing, not a long pause
    assert "TLS" in str(info.value)
    assert not transport.ping()
    assert fake_collector.requests == []


def test_certificate_of_another_ca_fails(
    fake_collector_factory: Callable[..., FakeCollector], make_transport: Factory
) -> None:
    import trustme

    collector = fake_collector_factory(ca=trustme.CA())
    other = fake_collector_factory()
    transport = make_transport(collector, ca_bundle=other.ca_path)
    with pytest.raises(TransportError, match="TLS"):
        transport.submit_batch(make_events(1))


def test_missing_ca_bundle_is_a_retryable_config_error(
    fake_collector: FakeCollector, make_transport: Factory, tmp_path: Path
) -> None:
    transport = make_transport(fake_collector, ca_bundle=str(tmp_path / "nope.pem"))
    with pytest.raises(TransportError, match="ca_bundle") as info:
        transport.submit_batch(make_events(1))
    assert info.value.retryable


def test_timeout(fake_collector: FakeCollector, make_transport: Factory) -> None:
    fake_collector.script(Reply(delay=3.0))
    transport = make_transport(fake_collector, timeout=0.5)
    with pytest.raises(TransportError, match="timed out") as info:
        transport.submit_batch(make_events(1))
    assert info.value.retryable and info.value.status is None


def test_connection_reset(fake_collector: FakeCollector, make_transport: Factory) -> None:
    fake_collector.script(Reply(action="reset"))
    transport = make_transport(fake_collector)
    events = make_events(1)
    with pytest.raises(TransportError, match="network error") as info:
        transport.submit_batch(events)
    assert info.value.retryable and info.value.status is None
    assert transport.submit_batch(events).accepted == 1


def test_truncated_response_is_retryable_and_resend_is_a_duplicate(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.script(Reply(action="truncate"))
    transport = make_transport(fake_collector)
    events = make_events(2)
    with pytest.raises(TransportError) as info:
        transport.submit_batch(events)
    assert info.value.retryable
    result = transport.submit_batch(events)
    assert (result.accepted, result.duplicates) == (0, 2)
    assert len(fake_collector.events) == 2


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"success": true}',
        b'{"success": true, "accepted": 5, "rejected": 0, "duplicates": 0}',
        b'{"success": true, "accepted": -1, "rejected": 2, "duplicates": 0}',
        b'{"success": false, "accepted": 0, "rejected": 1, "duplicates": 0,'
        b' "errors": [{"index": 7, "code": "x", "message": "y"}]}',
    ],
)
def test_invalid_200_body_is_retryable(
    body: bytes, fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.script(Reply(status=200, body=body))
    with pytest.raises(TransportError) as info:
        make_transport(fake_collector).submit_batch(make_events(1))
    assert info.value.retryable and info.value.status == 200


def test_connection_refused(make_transport: Factory, fake_collector: FakeCollector) -> None:
    transport = make_transport(fake_collector)
    fake_collector.close()
    with pytest.raises(TransportError) as info:
        transport.submit_batch(make_events(1))
    assert info.value.retryable and info.value.status is None
    assert not transport.ping()


def test_ping_and_server_info(fake_collector: FakeCollector, make_transport: Factory) -> None:
    fake_collector.max_events = 250
    transport = make_transport(fake_collector)
    assert transport.ping()
    info = transport.server_info()
    assert info.name == "fake-collector"
    assert info.limits.max_events_per_batch == 250
    paths = [(r.method, r.path) for r in fake_collector.requests]
    assert paths == [("GET", "/ping"), ("GET", "/v1/info")]


def test_endpoint_with_prefix_derives_ping_from_host(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    transport = make_transport(fake_collector, endpoint=f"{fake_collector.url}/v1/submit?x=1")
    assert transport.ping()
    assert fake_collector.requests[-1].path == "/ping"


def test_plain_http_to_loopback(
    fake_collector_factory: Callable[..., FakeCollector], make_transport: Factory
) -> None:
    collector = fake_collector_factory(ca=None)
    assert collector.submit_url.startswith("http://127.0.0.1:")
    transport = make_transport(collector, ca_bundle=None)
    assert transport.submit_batch(make_events(1)).accepted == 1


def test_gzip_payload_round_trips(fake_collector: FakeCollector, make_transport: Factory) -> None:
    events = make_events(5, padding=500)
    make_transport(fake_collector, gzip_threshold=0).submit_batch(events)
    assert fake_collector.events == events
    (request,) = fake_collector.submit_requests
    assert request.headers["content-encoding"] == "gzip"


def test_close_then_reuse(fake_collector: FakeCollector, make_transport: Factory) -> None:
    transport = make_transport(fake_collector)
    transport.submit_batch(make_events(1))
    transport.close()
    transport.submit_batch(make_events(1))
    assert len(fake_collector.events) == 2


def test_fake_collector_runs_as_a_subprocess(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    port_file = tmp_path / "collector.json"
    events_file = tmp_path / "events.jsonl"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_collector",
            "--port-file",
            str(port_file),
            "--events-file",
            str(events_file),
            "--api-key",
            API_KEY,
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        for _ in range(200):  # at most ~20 s for the interpreter and trustme to start
            if port_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        info = json.loads(port_file.read_text())
        config = TelemetryConfig(
            app="demo",
            db_path=tmp_path / "t.db",
            endpoint=info["submit_url"],
            ca_bundle=info["ca_path"],
            api_key=API_KEY,
        )
        transport = HttpsTransport(config)
        events = make_events(3)
        try:
            assert transport.ping()
            assert transport.submit_batch(events).accepted == 3
        finally:
            transport.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    lines = events_file.read_bytes().splitlines()
    assert [msgspec.json.decode(line, type=Event).id for line in lines] == [e.id for e in events]


# --- round 2 finding 1: a body over the collector's limits is never sent ---


def incompressible_events(count: int, properties: int, seed: int = 7) -> list[Event]:
    """Valid events of ``properties`` properties of 1,000 random letters each
    (gzip shrinks them to about 0.6)."""
    import random

    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    return [
        Event(
            id=new_event_id(),
            type="big_event",
            timestamp=now_ms,
            install_id="install-1",
            app="demo",
            properties={
                f"p{j}": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=1000))
                for j in range(properties)
            },
        )
        for _ in range(count)
    ]


def test_body_over_the_compressed_cap_is_refused_locally(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    # 100 x 1,000 random letters: ~100 KB of JSON, ~60 KB gzipped; the defaults
    # (5 MiB / 1 MiB) take it, a learned compressed cap of 32 KiB does not.
    fake_collector.max_compressed_body_bytes = 32 * 1024
    transport = make_transport(fake_collector)
    events = incompressible_events(100, 1)
    assert transport.server_info().limits.max_compressed_body_bytes == 32 * 1024
    with pytest.raises(TransportError) as info:
        transport.submit_batch(events)
    error = info.value
    assert (error.too_large, error.retryable, error.status) == (True, False, None)
    assert "not sent" in str(error)
    assert fake_collector.submit_requests == []  # nothing was put on the wire
    assert transport.submit_batch(events[:25]).accepted == 25


def test_body_over_the_decompressed_cap_is_refused_before_gzip(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.max_body_bytes = 50_000
    transport = make_transport(fake_collector)
    transport.server_info()
    with pytest.raises(TransportError) as info:
        transport.submit_batch(make_events(200, padding=500))  # compresses well, ~130 KB raw
    assert (info.value.too_large, info.value.status) == (True, None)
    assert "encode to" in str(info.value)
    assert fake_collector.submit_requests == []


def test_more_events_than_the_learned_batch_limit_are_refused_locally(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.max_events = 3
    transport = make_transport(fake_collector)
    transport.server_info()
    with pytest.raises(TransportError) as info:
        transport.submit_batch(make_events(4))
    assert (info.value.too_large, info.value.status) == (True, None)
    assert fake_collector.submit_requests == []


def test_default_limits_apply_without_server_info(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    # 1,000 x 3 x 1,000 random letters: ~3 MB of JSON (under the default 5 MiB),
    # ~1.8 MB gzipped, over the default 1 MiB as sent.
    transport = make_transport(fake_collector)
    with pytest.raises(TransportError) as info:
        transport.submit_batch(incompressible_events(1000, 3))
    assert (info.value.too_large, info.value.status) == (True, None)
    assert "as sent" in str(info.value)
    assert fake_collector.submit_requests == []


def test_reset_on_a_large_body_stays_a_retryable_network_error(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    # The decision documented in _https_client: only the local cap splits; a
    # reset, even on a body near the cap, is a network fault (never too_large,
    # which would dead-letter a single event).
    fake_collector.script(Reply(action="reset"))
    transport = make_transport(fake_collector)
    events = incompressible_events(900, 1)  # ~0.9 MB JSON, ~0.55 MB gzipped
    with pytest.raises(TransportError, match="network error") as info:
        transport.submit_batch(events)
    assert (info.value.retryable, info.value.too_large, info.value.status) == (True, False, None)
    assert transport.submit_batch(events).accepted == 900


def test_an_endpoint_without_a_path_submits_to_v1_submit(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    transport = make_transport(fake_collector, endpoint=fake_collector.url)
    assert transport.endpoint == fake_collector.submit_url
    events = make_events(2)
    assert transport.submit_batch(events).accepted == 2
    assert fake_collector.event_ids == [e.id for e in events]


def test_a_429_message_says_the_servers_retry_delay(
    fake_collector: FakeCollector, make_transport: Factory
) -> None:
    fake_collector.script(Reply(status=429, headers={"Retry-After": "42"}))
    with pytest.raises(TransportError) as info:
        make_transport(fake_collector).submit_batch(make_events(1))
    assert "429" in str(info.value)
    assert "retry after 42 s" in str(info.value)
