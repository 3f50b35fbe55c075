"""OTLP/HTTP logs (``POST /v1/logs``) decoded and translated into schema-1 events.

Both encodings of the OpenTelemetry protocol are read: binary protobuf
(``application/x-protobuf``), decoded with the official generated classes of
``opentelemetry-proto`` (the ``otlp`` extra, imported on the first protobuf
request), and JSON (``application/json``: lowerCamelCase names, hex trace and
span ids, 64-bit integers as strings or numbers), decoded with msgspec. Each
encoding is turned into the same plain values first, so a record gets the same
event whichever way it was sent (an id derived from content is derived from the
record as encoded: a retry resends the same bytes).

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

import functools
from collections.abc import Callable
from typing import Any, Final, Literal, cast

import msgspec
import msgspec.structs

from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.translation import (
    CANONICAL_UUID,
    Translation,
    derived_ids_after,
    normalise_key,
    normalise_type,
    uuid_or_none,
)
from telemetry_core.schema import Event

_replace = msgspec.structs.replace

__all__ = [
    "JSON",
    "PROTOBUF",
    "Encoding",
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


def encoding_of(content_type: str | None) -> Encoding | None:
    """The OTLP encoding named by a ``Content-Type`` header, or ``None``."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == PROTOBUF:
        return PROTOBUF
    if media == JSON:
        return JSON
    return None


# -- the mapping both encodings share -----------------------------------------------

#: Stands for an attribute whose value is not a scalar (array, map, bytes):
#: not a property, and not a valid duration, success or id either.
NON_SCALAR: Final = "(non-scalar OTLP value)"
_Attributes = dict[str, Any]


class _Resource:
    """What a resource gives each of its records: app, version, install."""

    __slots__ = ("app", "install", "version")

    def __init__(self, attributes: _Attributes) -> None:
        self.app = _text(attributes.get("service.name")) or DEFAULT_APP
        self.version = _text(attributes.get("service.version"))
        self.install = _text(attributes.get("service.instance.id")) or DEFAULT_INSTALL


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value is not NON_SCALAR and value else None


_UID: Final = "log.record.uid"


class _Mapped:
    """What a record's attributes (without ``log.record.uid``) give its event:
    the ``event.name`` attribute, duration, success, session and properties."""

    __slots__ = ("duration", "named", "properties", "session", "success")

    def __init__(self, attributes: _Attributes) -> None:
        self.named = attributes.pop("event.name", None)
        # Whatever their kind, the schema check of the event judges these
        # (a string duration or an integer success is rejected there).
        self.duration = attributes.pop("event.duration_ms", None)
        self.success = attributes.pop("event.success", None)
        self.session = attributes.pop("session.id", None)
        properties: dict[str, Any] = {}
        for key, value in attributes.items():
            if value is not NON_SCALAR:
                normalised = normalise_key(key)
                if normalised is not None:
                    properties[normalised] = value
        self.properties = properties


def _event_type(event_name: str, mapped: _Mapped) -> tuple[str | None, str | None]:
    """A record's event type (None when its name has none) and the name it came from."""
    name = event_name or _text(mapped.named)
    return (normalise_type(name) if name else None), name


def _no_type(name: str | None) -> str:
    """Why a record named ``name`` has no event type."""
    reason = f"event name {name[:64]!r} has no letter" if name else "no event_name"
    return f"{reason}: a log record needs an event name"


def _event(
    resource: _Resource,
    mapped: _Mapped,
    *,
    event_id: str,
    event_type: str,
    timestamp: int,
    properties: dict[str, Any],
) -> Event:
    """The event of a record: its scope's resource, its mapped attributes, and the rest."""
    return Event(
        id=event_id,
        type=event_type,
        timestamp=timestamp,
        install_id=resource.install,
        app=resource.app,
        app_version=resource.version,
        session_id=mapped.session,
        duration_ms=mapped.duration,
        success=mapped.success,
        properties=properties,
    )


