"""Wire schema v1, shared by the client library and the collector.

This module is the one definition of what an event is on the wire (DESIGN §7):
msgspec structs for the event, the submission envelope, the submission response
and the server info document, the protocol's default limits, UUIDv7 generation,
and :func:`validate_event`, which both halves run (the client before storage, the
collector again on receipt). It imports nothing with behaviour.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from typing import Final

import msgspec

from telemetry_core._memo import BoundedSet

__all__ = [
    "EVENT_TYPE_PATTERN",
    "IDENTIFIER_FORBIDDEN",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "MAX_COMPRESSED_BODY_BYTES",
    "MAX_DURATION_MS",
    "MAX_EVENT_BYTES",
    "MAX_FUTURE_SKEW_MS",
    "MAX_PROPERTIES",
    "MAX_PROPERTY_KEY_LENGTH",
    "MAX_PROPERTY_VALUE_LENGTH",
    "MAX_SHORT_STRING_LENGTH",
    "SCHEMA_VERSION",
    "TEXT_FORBIDDEN",
    "Event",
    "EventError",
    "Limits",
    "PropertyValue",
    "ServerInfo",
    "SubmitEnvelope",
    "SubmitRequest",
    "SubmitResponse",
    "new_event_id",
    "validate_event",
]

#: Version of the event schema carried in every event's ``schema`` field.
SCHEMA_VERSION: Final = 1

#: Event types are short lowercase identifiers: ``command_executed``, ``cli.run:ok``.
EVENT_TYPE_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}\Z")
_PROPERTY_KEY_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*\Z")

#: At most this many properties per event.
MAX_PROPERTIES: Final = 64
#: Property keys are at most this many characters.
MAX_PROPERTY_KEY_LENGTH: Final = 64
#: String property values are at most this many characters.
MAX_PROPERTY_VALUE_LENGTH: Final = 1024
#: ``install_id``, ``session_id``, ``app`` and ``app_version`` are at most this long.
MAX_SHORT_STRING_LENGTH: Final = 128
#: ``duration_ms`` is below this (and at least 0).
MAX_DURATION_MS: Final = 1e15
#: One encoded event may not exceed this many bytes.
MAX_EVENT_BYTES: Final = 16 * 1024
#: The collector's default cap on events in one request.
MAX_BATCH_EVENTS: Final = 1000
#: The collector's default cap on a decompressed request body.
MAX_BODY_BYTES: Final = 5 * 1024 * 1024
#: The collector's default cap on a request body as sent (possibly gzip-compressed).
MAX_COMPRESSED_BODY_BYTES: Final = 1024 * 1024
#: Timestamps more than this far ahead of the receiver's clock are rejected.
MAX_FUTURE_SKEW_MS: Final = 24 * 3600 * 1000
#: Integers on the wire must fit in a signed 64-bit column.
INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = INT64_MAX

PropertyValue = str | int | float | bool | None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One anonymous usage event (schema 1).

    ``id`` is a UUID (the client generates UUIDv7) and is the idempotency key at
    the collector. ``timestamp`` is milliseconds since the Unix epoch.
    ``properties`` is a flat map of scalars, bounded by the ``MAX_PROPERTY_*``
    limits.
    """

    id: str
    type: str
    timestamp: int
    install_id: str
    app: str
    app_version: str | None = None
    session_id: str | None = None
    duration_ms: float | None = None
    success: bool | None = None
    properties: dict[str, PropertyValue] = msgspec.field(default_factory=dict)
    schema: int = SCHEMA_VERSION


class SubmitRequest(msgspec.Struct, frozen=True):
    """The body of ``POST /v1/submit`` as the client builds it."""

    events: list[Event]


class SubmitEnvelope(msgspec.Struct, frozen=True):
    """The body of ``POST /v1/submit`` as the collector first reads it.

    Events stay raw so that each can be decoded and validated on its own: one bad
    event is rejected with its index while the rest of the batch is stored.
    """

    events: list[msgspec.Raw]


