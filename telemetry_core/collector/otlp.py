"""OTLP/HTTP logs (``POST /v1/logs``) decoded and translated into schema-1 events.

Both encodings of the OpenTelemetry protocol are read: binary protobuf
(``application/x-protobuf``), decoded with the official generated classes of
``opentelemetry-proto`` (the ``otlp`` extra, imported on the first protobuf
request), and JSON (``application/json``: lowerCamelCase names, hex trace and
span ids, 64-bit integers as strings or numbers), decoded with msgspec. Each
encoding is turned into the same plain values first, so a record gets the same
event (and the same derived id) whichever way it was sent.

The mapping of a log record (docs/protocol.md has the table):

- type: ``event_name``, else the attribute ``event.name``, normalised
  (a record with neither is rejected: it is a log line, not an event);
- id: the attribute ``log.record.uid`` when it is a UUID, else a UUID derived
  from the record's content, its scope and its resource, so a retried export
  is counted once;
- timestamp: ``time_unix_nano``, else ``observed_time_unix_nano`` (ms);
- app / app_version / install_id: the resource attributes ``service.name``
  (default ``unknown_service``), ``service.version``, ``service.instance.id``
  (default ``unknown``); session_id: the attribute ``session.id``;
- duration_ms / success: the attributes ``event.duration_ms`` / ``event.success``;
- properties: the remaining attributes with scalar values.

The body, severity, trace context, scope, other resource attributes and
non-scalar attributes are not stored (they stay in the derived id).

Answers follow the OTLP/HTTP specification: an ``ExportLogsServiceResponse``
(with ``partial_success`` when records were rejected) and, for a refused
request, a ``google.rpc.Status``, both in the request's encoding.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

import msgspec

from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.translation import (
    Translation,
    derived_id,
    normalise_key,
    normalise_type,
    uuid_or_none,
)
from telemetry_core.schema import Event

__all__ = [
    "JSON",
    "PROTOBUF",
    "Encoding",
    "decode_logs",
    "encode_export_response",
    "encode_status",
    "encoding_of",
    "translate_logs",
]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
Encoding = Literal["application/x-protobuf", "application/json"]

#: Attributes the mapping consumes; the other scalar ones become properties.
_RESERVED: Final = frozenset(
    {"event.name", "log.record.uid", "event.duration_ms", "event.success", "session.id"}
)
DEFAULT_APP: Final = "unknown_service"
DEFAULT_INSTALL: Final = "unknown"

#: A decoded OTLP value: (kind, value) with kind one of
#: s(tring) b(ool) i(nt) d(ouble) y (bytes, base64) a(rray) k(ey-value list).
Value = tuple[str, Any]


def encoding_of(content_type: str | None) -> Encoding | None:
    """The OTLP encoding named by a ``Content-Type`` header, or ``None``."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == PROTOBUF:
        return PROTOBUF
    if media == JSON:
        return JSON
    return None


# -- the plain form both decoders produce ---------------------------------------------


class Record(msgspec.Struct, frozen=True, array_like=True):
    """One log record in plain values, as both encodings decode it."""

    time_ns: int
    observed_ns: int
    severity_number: int
    severity_text: str
    event_name: str
    body: Value | None
    attributes: list[tuple[str, Value]]
    trace_id: str
    span_id: str
    flags: int


class Block(msgspec.Struct, frozen=True, array_like=True):
    """The records of one (resource, scope) pair."""

    resource: list[tuple[str, Value]]
    scope: list[Any]
    records: list[Record]


# -- protobuf ------------------------------------------------------------------------


@functools.cache
def _pb() -> Any:
    """The generated ``logs_service_pb2`` module (imported on first use)."""
    try:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    except ImportError:
        raise IngestError(
            415,
            "unsupported_media_type",
            "this collector reads OTLP protobuf only with the otlp extra "
            "(pip install 'telemetry-core[otlp]'); send application/json",
        ) from None
    return logs_service_pb2


def _pb_value(value: Any) -> Value | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return ("s", value.string_value)
    if kind == "bool_value":
        return ("b", value.bool_value)
    if kind == "int_value":
        return ("i", value.int_value)
    if kind == "double_value":
        return ("d", value.double_value)
    if kind == "bytes_value":
        return ("y", base64.b64encode(value.bytes_value).decode())
    if kind == "array_value":
        return ("a", [_pb_value(v) for v in value.array_value.values])
    if kind == "kvlist_value":
        return ("k", [(kv.key, _pb_value(kv.value)) for kv in value.kvlist_value.values])
    return None


def _pb_attributes(attributes: Any) -> list[tuple[str, Value]]:
    out = []
    for kv in attributes:
        value = _pb_value(kv.value)
        if value is not None:
            out.append((kv.key, value))
    return out