def _add_record(
    out: Translation,
    index: int,
    *,
    event_name: str,
    uid: Any,
    mapped: _Mapped,
    properties: dict[str, Any],
    nanos: int,
    resource: _Resource,
    derive: Callable[[bytes], str],
    record: Any,
    encode: Callable[[Any], bytes],
    received_ms: int,
) -> None:
    """Translate one record into an event or a rejection. Without a UUID in
    ``uid``, the id is ``derive(encode(record))`` (``derive`` holds the scope)."""
    event_type, name = _event_type(event_name, mapped)
    if event_type is None:
        out.reject(index, "missing_type", _no_type(name))
        return
    out.add(
        index,
        _event(
            resource,
            mapped,
            event_id=uuid_or_none(uid) or derive(encode(record)),
            event_type=event_type,
            timestamp=nanos // 1_000_000 if nanos else received_ms,
            properties=properties,
        ),
    )


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


_PB_SCALARS: Final = frozenset({"string_value", "bool_value", "int_value", "double_value"})


def _pb_pair(kv: Any) -> tuple[str, Any]:
    """A protobuf ``KeyValue`` as a ``(key, value)`` pair."""
    value = kv.value
    kind = value.WhichOneof("value")
    if kind in _PB_SCALARS:
        return kv.key, getattr(value, kind)
    return kv.key, None if kind is None else NON_SCALAR


@functools.cache
def _pb_encode_key_value() -> Callable[[Any], bytes]:
    """``KeyValue.SerializeToString``, to be mapped over an attribute list in C."""
    _pb()  # the otlp extra is there
    from opentelemetry.proto.common.v1 import common_pb2

    encode: Callable[[Any], bytes] = common_pb2.KeyValue.SerializeToString
    return encode


class _AttributeMemo:
    """What the protobuf attribute lists of one request decode to, remembered.

    Reading a protobuf field from Python builds a wrapper object each time,
    and most attributes repeat from record to record (the same command, the
    same flag), as do whole attribute lists (an SDK's records differ in their
    times and ids). Each attribute is known by its encoding (one C call, no
    wrapper kept): ``pairs`` maps an encoding to its ``(key, value)``, ``lists``
    the encodings of a record's attributes to their :class:`_Mapped`.
    ``log.record.uid`` differs in every record: it is never remembered, and a
    list is remembered without it. A memo lives for one request: the encodings
    it keeps are copies of parts of the body, so it holds at most about twice
    the (size-limited) decoded body, whatever the records repeat or not.
    """

    def __init__(self) -> None:
        self.pairs: dict[bytes, tuple[str, Any]] = {}
        self.lists: dict[tuple[bytes, ...], _Mapped] = {}

    def read(self, attributes: Any) -> tuple[Any, list[int], _Mapped]:
        """The uid (or ``None``) of a record, the positions of its ``log.record.uid``
        attributes and what the rest of its ``attributes`` give. An attribute set
        twice keeps its last value."""
        tokens = tuple(map(_pb_encode_key_value(), attributes))
        mapped = self.lists.get(tokens)
        if mapped is not None:  # the lists remembered hold no uid
            return None, [], mapped
        pairs = list(map(self.pairs.get, tokens))
        uid, uids = None, []
        while None in pairs:
            i = pairs.index(None)
            pair = pairs[i] = _pb_pair(attributes[i])
            if pair[0] == _UID:
                uid = pair[1]
                uids.append(i)
            else:
                self.pairs[tokens[i]] = pair
        rest = tokens
        for i in reversed(uids):
            rest = rest[:i] + rest[i + 1 :]
        mapped = self.lists.get(rest)
        if mapped is None:
            mapped = self.lists[rest] = _Mapped(
                dict(pair for pair in pairs if pair is not None and pair[0] != _UID)
            )
        return uid, uids, mapped

    def attributes(self, attributes: Any) -> _Attributes:
        """A resource's ``attributes`` as a dict."""
        pairs = []
        for kv in attributes:
            token = kv.SerializeToString()
            pair = self.pairs.get(token)
            if pair is None:
                pair = _pb_pair(kv)
                if pair[0] != _UID:
                    self.pairs[token] = pair
            pairs.append(pair)
        return dict(pairs)


def _pb_encode_record(record: Any) -> bytes:
    """A record's encoding, for its derived id. Deterministic serialisation only
    orders map entries, and a ``LogRecord`` holds no map field at any depth (a
    test walks the descriptors), so the plain call gives the same bytes, sooner."""
    data: bytes = record.SerializeToString()
    return data


