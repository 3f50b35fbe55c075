"""Clients we did not write, pointed at a real ``telemetry-collector serve`` over TLS.

The official OpenTelemetry SDK with its OTLP/HTTP exporter, posthog-python and
segment-analytics-python, installed from the package index, each only told the
collector's address (and trust in the test CA): every event is counted exactly
once, resent records and batches included (the SDKs' own retries after a 429
too), rejected records come back as OTLP ``partial_success``, bad input gets
401/400/415, and no raw ``distinct_id`` reaches the database file. Our own
client with ``transport="otlp"`` delivers to the collector's ``/v1/logs``.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import urllib3
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource

from telemetry_core import TelemetryConfig, TelemetryService
from tests.integration.collector_process import API_KEY, CollectorProcess

RAW_USER = "ann.example@example.com"


@pytest.fixture
def collector(tls_ca: trustme.CA, tmp_path: Path) -> Iterator[CollectorProcess]:
    with CollectorProcess(tls_ca, tmp_path / "collector", ["--db", str(tmp_path / "c.db")]) as c:
        yield c
        close_sdk_connections()


@pytest.fixture
def ca_path(tls_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test CA, trusted by the SDKs the way their users trust a private CA.

    The SDKs use ``requests``, which prefers ``REQUESTS_CA_BUNDLE`` /
    ``CURL_CA_BUNDLE`` from the environment over a session's own bundle (the
    OTLP exporter's ``certificate_file``): a machine that sets them globally
    gets them pointed at the test CA.
    """
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(path))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    return str(path)


def close_sdk_connections() -> None:
    """Close the keep-alive connections the SDKs pool at module level, as the
    app's exit would, before the collector stops: an idle one holds its
    graceful shutdown for the whole grace period."""
    from posthog.request import reset_sessions
    from segment.analytics import request as segment_request

    reset_sessions()
    segment_request._session.close()


def post(
    collector: CollectorProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    with urllib3.PoolManager(ssl_context=collector.ssl_context(), retries=False) as pool:
        answer = pool.request("POST", collector.base_url + path, body=body, headers=headers)
    return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.data


def totals(collector: CollectorProcess) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {collector.admin_token}"}
    with urllib3.PoolManager(ssl_context=collector.ssl_context(), retries=False) as pool:
        answer = pool.request("GET", collector.base_url + "/v1/stats", headers=headers)
    assert answer.status == 200, answer.data
    document: dict[str, Any] = json.loads(answer.data)
    return document["totals"]


def database_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("c.db*"))


# -- OpenTelemetry ---------------------------------------------------------------------


def otel_provider(collector: CollectorProcess, ca_path: str, **exporter: Any) -> Any:
    provider = LoggerProvider(
        resource=Resource.create(
            {"service.name": "shop", "service.version": "1.2.3", "service.instance.id": "i-1"}
        )
    )
    sent = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(sent))
    options: dict[str, Any] = {
        "endpoint": collector.base_url + "/v1/logs",
        "certificate_file": ca_path,
        "headers": {"x-api-key": API_KEY},
        "timeout": 20,
    }
    options.update(exporter)
    otlp_exporter = OTLPLogExporter(**options)
    provider.add_log_record_processor(SimpleLogRecordProcessor(otlp_exporter))
    return provider, sent, otlp_exporter


def test_opentelemetry_sdk_events_are_counted_exactly_once_and_resends_deduplicated(
    collector: CollectorProcess, ca_path: str
) -> None:
    provider, sent, exporter = otel_provider(collector, ca_path)
    logger = provider.get_logger("shop.ui")
    for i in range(5):
        logger.emit(
            event_name="Button Clicked",
            attributes={"plan": "pro", "n": i, "event.duration_ms": 12.5, "event.success": True},
        )
    for _ in range(3):
        logger.emit(event_name="page_view", attributes={"path": "/pricing"})
    logger.emit(body="a plain log line has no event name")
    provider.force_flush()
    assert totals(collector)["by_type"] == {"button_clicked": 5, "page_view": 3}
    assert totals(collector)["rejected"] == 1
    # The same records exported again (a retry after a lost answer) count once.
    records = sent.get_finished_logs()
    assert len(records) == 9
    assert exporter.export(records).name == "SUCCESS"
    after = totals(collector)
    assert after["count"] == 8
    assert after["duplicates"] == 8
    provider.shutdown()