def _decode_protobuf(body: bytes) -> list[Block]:
    pb = _pb()
    request = pb.ExportLogsServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # the upb, C++ and Python backends raise different types
        raise IngestError(400, "malformed", f"invalid OTLP protobuf: {exc}") from None
    blocks = []
    for resource_logs in request.resource_logs:
        resource = _pb_attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            records = [
                Record(
                    rec.time_unix_nano,
                    rec.observed_time_unix_nano,
                    rec.severity_number,
                    rec.severity_text,
                    rec.event_name,
                    _pb_value(rec.body) if rec.HasField("body") else None,
                    _pb_attributes(rec.attributes),
                    rec.trace_id.hex(),
                    rec.span_id.hex(),
                    rec.flags,
                )
                for rec in scope_logs.log_records
            ]
            blocks.append(
                Block(
                    resource,
                    [scope.name, scope.version, _pb_attributes(scope.attributes)],
                    records,
                )
            )
    return blocks


# -- JSON ----------------------------------------------------------------------------

_Int64 = int | str


class _JArray(msgspec.Struct, rename="camel"):
    values: list[_JAny] = msgspec.field(default_factory=list)


class _JKeyValueList(msgspec.Struct, rename="camel"):
    values: list[_JKeyValue] = msgspec.field(default_factory=list)


class _JAny(msgspec.Struct, rename="camel"):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: _Int64 | None = None
    double_value: float | str | None = None
    bytes_value: str | None = None
    array_value: _JArray | None = None
    kvlist_value: _JKeyValueList | None = None


class _JKeyValue(msgspec.Struct, rename="camel"):
    key: str = ""
    value: _JAny | None = None


class _JScope(msgspec.Struct, rename="camel"):
    name: str = ""
    version: str = ""
    attributes: list[_JKeyValue] = msgspec.field(default_factory=list)


class _JRecord(msgspec.Struct, rename="camel"):
    time_unix_nano: _Int64 = 0
    observed_time_unix_nano: _Int64 = 0
    severity_number: int | str = 0
    severity_text: str = ""
    event_name: str = ""
    body: _JAny | None = None
    attributes: list[_JKeyValue] = msgspec.field(default_factory=list)
    trace_id: str = ""
    span_id: str = ""
    flags: int = 0


class _JScopeLogs(msgspec.Struct, rename="camel"):
    scope: _JScope | None = None
    log_records: list[_JRecord] = msgspec.field(default_factory=list)


class _JResource(msgspec.Struct, rename="camel"):
    attributes: list[_JKeyValue] = msgspec.field(default_factory=list)


class _JResourceLogs(msgspec.Struct, rename="camel"):
    resource: _JResource | None = None
    scope_logs: list[_JScopeLogs] = msgspec.field(default_factory=list)


class _JRequest(msgspec.Struct, rename="camel"):
    resource_logs: list[_JResourceLogs] = msgspec.field(default_factory=list)


_json_decoder = msgspec.json.Decoder(_JRequest)