class _Shape:
    """What every record of one shape gives: its event type (or ``None`` and why
    not) and its mapped attributes. A shape is a record's encoding with its times
    and its uid (the string ``log.record.uid`` at ``uid_at``, its only one) empty."""

    __slots__ = ("event_type", "mapped", "proto", "proto_of", "reason")

    def __init__(self, event_name: str, mapped: _Mapped) -> None:
        self.mapped = mapped
        self.event_type, name = _event_type(event_name, mapped)
        self.reason = _no_type(name)
        #: The event every record of the shape gives in the scope ``proto_of``,
        #: less its id, time and own copy of the properties.
        self.proto: Event | None = None
        self.proto_of: _Resource | None = None

    def event(self, resource: _Resource, event_id: str, timestamp: int) -> Event:
        """The event of a record of this shape (its type known) in ``resource``'s scope."""
        proto = self.proto
        if proto is None or self.proto_of is not resource:
            proto = self.proto = _event(
                resource,
                self.mapped,
                event_id=event_id,
                event_type=cast(str, self.event_type),
                timestamp=timestamp,
                properties={},
            )
            self.proto_of = resource
        # mapped is shared by like records: each event gets its own properties.
        return _replace(
            proto, id=event_id, timestamp=timestamp, properties=dict(self.mapped.properties)
        )


def _string_uid(record: Any, uid_at: int | None) -> Any:
    """The ``AnyValue`` of a record's attribute at ``uid_at`` when it is a
    ``log.record.uid`` holding a string; else ``None``."""
    if uid_at is None:
        return None
    attributes = record.attributes
    if uid_at >= len(attributes):
        return None
    kv = attributes[uid_at]
    value = kv.value
    return value if kv.key == _UID and value.WhichOneof("value") == "string_value" else None


def _blank(record: Any, uid_value: Any) -> None:
    """Empty the times of a record and, when given, its uid's string."""
    record.time_unix_nano = 0
    record.observed_time_unix_nano = 0
    if uid_value is not None:
        uid_value.string_value = ""


#: What a template's holes are filled with while it is made: values no record is
#: likely to hold (a record that does only loses the template, see _Template.of).
_TIME_MARK: Final = 0x7E5A3C1F2D4B6987
_OBSERVED_MARK: Final = 0x6987D4B2F1C3A5E7
_UID_LENGTH: Final = 36
_UID_MARK: Final = "\x7f" * _UID_LENGTH


class _Template:
    """A record shape as bytes with holes: a record's encoding as sent, with its
    times (fixed64 fields 1 and 11, when not zero) and a 36-byte uid string at
    fixed offsets. A record whose encoding has the template's length and its bytes
    outside the holes parses as the template's record but for what is in the holes
    (the bytes before a hole decide how the parser reads it, and they are the
    same): its shape is the template's, read from one encoding, which is also
    the one its derived id hashes."""

    __slots__ = ("length", "observed_at", "segments", "shape", "time_at", "uid_at")

    def __init__(self, encoded: bytes, holes: dict[str, int], shape: _Shape) -> None:
        self.length = len(encoded)
        self.shape = shape
        self.time_at = holes.get("time")
        self.observed_at = holes.get("observed")
        self.uid_at = holes.get("uid")
        widths = {"time": 8, "observed": 8, "uid": _UID_LENGTH}
        #: The bytes between the holes, each with where it starts and ends.
        self.segments: list[tuple[int, int, bytes]] = []
        start = 0
        for at, kind in sorted((at, kind) for kind, at in holes.items()):
            self.segments.append((start, at, encoded[start:at]))
            start = at + widths[kind]
        self.segments.append((start, len(encoded), encoded[start:]))

    @classmethod
    def of(cls, record: Any, uid_value: Any, shape: _Shape) -> _Template | None:
        """The template of ``record`` (whose uid, if any, is ``uid_value``), or
        ``None`` when a hole's mark is not found exactly once. Marks the record."""
        marks = {}
        if record.time_unix_nano:
            record.time_unix_nano = _TIME_MARK
            marks["time"] = b"\x09" + _TIME_MARK.to_bytes(8, "little")
        if record.observed_time_unix_nano:
            record.observed_time_unix_nano = _OBSERVED_MARK
            marks["observed"] = b"\x59" + _OBSERVED_MARK.to_bytes(8, "little")
        if uid_value is not None:
            uid_value.string_value = _UID_MARK
            marks["uid"] = b"\x0a" + bytes([_UID_LENGTH]) + _UID_MARK.encode()
        encoded: bytes = record.SerializeToString()
        if any(encoded.count(mark) != 1 for mark in marks.values()):
            return None
        holes = {
            kind: encoded.find(mark) + (2 if kind == "uid" else 1) for kind, mark in marks.items()
        }
        return cls(encoded, holes, shape)

    def fits(self, encoded: bytes) -> bool:
        """True when ``encoded`` is the template's but for what is in its holes."""
        if len(encoded) != self.length:
            return False
        # A loop of slices: sooner than all() of a generator, or than startswith.
        for start, end, segment in self.segments:  # noqa: SIM110
            if encoded[start:end] != segment:
                return False
        return True


