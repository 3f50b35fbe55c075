"""The wire side of the ``otlp`` transport, imported on first send only.

It is the ``https`` transport's client with another body: the connection pool,
TLS verification, timeouts, body limits and the classification of every answer
into :class:`~telemetry_core.errors.TransportError` (transient or permanent,
``Retry-After``, ``too_large``) are inherited from
:class:`~telemetry_core_plugins._https_client.HttpsClient`, so both transports
follow one delivery policy. What differs: the body is an OTLP
``ExportLogsServiceRequest`` in protobuf, built with the generated classes of
``opentelemetry-proto`` (the ``otlp`` extra); the API key travels as
``Authorization: Bearer``; configured headers are added; and a 2xx answer is an
``ExportLogsServiceResponse`` whose ``partial_success`` says how many records the
receiver rejected.

An event becomes one log record: ``id`` in the attribute ``log.record.uid``,
``type`` in ``event_name``, ``timestamp`` in ``time_unix_nano`` (and
``observed_time_unix_nano``), ``duration_ms`` / ``success`` / ``session_id`` in
the attributes ``event.duration_ms`` / ``event.success`` / ``session.id``, each
property as an attribute; ``app``, ``app_version`` and ``install_id`` are the
resource attributes ``service.name``, ``service.version`` and
``service.instance.id`` (events are grouped by resource).
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from telemetry_core._version import __version__
from telemetry_core.errors import TransportError
from telemetry_core.models import SubmissionResult
from telemetry_core.schema import Event, PropertyValue, ServerInfo
from telemetry_core_plugins._https_client import HttpsClient

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock

__all__ = ["SCOPE_NAME", "OtlpClient", "encode_events"]

logger = logging.getLogger("telemetry_core")

#: The instrumentation scope of every record sent.
SCOPE_NAME: Final = "telemetry-core"
_PROTOBUF: Final = "application/x-protobuf"


def _any_value(value: PropertyValue) -> common_pb2.AnyValue:
    # bool before int: a bool is an int to Python.
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, str):
        return common_pb2.AnyValue(string_value=value)
    return common_pb2.AnyValue()  # null: a value with no field set


def _attribute(key: str, value: PropertyValue) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=_any_value(value))


def _record(event: Event) -> logs_pb2.LogRecord:
    nanos = event.timestamp * 1_000_000
    attributes = [_attribute("log.record.uid", event.id)]
    if event.duration_ms is not None:
        attributes.append(_attribute("event.duration_ms", float(event.duration_ms)))
    if event.success is not None:
        attributes.append(_attribute("event.success", event.success))
    if event.session_id is not None:
        attributes.append(_attribute("session.id", event.session_id))
    attributes.extend(_attribute(k, v) for k, v in event.properties.items())
    return logs_pb2.LogRecord(
        time_unix_nano=nanos,
        observed_time_unix_nano=nanos,
        event_name=event.type,
        attributes=attributes,
    )


def _resource(app: str, version: str | None, install: str) -> resource_pb2.Resource:
    attributes = [_attribute("service.name", app)]
    if version is not None:
        attributes.append(_attribute("service.version", version))
    attributes.append(_attribute("service.instance.id", install))
    return resource_pb2.Resource(attributes=attributes)


def encode_events(events: Sequence[Event]) -> bytes:
    """``events`` as a serialized ``ExportLogsServiceRequest`` (records keep
    their order within each resource)."""
    groups: dict[tuple[str, str | None, str], list[logs_pb2.LogRecord]] = {}
    for event in events:
        key = (event.app, event.app_version, event.install_id)
        groups.setdefault(key, []).append(_record(event))
    scope = common_pb2.InstrumentationScope(name=SCOPE_NAME, version=__version__)
    request = logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=_resource(*key),
                scope_logs=[logs_pb2.ScopeLogs(scope=scope, log_records=records)],
            )
            for key, records in groups.items()
        ]
    )
    data: bytes = request.SerializeToString()
    return data


class OtlpClient(HttpsClient):
    """An :class:`HttpsClient` that speaks OTLP/HTTP logs (protobuf).

    :param headers: sent with every request (after the defaults, so they may
        replace ``Authorization``).
    """

    def __init__(
        self, config: TelemetryConfig, clock: Clock, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, clock)
        merged = {k: v for k, v in self._headers.items() if k.lower() != "x-api-key"}
        merged["Content-Type"] = _PROTOBUF
        merged["Accept"] = _PROTOBUF
        if config.api_key:
            merged["Authorization"] = f"Bearer {config.api_key}"
        lowered = {k.lower(): k for k in merged}
        for name, value in (headers or {}).items():
            merged.pop(lowered.get(name.lower(), name), None)
            merged[name] = value
        self._headers = merged
        # Header values may be credentials: kept out of every message, like the key.
        given = {name.lower() for name in headers or {}} | {"authorization"}
        self._secrets = [v for k, v in merged.items() if v and k.lower() in given]

    def __repr__(self) -> str:
        return f"OtlpClient(endpoint={self._endpoint!r})"

    def _redact(self, text: str) -> str:
        text = super()._redact(text)
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
        """``POST`` ``events`` as one OTLP export (see the module docstring)."""
        limits = self.limits
        if len(events) > limits.max_events_per_batch:
            raise self._too_large(
                f"{len(events)} events; the receiver takes at most {limits.max_events_per_batch}"
            )
        body = encode_events(events)
        if len(body) > limits.max_body_bytes:
            raise self._too_large(f"{len(events)} events encode to {len(body)} bytes")
        extra: dict[str, str] = {}
        if len(body) > self._gzip_threshold:
            body = gzip.compress(body, compresslevel=1, mtime=0)
            extra["Content-Encoding"] = "gzip"
        if len(body) > limits.max_compressed_body_bytes:
            raise self._too_large(f"{len(events)} events make a {len(body)}-byte body as sent")
        started = time.perf_counter()
        status, data, headers = self._request("POST", self._endpoint, body=body, headers=extra)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if not 200 <= status < 300:
            raise self._status_error("POST", self._endpoint, status, data, headers)
        rejected, message = self._partial_success(status, data, headers.get("Content-Type"))
        if not 0 <= rejected <= len(events):
            raise TransportError(
                f"POST {self._endpoint}: {rejected} rejected records in a batch of {len(events)}",
                retryable=True,
                status=status,
            )
        if rejected or message:
            logger.warning(
                "telemetry-core: OTLP receiver rejected %d of %d records: %s",
                rejected,
                len(events),
                self._redact(message[:200]),
            )
        return SubmissionResult(
            accepted=len(events) - rejected,
            rejected=rejected,
            status=status,
            latency_ms=latency_ms,
        )

    def _partial_success(self, status: int, data: bytes, media: str | None) -> tuple[int, str]:
        """(rejected records, message) of a 2xx answer; an empty body is full success."""
        if not data:
            return 0, ""
        response = logs_service_pb2.ExportLogsServiceResponse()
        kind = (media or _PROTOBUF).split(";")[0].strip().lower()
        try:
            if kind == "application/json":
                from google.protobuf import json_format

                json_format.Parse(data, response, ignore_unknown_fields=True)
            else:
                response.ParseFromString(data)
        except Exception as exc:  # each protobuf backend raises its own type
            # The receiver may have stored the batch; it is resent, and a
            # receiver that deduplicates (ours does) counts it once.
            raise TransportError(
                f"POST {self._endpoint}: invalid answer to a {status}: {type(exc).__name__}",
                retryable=True,
                status=status,
            ) from None
        partial = response.partial_success
        return int(partial.rejected_log_records), str(partial.error_message)

    def ping(self) -> bool:
        """An empty export (a valid OTLP request that stores nothing): True on a 2xx."""
        try:
            status, _, _ = self._request("POST", self._endpoint, body=b"", timeout=self._timeout)
        except Exception as exc:
            logger.debug("telemetry-core: OTLP ping failed: %s", type(exc).__name__)
            return False
        return 200 <= status < 300

    def server_info(self) -> ServerInfo:
        """OTLP has no info document: the protocol's default limits, named after the endpoint."""
        return ServerInfo(name=f"otlp {self._endpoint}", version="")