def _int64(value: _Int64, field: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise IngestError(400, "malformed", f"{field} is not an integer: {value[:40]!r}") from None


def _json_value(value: _JAny | None) -> Value | None:
    if value is None:
        return None
    if value.string_value is not None:
        return ("s", value.string_value)
    if value.bool_value is not None:
        return ("b", value.bool_value)
    if value.int_value is not None:
        return ("i", _int64(value.int_value, "intValue"))
    if value.double_value is not None:
        double = value.double_value
        return ("d", float(double) if isinstance(double, str) else double)
    if value.bytes_value is not None:
        return ("y", value.bytes_value)
    if value.array_value is not None:
        return ("a", [_json_value(v) for v in value.array_value.values])
    if value.kvlist_value is not None:
        return ("k", [(kv.key, _json_value(kv.value)) for kv in value.kvlist_value.values])
    return None


def _json_attributes(attributes: list[_JKeyValue]) -> list[tuple[str, Value]]:
    out = []
    for kv in attributes:
        value = _json_value(kv.value)
        if value is not None:
            out.append((kv.key, value))
    return out


def _json_record(rec: _JRecord) -> Record:
    severity = rec.severity_number
    return Record(
        _int64(rec.time_unix_nano, "timeUnixNano"),
        _int64(rec.observed_time_unix_nano, "observedTimeUnixNano"),
        severity if isinstance(severity, int) else 0,
        rec.severity_text,
        rec.event_name,
        _json_value(rec.body),
        _json_attributes(rec.attributes),
        rec.trace_id.lower(),
        rec.span_id.lower(),
        rec.flags,
    )


def _decode_json(body: bytes) -> list[Block]:
    try:
        request = _json_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise IngestError(400, "malformed", f"invalid OTLP JSON: {exc}") from None
    blocks = []
    for resource_logs in request.resource_logs:
        resource = resource_logs.resource
        attributes = _json_attributes(resource.attributes) if resource else []
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope or _JScope()
            blocks.append(
                Block(
                    attributes,
                    [scope.name, scope.version, _json_attributes(scope.attributes)],
                    [_json_record(r) for r in scope_logs.log_records],
                )
            )
    return blocks


def decode_logs(body: bytes, encoding: Encoding) -> list[Block]:
    """Decode an ``ExportLogsServiceRequest`` body into plain blocks.

    Raises :class:`IngestError` 400 (``malformed``) for a body that is not a
    valid request in ``encoding``, 415 for protobuf without the otlp extra.
    """
    return _decode_protobuf(body) if encoding == PROTOBUF else _decode_json(body)


# -- mapping -------------------------------------------------------------------------


def _string(attributes: Mapping[str, Value], key: str) -> str | None:
    value = attributes.get(key)
    return value[1] if value is not None and value[0] == "s" else None


def _scalar(value: Value | None) -> Any:
    # Whatever its kind, the schema check of the event judges it (a string
    # duration or an integer success is rejected there, with its reason).
    return None if value is None else value[1]


def _records(blocks: list[Block]) -> Iterator[tuple[Block, Record]]:
    for block in blocks:
        for record in block.records:
            yield block, record


def translate_logs(blocks: list[Block], *, received_ms: int) -> Translation:
    """Translate decoded blocks into events, one per log record, indexed in order."""
    out = Translation()
    for index, (block, record) in enumerate(_records(blocks)):
        attributes = dict(record.attributes)
        name = record.event_name or _string(attributes, "event.name")
        event_type = normalise_type(name) if name else None
        if event_type is None:
            reason = f"event name {name[:64]!r} has no letter" if name else "no event_name"
            out.reject(index, "missing_type", f"{reason}: a log record needs an event name")
            continue
        resource = dict(block.resource)
        event_id = uuid_or_none(_string(attributes, "log.record.uid")) or derived_id(
            "otlp", [block.resource, block.scope, record]
        )
        nanos = record.time_ns or record.observed_ns
        properties: dict[str, Any] = {}
        for key, value in record.attributes:
            if key in _RESERVED or value[0] not in "sbid":
                continue
            name_ = normalise_key(key)
            if name_ is not None:
                properties[name_] = value[1]
        out.add(
            index,
            Event(
                id=event_id,
                type=event_type,
                timestamp=nanos // 1_000_000 if nanos else received_ms,
                install_id=_string(resource, "service.instance.id") or DEFAULT_INSTALL,
                app=_string(resource, "service.name") or DEFAULT_APP,
                app_version=_string(resource, "service.version"),
                session_id=_string(attributes, "session.id"),
                duration_ms=_scalar(attributes.get("event.duration_ms")),
                success=_scalar(attributes.get("event.success")),
                properties=properties,
            ),
        )
    out.total = sum(len(b.records) for b in blocks)
    return out


# -- answers -------------------------------------------------------------------------

#: HTTP status -> google.rpc.Code of the Status body.
_GRPC_CODES: Final = {400: 3, 401: 16, 403: 7, 404: 5, 408: 4, 413: 8, 415: 3, 429: 8, 503: 14}
_json_encoder = msgspec.json.Encoder()


def encode_export_response(rejected: int, message: str, encoding: Encoding) -> bytes:
    """An ``ExportLogsServiceResponse``: empty on full success, with
    ``partial_success`` when records were rejected."""
    if encoding == JSON:
        if not rejected and not message:
            return b"{}"
        return _json_encoder.encode(
            {"partialSuccess": {"rejectedLogRecords": str(rejected), "errorMessage": message}}
        )
    pb = _pb()
    response = pb.ExportLogsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_log_records = rejected
        response.partial_success.error_message = message
    data: bytes = response.SerializeToString()
    return data


@functools.cache
def _status_class() -> Any:
    """``google.rpc.Status`` (code, message) built from a descriptor, so the
    answer is encoded by protobuf itself without the googleapis package."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(
        name="telemetry_core/google_rpc_status.proto", package="google.rpc", syntax="proto3"
    )
    message = file.message_type.add(name="Status")
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    message.field.add(
        name="code", number=1, label=optional, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32
    )
    message.field.add(
        name="message",
        number=2,
        label=optional,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


def encode_status(status: int, message: str, encoding: Encoding | None) -> tuple[bytes, str]:
    """The body and media type of a refusal: a ``google.rpc.Status`` in
    ``encoding`` (JSON when the request's own was not understood)."""
    code = _GRPC_CODES.get(status, 2 if status < 500 else 13)
    if encoding == PROTOBUF:
        try:
            _pb()
            body: bytes = _status_class()(code=code, message=message).SerializeToString()
        except IngestError:
            pass  # no protobuf here: fall back to JSON
        else:
            return body, PROTOBUF
    return _json_encoder.encode({"code": code, "message": message}), JSON