class _Shapes:
    """The record shapes of one request (see :class:`_Shape`), by encoding.

    The records of one SDK differ in their times and uids only: most records are
    mapped by one encoding (in C) and one lookup, the first of each shape through
    :class:`_AttributeMemo`. The uid is looked for where the last shape had it.
    When records keep coming in new shapes (their attributes differ), the request
    stops looking for shapes and reads every record through the memo.
    """

    def __init__(self) -> None:
        self.by_encoding: dict[tuple[int | None, bytes], _Shape] = {}
        self.uid_at: int | None = None
        self.hits = self.misses = 0
        #: The last shape learnt, as bytes with holes (see :class:`_Template`).
        self.template: _Template | None = None
        self.template_hits = self.template_misses = 0

    def learn(self, record: Any, uids: list[int], mapped: _Mapped) -> None:
        """Remember the shape of a record read through the memo (``uids`` are the
        positions of its ``log.record.uid`` attributes); this blanks the record."""
        self.misses += 1
        uid_at = uids[0] if len(uids) == 1 else None
        uid_value = _string_uid(record, uid_at)
        if len(uids) > 1 or (uids and uid_value is None):
            return  # several uids, or one that is not a string: no shape
        shape = _Shape(record.event_name, mapped)
        self.template = _Template.of(record, uid_value, shape)
        _blank(record, uid_value)
        key = (uid_at, record.SerializeToString())
        self.by_encoding[key] = shape
        self.uid_at = uid_at

    @property
    def template_worth_it(self) -> bool:
        """False once the template missed more records of the request than not."""
        return self.template_misses <= 16 or self.template_hits >= self.template_misses

    @property
    def worth_it(self) -> bool:
        """False once more records of the request came in a new shape than not."""
        return self.misses <= 16 or self.hits >= self.misses