def test_opentelemetry_exporter_with_gzip_and_bearer_auth(
    collector: CollectorProcess, ca_path: str
) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression

    provider, _, _ = otel_provider(
        collector,
        ca_path,
        headers={"Authorization": f"Bearer {API_KEY}"},
        compression=Compression.Gzip,
    )
    provider.get_logger("x").emit(event_name="opened")
    provider.force_flush()
    provider.shutdown()
    assert totals(collector)["by_type"] == {"opened": 1}


def otlp_json(*records: dict[str, Any]) -> bytes:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "j"}}]}
    return json.dumps(
        {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": list(records)}]}]}
    ).encode()


def test_otlp_partial_success_and_refusals_answer_in_the_request_encoding(
    collector: CollectorProcess,
) -> None:
    now_ns = str(time.time_ns())
    body = otlp_json(
        {"timeUnixNano": now_ns, "eventName": "saved"},
        {
            "timeUnixNano": now_ns,
            "eventName": "saved",
            "attributes": [{"key": "owner", "value": {"stringValue": RAW_USER}}],
        },
        {"timeUnixNano": now_ns, "body": {"stringValue": "no name"}},
    )
    json_headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    status, headers, answer = post(collector, "/v1/logs", body, json_headers)
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    partial = json.loads(answer)["partialSuccess"]
    assert partial["rejectedLogRecords"] == "2"
    assert "record 1: pii" in partial["errorMessage"]
    assert "record 2: missing_type" in partial["errorMessage"]
    # gzip, protobuf, and a full success: an empty ExportLogsServiceResponse
    pb_headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {API_KEY}"}
    request = logs_service_pb2.ExportLogsServiceRequest()
    status, headers, answer = post(
        collector,
        "/v1/logs",
        gzip.compress(request.SerializeToString()),
        {**pb_headers, "Content-Encoding": "gzip"},
    )
    assert (status, headers["content-type"]) == (200, "application/x-protobuf")
    assert not logs_service_pb2.ExportLogsServiceResponse.FromString(answer).HasField(
        "partial_success"
    )
    # refusals: a google.rpc.Status in the request's encoding
    status, headers, answer = post(collector, "/v1/logs", b"", {**pb_headers, "Authorization": ""})
    assert (status, status_pb2.Status.FromString(answer).code) == (401, 16)
    status, _, answer = post(collector, "/v1/logs", b"\xff\xff\xff", pb_headers)
    assert (status, status_pb2.Status.FromString(answer).code) == (400, 3)
    status, _, answer = post(collector, "/v1/logs", b"{", json_headers)
    assert (status, json.loads(answer)["code"]) == (400, 3)
    status, _, _ = post(collector, "/v1/logs", body, {**json_headers, "Content-Type": "text/xml"})
    assert status == 415
    assert totals(collector)["by_type"] == {"saved": 1}


# -- PostHog ---------------------------------------------------------------------------


def test_posthog_python_events_are_counted_once_and_distinct_id_never_stored(
    collector: CollectorProcess, ca_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import posthog

    client = posthog.Posthog(API_KEY, host=collector.base_url, sync_mode=True, gzip=True)
    event_uuid = str(uuid.uuid4())
    for i in range(4):
        client.capture("Button Clicked", distinct_id=RAW_USER, properties={"plan": "pro", "n": i})
    client.capture("$pageview", distinct_id=RAW_USER, properties={"$current_url": "/x"})
    client.capture("checkout", distinct_id="user-2", uuid=event_uuid)
    client.capture("checkout", distinct_id="user-2", uuid=event_uuid)  # resent
    client.shutdown()
    stats = totals(collector)
    assert stats["by_type"] == {"button_clicked": 4, "page_view": 1, "checkout": 1}
    assert stats["duplicates"] == 1
    assert stats["installs"] == 2
    stored = database_bytes(tmp_path)
    assert RAW_USER.encode() not in stored
    assert b"user-2" not in stored


def test_posthog_batch_refusals_have_the_body_posthog_reads(collector: CollectorProcess) -> None:
    batch = {"api_key": "wrong-key", "batch": [{"event": "x", "distinct_id": "u"}]}
    headers = {"Content-Type": "application/json"}
    status, _, answer = post(collector, "/batch/", json.dumps(batch).encode(), headers)
    assert status == 401
    assert "detail" in json.loads(answer)
    status, _, answer = post(collector, "/batch/", b"{not json", headers)
    assert (status, json.loads(answer)["code"]) == (400, "malformed")
    status, _, _ = post(collector, "/batch/", b"<x/>", {"Content-Type": "application/xml"})
    assert status == 415


# -- Segment ---------------------------------------------------------------------------


def test_segment_analytics_python_is_counted_once_and_anonymous_id_never_stored(
    collector: CollectorProcess, ca_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segment.analytics import Client

    client = Client(API_KEY, host=collector.base_url, sync_mode=True)
    for _ in range(3):
        client.track(anonymous_id=RAW_USER, event="Order Completed", properties={"total": 9.5})
    client.page(anonymous_id=RAW_USER, name="Pricing")
    client.identify(anonymous_id=RAW_USER, traits={"email": RAW_USER})
    client.track(anonymous_id="dev-2", event="Signed Up", message_id="signup-dev-2")
    client.track(anonymous_id="dev-2", event="Signed Up", message_id="signup-dev-2")  # resent
    # sync_mode sends each call before it returns (and has no consumer to shut down)
    stats = totals(collector)
    assert stats["by_type"] == {"order_completed": 3, "page_view": 1, "signed_up": 1}
    assert (stats["duplicates"], stats["rejected"]) == (1, 1)  # identify is not stored
    stored = database_bytes(tmp_path)
    assert RAW_USER.encode() not in stored
    assert b"dev-2" not in stored


def test_segment_refusals_have_the_body_segment_reads(collector: CollectorProcess) -> None:
    body = json.dumps({"batch": [{"type": "track", "event": "x", "anonymousId": "a"}]}).encode()
    status, _, answer = post(collector, "/v1/batch", body, {"Content-Type": "application/json"})
    assert status == 401
    assert set(json.loads(answer)) >= {"code", "message"}


# -- the SDKs' own retries ----------------------------------------------------------------


@pytest.fixture
def throttling_collector(tls_ca: trustme.CA, tmp_path: Path) -> Iterator[CollectorProcess]:
    """A collector whose key may send 1000 events at once, then one a second."""
    args = ["--db", str(tmp_path / "c.db"), "--rate-limit", "60", "--rate-burst", "1000"]
    with CollectorProcess(tls_ca, tmp_path / "throttling", args) as c:
        yield c
        close_sdk_connections()


def spend_the_burst(collector: CollectorProcess) -> None:
    now_ms = int(time.time() * 1000)
    events = [
        {
            "id": str(uuid.uuid4()),
            "type": "filler",
            "timestamp": now_ms,
            "install_id": "f",
            "app": "f",
        }
        for _ in range(1000)
    ]
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    status, _, _ = post(collector, "/v1/submit", json.dumps({"events": events}).encode(), headers)
    assert status == 200


def test_each_sdk_retries_a_429_after_retry_after_and_is_counted_once(
    throttling_collector: CollectorProcess, ca_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import posthog
    from segment.analytics import Client

    collector = throttling_collector
    # The key's bucket is empty from here on: each SDK's first request gets 429
    # with Retry-After: 1, and its own retry (a second later) gets in.
    spend_the_burst(collector)
    provider, _, _ = otel_provider(collector, ca_path)
    provider.get_logger("x").emit(event_name="otel_event")
    provider.force_flush()
    provider.shutdown()
    client = posthog.Posthog(API_KEY, host=collector.base_url, flush_interval=0.1)
    client.capture("posthog_event", distinct_id="u")
    client.flush()
    client.shutdown()
    segment = Client(API_KEY, host=collector.base_url, upload_interval=0.1)
    segment.track(anonymous_id="u", event="segment_event")
    segment.flush()
    segment.shutdown()
    stats = totals(collector)
    assert stats["by_type"] == {
        "filler": 1000,
        "otel_event": 1,
        "posthog_event": 1,
        "segment_event": 1,
    }
    assert stats["throttled"] >= 3  # each SDK was refused at least once, then retried
    assert stats["duplicates"] == 0


# -- our client, transport "otlp" -------------------------------------------------------


def test_our_client_with_the_otlp_transport_delivers_to_v1_logs(
    collector: CollectorProcess, ca_path: str, tmp_path: Path
) -> None:
    config = TelemetryConfig(
        app="cli",
        db_path=tmp_path / "client.db",
        enabled=True,
        remote_enabled=True,
        endpoint=collector.base_url + "/v1/logs",
        ca_bundle=ca_path,
        api_key=API_KEY,
        transport="otlp",
    )
    with TelemetryService(config, background=False) as telemetry:
        for i in range(7):
            telemetry.track("command_executed", {"command": f"c{i}"}, duration_ms=3.0, success=True)
        telemetry.track("app_started")
        first = telemetry.submit_now()
    assert first.events_accepted == 8
    stats = totals(collector)
    assert stats["by_type"] == {"command_executed": 7, "app_started": 1}
    assert stats["duplicates"] == 0