class EventError(msgspec.Struct, frozen=True):
    """Why the event at ``index`` of a batch was rejected."""

    index: int
    code: str
    message: str


class SubmitResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The 200 answer to ``POST /v1/submit`` (also sent on partial success)."""

    success: bool
    accepted: int
    rejected: int
    duplicates: int
    errors: list[EventError] = msgspec.field(default_factory=list)


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Every limit a client needs to respect, as published by ``GET /v1/info``."""

    max_events_per_batch: int = MAX_BATCH_EVENTS
    max_body_bytes: int = MAX_BODY_BYTES
    max_compressed_body_bytes: int = MAX_COMPRESSED_BODY_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES
    max_properties: int = MAX_PROPERTIES
    max_property_key_length: int = MAX_PROPERTY_KEY_LENGTH
    max_property_value_length: int = MAX_PROPERTY_VALUE_LENGTH
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
    rate_limit_per_minute: int = 60_000
    rate_limit_burst: int = 10_000


class ServerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The body of ``GET /v1/info``.

    ``dedup_window_days`` is how long the collector recognises a resent event
    as a duplicate: its raw-event retention (``None`` from collectors that do
    not publish it). A client should not hold events longer than that.
    """

    name: str
    version: str
    schema_version: int = SCHEMA_VERSION
    limits: Limits = msgspec.field(default_factory=Limits)
    dedup_window_days: int | None = None


_uuid7_lock = threading.Lock()
_uuid7_last_ms = 0
_uuid7_counter = 0


def new_event_id(now_ms: int | None = None) -> str:
    """Return a new UUIDv7 (RFC 9562) as a lowercase hyphenated string.

    The 48-bit millisecond timestamp leads, so ids sort by creation time and keep
    unique indexes append-friendly. Within one millisecond a 12-bit counter
    (seeded randomly, RFC 9562 §6.2 method 1) keeps ids from one process
    strictly increasing; 62 random bits make cross-process collisions negligible.
    """
    global _uuid7_last_ms, _uuid7_counter
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    with _uuid7_lock:
        if ms <= _uuid7_last_ms:
            ms = _uuid7_last_ms
            _uuid7_counter += 1
            if _uuid7_counter > 0xFFF:
                ms += 1
                _uuid7_counter = rand & 0x7FF
        else:
            _uuid7_counter = rand & 0x7FF
        _uuid7_last_ms = ms
        counter = _uuid7_counter
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | counter << 64
        | 0b10 << 62
        | (rand >> 16) & 0x3FFF_FFFF_FFFF_FFFF
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: ``uuid.UUID()`` alone is too lenient for an idempotency key: it ignores where
#: hyphens are and lets ``int()`` accept signs, spaces and underscores, so
#: distinct strings would pass that are not UUIDs (or name another UUID).
_UUID_PATTERN: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


def _valid_uuid(text: object) -> bool:
    return isinstance(text, str) and _UUID_PATTERN.match(text) is not None


#: Identifiers carry no control characters at all; property values may hold
#: tabs and line breaks, but no other C0/C1 control characters (NUL included),
#: which some stores refuse and terminals misrender. Lone surrogates are refused
#: everywhere: they cannot be encoded as UTF-8. The character classes are written
#: once here; the client and the collector both use these patterns.
_IDENTIFIER_BAD_CHARS: Final = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"
_TEXT_BAD_CHARS: Final = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"
#: Anything an identifier (type, ids, app, version, property key) may not hold.
IDENTIFIER_FORBIDDEN: Final = re.compile(f"[{_IDENTIFIER_BAD_CHARS}]")
#: Anything a property value may not hold (control characters, surrogates).
TEXT_FORBIDDEN: Final = re.compile(f"[{_TEXT_BAD_CHARS}]")
_CONTROL_ANY: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: Lone surrogates cannot be encoded as UTF-8: such an event could be stored
#: but never sent.
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


#: A short field that is certainly valid: 1-128 characters, none of them
#: control characters or surrogates. One C-level match per field; the exact
#: reason of a failure is worked out by :func:`_short_problem`.
_SHORT_OK: Final = re.compile(f"[^{_IDENTIFIER_BAD_CHARS}]{{1,{MAX_SHORT_STRING_LENGTH}}}")
_TEXT_BAD: Final = TEXT_FORBIDDEN


#: Strings already found well-formed: property keys, short fields (no control
#: characters) and property values (tabs and line breaks allowed), kept apart.
#: Apps send the same few keys and values again and again, so a set lookup
#: replaces most regex calls. Bounded: cleared when full; only strings up to
#: ``_KNOWN_MAX_LENGTH`` are kept.
_KNOWN_SIZE: Final = 4096
_KNOWN_MAX_LENGTH: Final = 128
_known_key_memo = BoundedSet(size=_KNOWN_SIZE, max_length=_KNOWN_MAX_LENGTH)
_known_short_memo = BoundedSet(size=_KNOWN_SIZE, max_length=_KNOWN_MAX_LENGTH)
_known_value_memo = BoundedSet(size=_KNOWN_SIZE, max_length=_KNOWN_MAX_LENGTH)
_known_keys = _known_key_memo.items
_known_short = _known_short_memo.items
_known_values = _known_value_memo.items


def _short_problem(name: str, value: object) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return ("invalid_field", f"{name} must be a string")
    if not 0 < len(value) <= MAX_SHORT_STRING_LENGTH:
        return ("invalid_field", f"{name} must be 1-{MAX_SHORT_STRING_LENGTH} characters")
    if _CONTROL_ANY.search(value) or _SURROGATE.search(value):
        return ("invalid_field", f"{name} must not contain control characters")
    return None


def _property_problem(
    key: object, value: object, max_key_length: int, max_value_length: int
) -> tuple[str, str] | None:
    """The exact verdict on one property (the slow path of :func:`validate_event`)."""
    if not isinstance(key, str):
        return ("invalid_property", f"property key {key!r} is not a string")
    if len(key) > max_key_length or not _PROPERTY_KEY_PATTERN.match(key):
        return ("invalid_property", f"property key {key[:max_key_length]!r} is invalid")
    return _value_problem(key, value, max_value_length)


def _value_problem(key: str, value: object, max_value_length: int) -> tuple[str, str] | None:
    if isinstance(value, str):
        return _text_problem(key, value, max_value_length)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return ("invalid_property", f"property {key!r} does not fit in 64 bits")
    if isinstance(value, float):
        return (
            None
            if math.isfinite(value)
            else ("invalid_property", f"property {key!r} must be finite")
        )
    return ("invalid_property", f"property {key!r} has an unsupported type")


def _text_problem(key: str, value: str, max_value_length: int) -> tuple[str, str] | None:
    if len(value) > max_value_length:
        return ("invalid_property", f"property {key!r} is longer than {max_value_length}")
    if _CONTROL_IN_TEXT.search(value):
        return ("invalid_property", f"property {key!r} contains control characters")
    if _SURROGATE.search(value):
        return ("invalid_property", f"property {key!r} is not valid Unicode text")
    return None


def validate_event(
    event: Event,
    *,
    now_ms: int | None = None,
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS,
    max_properties: int = MAX_PROPERTIES,
    max_key_length: int = MAX_PROPERTY_KEY_LENGTH,
    max_value_length: int = MAX_PROPERTY_VALUE_LENGTH,
) -> tuple[str, str] | None:
    """Check ``event`` against schema 1 and the given limits.

    Returns ``None`` when the event is valid, else ``(code, message)`` for the
    first problem found. Codes: ``invalid_id``, ``invalid_type``,
    ``invalid_timestamp``, ``future_timestamp``, ``invalid_duration``,
    ``invalid_field``, ``unsupported_schema``, ``too_many_properties``,
    ``invalid_property``. Privacy checks live in :mod:`telemetry_core.privacy`.
    """
    return (
        _header_problem(event, now_ms, max_future_skew_ms)
        or _short_fields_problem(event)
        or _properties_problem(event, max_properties, max_key_length, max_value_length)
    )


def _header_problem(
    event: Event, now_ms: int | None, max_future_skew_ms: int
) -> tuple[str, str] | None:
    """Schema version, id, type, timestamp and duration."""
    if event.schema != SCHEMA_VERSION:
        return ("unsupported_schema", f"schema {event.schema} is not supported")
    if not _valid_uuid(event.id):
        return ("invalid_id", "id must be a hyphenated UUID")
    if not isinstance(event.type, str) or not EVENT_TYPE_PATTERN.match(event.type):
        return ("invalid_type", "type must match ^[a-z][a-z0-9_.:-]{0,63}$")
    timestamp = event.timestamp
    if (
        type(timestamp) is not int
        and (not isinstance(timestamp, int) or isinstance(timestamp, bool))
    ) or not 0 <= timestamp <= INT64_MAX:
        return ("invalid_timestamp", "timestamp must be milliseconds since the epoch")
    if now_ms is not None and timestamp > now_ms + max_future_skew_ms:
        return ("future_timestamp", "timestamp is too far in the future")
    duration: object = event.duration_ms
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not 0 <= duration < MAX_DURATION_MS
    ):
        return ("invalid_duration", "duration_ms must be a finite number >= 0")
    return None


def _short_fields_problem(event: Event) -> tuple[str, str] | None:
    """install_id, session_id, app and app_version."""
    short_ok = _SHORT_OK.fullmatch
    for name, text in (
        ("install_id", event.install_id),
        ("session_id", event.session_id),
        ("app", event.app),
        ("app_version", event.app_version),
    ):
        # Exact str only: a subclass takes the slow path, which accepts it.
        if text is None or text in _known_short:
            continue
        if type(text) is str and short_ok(text) is not None:
            _known_short_memo.remember(text)
            continue
        problem = _short_problem(name, text)
        if problem is not None:
            return problem
    return None


def _properties_problem(
    event: Event, max_properties: int, max_key_length: int, max_value_length: int
) -> tuple[str, str] | None:
    """The properties: their number, keys and values (a fast path for the plain
    values apps repeat, the exact verdict of :func:`_property_problem` otherwise)."""
    # Apps hand ``track`` arbitrary objects: check types at run time, not only statically.
    props: dict[object, object] = event.properties  # type: ignore[assignment]
    if len(props) > max_properties:
        return ("too_many_properties", f"at most {max_properties} properties are allowed")
    key_ok = _PROPERTY_KEY_PATTERN.match
    for key, value in props.items():
        if type(key) is str and len(key) <= max_key_length:
            if key not in _known_keys:
                if key_ok(key) is None:
                    return _property_problem(key, value, max_key_length, max_value_length)
                _known_key_memo.remember(key)
            if _plain_value_ok(value, max_value_length):
                continue
        problem = _property_problem(key, value, max_key_length, max_value_length)
        if problem is not None:
            return problem
    return None


def _plain_value_ok(value: object, max_value_length: int) -> bool:
    """True for a value of an exact wire type that is certainly valid."""
    kind = type(value)
    if kind is bool or value is None:
        return True
    if kind is str:
        text: str = value  # type: ignore[assignment]
        if len(text) > max_value_length:
            return False
        if text in _known_values:
            return True
        if _TEXT_BAD.search(text) is None:
            _known_value_memo.remember(text)
            return True
        return False
    if kind is int:
        return INT64_MIN <= value <= INT64_MAX  # type: ignore[operator]
    return kind is float and math.isfinite(value)  # type: ignore[arg-type]
