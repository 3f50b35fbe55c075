"""The ``otlp`` transport over real HTTPS against a receiver decoding with opentelemetry-proto."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from telemetry_core import TelemetryConfig, TelemetryService
from telemetry_core.delivery import is_transient_status
from telemetry_core.errors import ConfigError, TransportError
from telemetry_core.plugin_host import PluginHost
from telemetry_core.schema import Event, new_event_id
from telemetry_core_plugins.otlp_transport import OtlpTransport, parse_headers
from tests.otlp_sink import Answer, OtlpSink

API_KEY = "tc_live_7f3a9c2e51d84b6f"


@pytest.fixture
def sink(tls_ca: trustme.CA) -> Iterator[OtlpSink]:
    with OtlpSink(tls_ca) as receiver:
        yield receiver


def event(**fields: Any) -> Event:
    values: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": int(time.time() * 1000),
        "install_id": "install-1",
        "app": "demo",
        "app_version": "1.4.0",
        "properties": {"command": "run", "count": 2, "ratio": 0.5, "dry": False, "none": None},
    }
    values.update(fields)
    return Event(**values)


def transport(sink: OtlpSink, tmp_path: Path, **changes: Any) -> OtlpTransport:
    values: dict[str, Any] = {
        "endpoint": sink.url,
        "ca_bundle": sink.ca_path,
        "api_key": API_KEY,
        "timeout": 5.0,
        "transport": "otlp",
    }
    values.update(changes)
    return OtlpTransport(TelemetryConfig(app="demo", db_path=tmp_path / "t.db", **values))


def test_each_event_arrives_as_a_log_record_with_its_id_type_and_fields(
    sink: OtlpSink, tmp_path: Path
) -> None:
    sent = [
        event(duration_ms=12.5, success=True, session_id="s-1"),
        event(type="app_started", install_id="install-2", app_version=None),
    ]
    result = transport(sink, tmp_path).submit_batch(sent)
    assert (result.accepted, result.rejected, result.status) == (2, 0, 200)
    by_id = {r.attributes()["log.record.uid"]: r for r in sink.records}
    assert set(by_id) == {e.id for e in sent}
    first, second = by_id[sent[0].id], by_id[sent[1].id]
    assert first.record.event_name == "command_executed"
    assert first.record.time_unix_nano == sent[0].timestamp * 1_000_000
    assert first.attributes() == {
        "log.record.uid": sent[0].id,
        "event.duration_ms": 12.5,
        "event.success": True,
        "session.id": "s-1",
        "command": "run",
        "count": 2,
        "ratio": 0.5,
        "dry": False,
        "none": None,
    }
    assert first.resource == {
        "service.name": "demo",
        "service.version": "1.4.0",
        "service.instance.id": "install-1",
    }
    assert second.record.event_name == "app_started"
    assert second.resource == {"service.name": "demo", "service.instance.id": "install-2"}
    assert first.scope_name == "telemetry-core"
    assert first.headers["content-type"] == "application/x-protobuf"
    assert first.headers["authorization"] == f"Bearer {API_KEY}"


def test_configured_headers_are_sent_and_may_replace_authorization(
    sink: OtlpSink, tmp_path: Path
) -> None:
    options = {"otlp.headers": "Authorization=Basic%20dXNlcjpwdw==,X-Scope-OrgID=team-7"}
    transport(sink, tmp_path, options=options).submit_batch([event()])
    [received] = sink.records
    assert received.headers["authorization"] == "Basic dXNlcjpwdw=="
    assert received.headers["x-scope-orgid"] == "team-7"


def test_headers_come_from_the_opentelemetry_variable_when_options_have_none(
    sink: OtlpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    transport(sink, tmp_path).submit_batch([event()])
    assert sink.records[0].headers["x-tenant"] == "acme"


def test_header_text_is_parsed_like_the_opentelemetry_variable() -> None:
    assert parse_headers("a=1, b = x%2Cy ,junk,=v") == {"a": "1", "b": "x,y"}


def test_large_batches_are_gzipped(sink: OtlpSink, tmp_path: Path) -> None:
    batch = [event(properties={"pad": "x" * 500}) for _ in range(50)]
    transport(sink, tmp_path, gzip_threshold=1024).submit_batch(batch)
    assert len(sink.records) == 50
    assert sink.records[0].headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 415, 425, 429, 500, 502, 503, 504])
def test_answers_are_classified_by_the_shared_delivery_policy(
    sink: OtlpSink, tmp_path: Path, status: int
) -> None:
    sink.script(Answer(status, {"Retry-After": "7"}, b"no"))
    with pytest.raises(TransportError) as info:
        transport(sink, tmp_path).submit_batch([event()])
    assert info.value.retryable == is_transient_status(status)
    assert info.value.status == status
    assert info.value.retry_after == (7.0 if is_transient_status(status) else None)


def test_a_413_asks_the_worker_to_split(sink: OtlpSink, tmp_path: Path) -> None:
    sink.script(Answer(413))
    with pytest.raises(TransportError) as info:
        transport(sink, tmp_path).submit_batch([event(), event()])
    assert info.value.too_large and not info.value.retryable


def test_partial_success_reports_the_rejected_records(sink: OtlpSink, tmp_path: Path) -> None:
    response = logs_service_pb2.ExportLogsServiceResponse()
    response.partial_success.rejected_log_records = 1
    response.partial_success.error_message = "record 0: pii"
    sink.script(
        Answer(200, {"Content-Type": "application/x-protobuf"}, response.SerializeToString())
    )
    result = transport(sink, tmp_path).submit_batch([event(), event()])
    assert (result.accepted, result.rejected) == (1, 1)


def test_an_unreadable_2xx_is_retried(sink: OtlpSink, tmp_path: Path) -> None:
    sink.script(Answer(200, {"Content-Type": "application/x-protobuf"}, b"\xff\xff"))
    with pytest.raises(TransportError) as info:
        transport(sink, tmp_path).submit_batch([event()])
    assert info.value.retryable


def test_an_endpoint_without_a_path_gets_v1_logs(sink: OtlpSink, tmp_path: Path) -> None:
    base = sink.url.removesuffix("/v1/logs")
    made = transport(sink, tmp_path, endpoint=base)
    assert made.endpoint == sink.url
    assert made.ping()


def test_a_header_value_with_a_line_break_is_a_config_error(sink: OtlpSink, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        transport(sink, tmp_path, options={"otlp.headers": "x=a%0D%0Ab"})


def test_the_api_key_and_header_values_never_appear_in_errors(
    sink: OtlpSink, tmp_path: Path
) -> None:
    sink.script(Answer(400, {}, f"bad key {API_KEY} and tok-123".encode()))
    options = {"otlp.headers": "x-token=tok-123"}
    with pytest.raises(TransportError) as info:
        transport(sink, tmp_path, options=options).submit_batch([event()])
    assert API_KEY not in str(info.value)
    assert "tok-123" not in str(info.value)


def test_a_service_configured_with_transport_otlp_delivers_tracked_events(
    sink: OtlpSink, tmp_path: Path
) -> None:
    config = TelemetryConfig(
        app="demo",
        db_path=tmp_path / "app.db",
        enabled=True,
        remote_enabled=True,
        endpoint=sink.url,
        ca_bundle=sink.ca_path,
        api_key=API_KEY,
        transport="otlp",
    )
    with TelemetryService(config, background=False) as telemetry:
        ids = [telemetry.track("command_executed", {"command": f"c{i}"}) for i in range(5)]
        stats = telemetry.submit_now()
    assert (stats.events_sent, stats.events_accepted) == (5, 5)
    received = {r.attributes()["log.record.uid"]: r.record.event_name for r in sink.records}
    assert received == dict.fromkeys(ids, "command_executed")
    assert "otlp" in {p.name for p in PluginHost().providers() if p.kind == "transport"}