class _PbRequest:
    """One protobuf request being translated: its records, in request order, each
    through its shape (:meth:`shaped`) or, when the shape is new, through the
    attribute memo (:meth:`read`). ``resource`` and ``derive`` (the ids derived
    from the scope and each record) are those of the scope being read."""

    def __init__(self, received_ms: int, *, shapes: bool) -> None:
        self.out = Translation()
        self.received_ms = received_ms
        self.memo = _AttributeMemo()
        self.shapes = _Shapes() if shapes else None
        self.resource = _Resource({})  # each scope's, before its records
        self.derive = derived_ids_after("otlp", b"")  # each scope's, before its records

    def record(self, index: int, record: Any) -> None:
        """Translate the record at ``index``."""
        shapes = self.shapes
        if shapes is None or not shapes.worth_it:
            self.read(index, record, None)
            return
        template = shapes.template
        encoded = None  # the record as sent, once encoded (for a derived id)
        if template is not None and shapes.template_worth_it:
            encoded = record.SerializeToString()
            if self.templated(index, encoded, template):
                shapes.hits += 1
                shapes.template_hits += 1
                return
            shapes.template_misses += 1
        if not self.shaped(index, record, shapes, encoded):
            self.read(index, record, shapes, encoded)

    def templated(self, index: int, encoded: bytes, template: _Template) -> bool:
        """Translate a record whose encoding (as sent) fits ``template`` and say
        so; return False for any other."""
        if not template.fits(encoded):
            return False
        at = template.time_at
        nanos = 0 if at is None else int.from_bytes(encoded[at : at + 8], "little")
        at = template.observed_at
        if not nanos and at is not None:
            nanos = int.from_bytes(encoded[at : at + 8], "little")
        shape = template.shape
        if shape.event_type is None:
            self.out.reject(index, "missing_type", shape.reason)
            return True
        at = template.uid_at
        event_id = None
        if at is not None:
            uid = encoded[at : at + _UID_LENGTH].decode()  # UTF-8: the parser checked it
            event_id = uid if CANONICAL_UUID.fullmatch(uid) else uuid_or_none(uid)
        self.out.origins.append(index)  # what out.add does, without its call
        self.out.events.append(
            shape.event(
                self.resource,
                event_id or self.derive(encoded),
                nanos // 1_000_000 if nanos else self.received_ms,
            )
        )
        return True

    def shaped(self, index: int, record: Any, shapes: _Shapes, encoded: bytes | None) -> bool:
        """Translate a record of a known shape (see :class:`_Shapes`) and say so;
        leave any other record as it was and return False (``encoded``: the
        record as sent, when already encoded)."""
        uid_at = shapes.uid_at
        uid_value = None if uid_at is None else _string_uid(record, uid_at)
        if uid_value is None:
            uid = event_id = None
        else:
            uid = uid_value.string_value
            event_id = uid if CANONICAL_UUID.fullmatch(uid) else uuid_or_none(uid)
        # As sent, for a derived id (what _pb_encode_record gives, without its call).
        if event_id is not None:
            encoded = b""
        elif encoded is None:
            encoded = record.SerializeToString()
        nanos, observed = record.time_unix_nano, record.observed_time_unix_nano
        record.time_unix_nano = record.observed_time_unix_nano = 0  # what _blank does
        if uid_value is not None:
            uid_value.string_value = ""
        else:
            uid_at = None
        shape = shapes.by_encoding.get((uid_at, record.SerializeToString()))
        if shape is None:  # put back what was emptied
            record.time_unix_nano, record.observed_time_unix_nano = nanos, observed
            if uid_value is not None:
                uid_value.string_value = uid
            return False
        shapes.hits += 1
        if shape.event_type is None:
            self.out.reject(index, "missing_type", shape.reason)
            return True
        nanos = nanos or observed
        if event_id is None:
            event_id = self.derive(encoded)
        self.out.add(
            index,
            shape.event(self.resource, event_id, nanos // 1_000_000 if nanos else self.received_ms),
        )
        return True

    def read(
        self, index: int, record: Any, shapes: _Shapes | None, encoded: bytes | None = None
    ) -> None:
        """Translate a record through the attribute memo (and learn its shape);
        ``encoded``: the record as sent, when already encoded."""
        uid, uids, mapped = self.memo.read(record.attributes)
        _add_record(
            self.out,
            index,
            event_name=record.event_name,
            uid=uid,
            mapped=mapped,
            properties=dict(mapped.properties),  # mapped is shared by like records
            nanos=record.time_unix_nano or record.observed_time_unix_nano,
            resource=self.resource,
            derive=self.derive,
            record=record,
            encode=_pb_encode_record if encoded is None else (lambda _record: encoded),
            received_ms=self.received_ms,
        )
        if shapes is not None:
            shapes.learn(record, uids, mapped)  # after the id: this blanks the record


def _translate_protobuf(body: bytes, received_ms: int, *, shapes: bool = True) -> Translation:
    """Translate a protobuf request (every record through the attribute memo when
    ``shapes`` is false: the reference the tests hold the shapes to)."""
    pb = _pb()
    request = pb.ExportLogsServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # the upb, C++ and Python backends raise different types
        raise IngestError(400, "malformed", f"invalid OTLP protobuf: {exc}") from None
    reader = _PbRequest(received_ms, shapes=shapes)
    index = 0
    for resource_logs in request.resource_logs:
        resource_pb = resource_logs.resource
        reader.resource = _Resource(reader.memo.attributes(resource_pb.attributes))
        for scope_logs in resource_logs.scope_logs:
            # A derived id covers the record, its scope and its resource, as sent.
            reader.derive = derived_ids_after(
                "otlp",
                resource_pb.SerializeToString(deterministic=True)
                + scope_logs.scope.SerializeToString(deterministic=True),
            )
            for record in scope_logs.log_records:
                reader.record(index, record)
                index += 1
    reader.out.total = index
    return reader.out


# -- JSON ----------------------------------------------------------------------------

_Int64 = int | str


class _JArray(msgspec.Struct, rename="camel", gc=False):
    values: list[_JAny] = msgspec.field(default_factory=list)


class _JKeyValueList(msgspec.Struct, rename="camel", gc=False):
    values: list[_JKeyValue] = msgspec.field(default_factory=list)


class _JAny(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: _Int64 | None = None
    double_value: float | str | None = None
    bytes_value: str | None = None
    array_value: _JArray | None = None
    kvlist_value: _JKeyValueList | None = None


class _JKeyValue(msgspec.Struct, rename="camel", gc=False):
    key: str = ""
    value: _JAny | None = None


class _JScope(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    name: str = ""
    version: str = ""
    attributes: list[_JKeyValue] = msgspec.field(default_factory=list)


class _JRecord(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
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


class _JScopeLogs(msgspec.Struct, rename="camel", gc=False):
    scope: _JScope | None = None
    log_records: list[_JRecord] = msgspec.field(default_factory=list)


class _JResource(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    attributes: list[_JKeyValue] = msgspec.field(default_factory=list)


class _JResourceLogs(msgspec.Struct, rename="camel", gc=False):
    resource: _JResource | None = None
    scope_logs: list[_JScopeLogs] = msgspec.field(default_factory=list)


class _JRequest(msgspec.Struct, rename="camel", gc=False):
    resource_logs: list[_JResourceLogs] = msgspec.field(default_factory=list)


_json_decoder = msgspec.json.Decoder(_JRequest)
_json_encoder = msgspec.json.Encoder()


def _int64(value: _Int64, field: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise IngestError(400, "malformed", f"{field} is not an integer: {value[:40]!r}") from None


def _json_scalar(value: _JAny | None) -> Any:
    if value is None:
        return None
    if value.string_value is not None:
        return value.string_value
    if value.bool_value is not None:
        return value.bool_value
    if value.int_value is not None:
        return _int64(value.int_value, "intValue")
    if value.double_value is not None:
        double = value.double_value
        return float(double) if isinstance(double, str) else double
    if value.bytes_value is None and value.array_value is None and value.kvlist_value is None:
        return None
    return NON_SCALAR


def _json_attributes(attributes: list[_JKeyValue]) -> _Attributes:
    return {kv.key: _json_scalar(kv.value) for kv in attributes}


class _JsonShape:
    """What every JSON record like ``attributes`` and ``event_name`` gives (see
    :class:`_JsonShapes`): its event type (or ``None`` and why) and its mapped
    attributes; ``uid_at`` is where its only ``log.record.uid`` sits, if any."""

    __slots__ = ("after", "attributes", "before", "event_name", "shape", "uid_at")

    def __init__(self, record: _JRecord, uid_at: int | None, mapped: _Mapped) -> None:
        self.attributes = record.attributes
        self.event_name = record.event_name
        self.uid_at = uid_at
        self.shape = _Shape(record.event_name, mapped)
        # The attributes before and after the uid, sliced once.
        self.before = None if uid_at is None else self.attributes[:uid_at]
        self.after = None if uid_at is None else self.attributes[uid_at + 1 :]

    def matches(self, record: _JRecord) -> bool:
        """True when ``record`` has the same name and attributes but for the uid's value."""
        attributes, mine, at = record.attributes, self.attributes, self.uid_at
        if record.event_name != self.event_name or len(attributes) != len(mine):
            return False
        if at is None:
            return attributes == mine
        return (
            attributes[at].key == _UID
            and (not at or attributes[:at] == self.before)
            and attributes[at + 1 :] == self.after
        )


def _zero_double(kv: _JKeyValue) -> bool:
    value = kv.value
    return value is not None and value.double_value == 0


class _JsonShapes:
    """The last record shape of a JSON request: records of one SDK differ in their
    times and uids only, so a record whose name and attributes (but the uid's
    value) equal the last shape's, compared in C, is mapped as that shape; other
    records are read on their own and become the last shape. Structs compare
    floats by value, so a shape is never taken from attributes holding a double
    zero (``-0.0 == 0.0``). When records keep coming in new shapes, the request
    stops comparing."""

    def __init__(self) -> None:
        self.last: _JsonShape | None = None
        self.hits = self.misses = 0

    def learn(self, record: _JRecord, mapped: _Mapped) -> None:
        """Take the shape of a record read on its own (when it can be one)."""
        self.misses += 1
        uids = [i for i, kv in enumerate(record.attributes) if kv.key == _UID]
        others = [kv for kv in record.attributes if kv.key != _UID]
        if len(uids) <= 1 and not any(map(_zero_double, others)):
            self.last = _JsonShape(record, uids[0] if uids else None, mapped)

    @property
    def worth_it(self) -> bool:
        """False once more records of the request came in a new shape than not."""
        return self.misses <= 16 or self.hits >= self.misses


def _translate_json(body: bytes, received_ms: int, *, shapes: bool = True) -> Translation:
    """Translate a JSON request (every record read on its own when ``shapes`` is
    false: the reference the tests hold the shapes to)."""
    try:
        request = _json_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise IngestError(400, "malformed", f"invalid OTLP JSON: {exc}") from None
    out = Translation()
    index = 0
    known = _JsonShapes() if shapes else None
    for resource_logs in request.resource_logs:
        resource_json = resource_logs.resource or _JResource()
        resource = _Resource(_json_attributes(resource_json.attributes))
        for scope_logs in resource_logs.scope_logs:
            context = _json_encoder.encode([resource_json, scope_logs.scope])
            derive = derived_ids_after("otlp", context)
            for record in scope_logs.log_records:
                nanos = record.time_unix_nano
                if type(nanos) is not int:
                    nanos = _int64(nanos, "timeUnixNano")
                if not nanos:
                    nanos = _int64(record.observed_time_unix_nano, "observedTimeUnixNano")
                found = None
                if known is not None and known.worth_it:
                    found = known.last
                    if found is not None and found.matches(record):
                        known.hits += 1
                    else:
                        found = None
                if found is not None:
                    timestamp = nanos // 1_000_000 if nanos else received_ms
                    _add_shaped(
                        out,
                        index,
                        record,
                        found,
                        resource=resource,
                        timestamp=timestamp,
                        derive=derive,
                    )
                    index += 1
                    continue
                # A JSON attribute costs little to read, and hashing a decoded
                # attribute costs more than reading it: no memo here.
                attributes = _json_attributes(record.attributes)
                uid = attributes.pop(_UID, None)
                mapped = _Mapped(attributes)
                if known is not None and known.worth_it:
                    known.learn(record, mapped)
                _add_record(
                    out,
                    index,
                    event_name=record.event_name,
                    uid=uid,
                    mapped=mapped,
                    properties=dict(mapped.properties),  # mapped may be shared
                    nanos=nanos,
                    resource=resource,
                    derive=derive,
                    record=record,
                    encode=_json_encoder.encode,
                    received_ms=received_ms,
                )
                index += 1
    out.total = index
    return out


def _add_shaped(
    out: Translation,
    index: int,
    record: _JRecord,
    found: _JsonShape,
    *,
    resource: _Resource,
    timestamp: int,
    derive: Callable[[bytes], str],
) -> None:
    """What :func:`_add_record` gives for a JSON record of a known shape, from
    what the shape settled (its event type, its mapped attributes)."""
    shape = found.shape
    if shape.event_type is None:
        out.reject(index, "missing_type", shape.reason)
        return
    at = found.uid_at
    uid = None if at is None else _json_scalar(record.attributes[at].value)
    if type(uid) is str and CANONICAL_UUID.fullmatch(uid):
        event_id = uid
    else:
        event_id = uuid_or_none(uid) or derive(_json_encoder.encode(record))
    out.origins.append(index)  # what out.add does, without its call
    out.events.append(shape.event(resource, event_id, timestamp))


def translate_logs(body: bytes, encoding: Encoding, *, received_ms: int) -> Translation:
    """Decode an ``ExportLogsServiceRequest`` body and translate each log record,
    indexed in request order (resources, then scopes, then records).

    Raises :class:`IngestError` 400 (``malformed``) for a body that is not a
    valid request in ``encoding``, 415 for protobuf without the otlp extra.
    A record resent in the same encoding gets the same derived id.
    """
    if encoding == PROTOBUF:
        return _translate_protobuf(body, received_ms)
    return _translate_json(body, received_ms)


# -- answers -------------------------------------------------------------------------

#: HTTP status -> google.rpc.Code of the Status body.
_GRPC_CODES: Final = {400: 3, 401: 16, 403: 7, 404: 5, 408: 4, 413: 8, 415: 3, 429: 8, 503: 14}


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
