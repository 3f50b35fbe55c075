"""The decode and validation pipeline of ``POST /v1/submit``.

Framework-free: :func:`read_body` enforces both size caps while the body
streams in (gzip is inflated incrementally with a hard output cap, so a gzip
bomb costs at most ``max_body_bytes`` of memory) and reserves every byte it
holds from the process-wide :class:`InFlightBudget`, so the bodies of all
requests being read together stay bounded; :func:`decode_envelope` reads
``{"events": [...]}`` keeping each event raw, and :func:`check_events` decodes and
validates every event on its own, so one bad event is rejected with its index
while the others are stored.

The common case is a batch of valid events: :func:`check_events` first decodes
the whole batch in one call into :class:`_CheckedEvent`, whose ``msgspec.Meta``
constraints are the schema-1 rules of :func:`~telemetry_core.schema.validate_event`,
so the C decoder does the bulk; only when that fails does it decode and
validate event by event for the exact error of each. Strings already found
free of personal data are remembered (bounded), since identifiers, keys and
most values repeat from event to event.
"""

from __future__ import annotations

import re
import sys
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Final

import attrs
import msgspec

from telemetry_core._memo import BoundedSet
from telemetry_core.pii import PII_PATTERNS, find_pii
from telemetry_core.schema import (
    IDENTIFIER_FORBIDDEN,
    INT64_MAX,
    INT64_MIN,
    MAX_DURATION_MS,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_LENGTH,
    MAX_PROPERTY_VALUE_LENGTH,
    MAX_SHORT_STRING_LENGTH,
    SCHEMA_VERSION,
    TEXT_FORBIDDEN,
    Event,
    EventError,
    SubmitEnvelope,
    validate_event,
)

__all__ = [
    "BudgetLease",
    "CheckedBatch",
    "InFlightBudget",
    "IngestError",
    "check_built",
    "check_events",
    "decode_envelope",
    "read_body",
]


class IngestError(Exception):
    """A request-level refusal: HTTP ``status`` with an error ``code`` and ``message``.

    ``close`` asks the server to close the connection after answering (the
    request body was not read to its end). ``retry_after`` is the
    ``Retry-After`` of the answer in seconds (a 503 without one says 1).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        close: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close
        self.retry_after = retry_after


def _too_large(message: str) -> IngestError:
    return IngestError(413, "too_large", message)


def _overloaded() -> IngestError:
    return IngestError(503, "overloaded", "too many request bodies in flight; retry later")


class InFlightBudget:
    """A process-wide bound on the bytes of request bodies held in memory.

    Every request reads its body through a :class:`BudgetLease` that reserves
    each compressed chunk as it arrives and each inflated piece as it is
    produced; a reservation that does not fit is refused (the request answers
    503 with ``Retry-After``), so N slow or stalled uploads cannot hold N times
    ``max_body_bytes``. Thread-safe; never blocks.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes currently reserved by all leases."""
        return self._used

    def lease(self) -> BudgetLease:
        """A new, empty lease; release it (or use it as a context manager) when done."""
        return BudgetLease(self)

    def _reserve(self, n: int) -> bool:
        with self._lock:
            if self._used + n > self.max_bytes:
                return False
            self._used += n
            return True

    def _release(self, n: int) -> None:
        with self._lock:
            self._used -= n


class BudgetLease:
    """The bytes one request holds from an :class:`InFlightBudget`."""

    def __init__(self, budget: InFlightBudget) -> None:
        self._budget = budget
        self.held = 0

    def fits(self, n: int) -> bool:
        """True when ``n`` more bytes would fit in the budget right now (reserves nothing)."""
        return self._budget.used + n <= self._budget.max_bytes

    def reserve(self, n: int) -> None:
        """Reserve ``n`` more bytes; raise :class:`IngestError` 503 when they do not fit."""
        if not self._budget._reserve(n):
            raise _overloaded()
        self.held += n

    def release(self) -> None:
        """Give back everything this lease holds (idempotent)."""
        held, self.held = self.held, 0
        if held:
            self._budget._release(held)

    def __enter__(self) -> BudgetLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


async def read_body(
    chunks: AsyncIterator[bytes],
    *,
    encoding: str,
    max_compressed_bytes: int,
    max_body_bytes: int,
    lease: BudgetLease | None = None,
) -> bytes:
    """Read a request body, enforcing both caps while it streams.

    ``encoding`` is the ``Content-Encoding`` (``identity`` or ``gzip``, already
    lowercased). Raises :class:`IngestError` 413 past a cap, 400 for a corrupt
    gzip stream, 503 when ``lease`` cannot reserve the bytes just received or
    inflated (the lease keeps them until the caller releases it).
    """
    received = 0
    parts: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(wbits=31) if encoding == "gzip" else None
    async for chunk in chunks:
        received += len(chunk)
        if received > max_compressed_bytes:
            raise _too_large(f"request body exceeds {max_compressed_bytes} bytes")
        if lease is not None:
            lease.reserve(len(chunk))
        if inflater is None:
            parts.append(chunk)
            size += len(chunk)
            continue
        data = chunk
        while data and not inflater.eof:
            try:
                out = inflater.decompress(data, max_body_bytes - size + 1)
            except zlib.error as exc:
                raise IngestError(400, "bad_encoding", f"corrupt gzip body: {exc}") from exc
            size += len(out)
            if size > max_body_bytes:
                raise _too_large(f"decompressed body exceeds {max_body_bytes} bytes")
            if lease is not None:
                lease.reserve(len(out))
            parts.append(out)
            data = inflater.unconsumed_tail
    if inflater is None:
        if size > max_body_bytes:
            raise _too_large(f"request body exceeds {max_body_bytes} bytes")
    elif not inflater.eof:
        raise IngestError(400, "bad_encoding", "truncated gzip body")
    return b"".join(parts)


_envelope_decoder = msgspec.json.Decoder(SubmitEnvelope)
_event_decoder = msgspec.json.Decoder(Event)


def decode_envelope(body: bytes, *, max_events: int) -> list[msgspec.Raw]:
    """Decode ``{"events": [...]}`` keeping each event raw.

    Raises :class:`IngestError` 400 (``malformed``) for anything but a JSON
    object with an ``events`` list in valid UTF-8, 413 (``too_many_events``) past
    ``max_events``.
    """
    try:
        body.decode("utf-8")  # msgspec leaves the inside of raw events unchecked
        envelope = _envelope_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec raises RecursionError (not DecodeError) for deeply nested JSON.
        raise IngestError(400, "malformed", f"invalid envelope: {exc}") from exc
    if len(envelope.events) > max_events:
        raise IngestError(
            413, "too_many_events", f"{len(envelope.events)} events; at most {max_events}"
        )
    return envelope.events


@attrs.frozen(kw_only=True)
class CheckedBatch:
    """The valid events of a batch with their indexes, and the rejections."""

    events: tuple[Event, ...]
    indexes: tuple[int, ...]
    errors: tuple[EventError, ...]


# schema.validate_event's rules, split in two: lengths and ranges as msgspec
# constraints (checked in C while decoding), character rules as a few regex
# scans over the whole batch (see _BatchStrings). Tests hold the pair to the
# verdicts of validate_event.
_Short = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SHORT_STRING_LENGTH)]
_Value = (
    Annotated[str, msgspec.Meta(max_length=MAX_PROPERTY_VALUE_LENGTH)]
    | Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
    | Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
    | bool
    | None
)


class _CheckedEvent(Event, frozen=True, kw_only=True):
    """An :class:`Event` whose decoding enforces the lengths and ranges of schema 1."""

    id: Annotated[str, msgspec.Meta(min_length=36, max_length=36)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    timestamp: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    install_id: _Short
    app: _Short
    app_version: _Short | None = None
    session_id: _Short | None = None
    duration_ms: Annotated[float, msgspec.Meta(ge=0, lt=MAX_DURATION_MS)] | None = None
    properties: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=MAX_PROPERTY_KEY_LENGTH)], _Value],
        msgspec.Meta(max_length=MAX_PROPERTIES),
    ] = msgspec.field(default_factory=dict)
    schema: Annotated[int, msgspec.Meta(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)] = SCHEMA_VERSION


# Each matches a run of items, each followed by a space, which no item may hold.
_IDS: Final = re.compile(
    r"(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12} )*"
)
_TYPES: Final = re.compile(r"(?:[a-z][a-z0-9_.:-]* )*")
_KEYS: Final = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_.:-]* )*")
# Found anywhere in a joined list, they condemn one of its items.


def _all_match(pattern: re.Pattern[str], items: list[str]) -> bool:
    if not items:
        return True
    joined = " ".join(items) + " "
    # The count rules out an item holding the separator (matching as two items).
    return joined.count(" ") == len(items) and pattern.fullmatch(joined) is not None


@attrs.frozen
class _BatchStrings:
    """The strings of a decoded batch, gathered once for the batch-wide checks."""

    identifiers: list[str]
    versions: list[str]
    keys: list[str]
    texts: list[str]

    @classmethod
    def of(cls, events: list[_CheckedEvent]) -> _BatchStrings:
        """Gather the strings of ``events``."""
        identifiers = [e.install_id for e in events]
        identifiers += [e.app for e in events]
        identifiers += [e.session_id for e in events if e.session_id is not None]
        versions = [e.app_version for e in events if e.app_version is not None]
        keys = [k for e in events for k in e.properties]
        texts = [v for e in events for v in e.properties.values() if isinstance(v, str)]
        return cls(identifiers, versions, keys, texts)

    def valid(self, events: list[_CheckedEvent], *, normalised: bool = False) -> bool:
        """True when every string follows schema 1's character rules.

        ``normalised`` events (see :func:`check_built`) have their ids, types and
        property keys in the patterns by construction: only the strings that come
        from the sender (identifiers, versions, text values) are scanned."""
        return (
            (
                normalised
                or (
                    _all_match(_IDS, [e.id for e in events])
                    and _all_match(_TYPES, [e.type for e in events])
                    and _all_match(_KEYS, self.keys)
                )
            )
            and not IDENTIFIER_FORBIDDEN.search(" ".join(self.identifiers + self.versions))
            and not TEXT_FORBIDDEN.search(" ".join(self.texts))
        )

    def quick_size_bound(self, events: list[_CheckedEvent]) -> int:
        """A looser :meth:`encoded_size_bound` that reads only the text values and
        the property counts: identifiers, versions and keys are taken at the longest
        the constraints of :class:`_CheckedEvent` let through."""
        value = max(_NUMBER_BYTES, 6 * max(map(len, self.texts), default=0) + 2)
        count = max([len(e.properties) for e in events], default=0)
        return _LONGEST_FRAME_BYTES + count * (_LONGEST_KEY_BYTES + value)

    def encoded_size_bound(self, events: list[_CheckedEvent]) -> int:
        """A size no event of ``events`` exceeds as ``/v1/submit`` JSON.

        For events that passed the constraints of :class:`_CheckedEvent` (int64
        integers, finite floats, string keys, ``schema`` 1): every character of a
        string encodes to at most 6 bytes (``\\u001f``), a number to at most 24,
        and the batch's longest strings and largest property map bound each event.
        """
        identifier = max(map(len, self.identifiers), default=0)
        version = max(map(len, self.versions), default=0)
        value = max(_NUMBER_BYTES, 6 * max(map(len, self.texts), default=0) + 2)
        per_property = 6 * max(map(len, self.keys), default=0) + 4 + value
        count = max([len(e.properties) for e in events], default=0)
        strings = 36 + 64 + 3 * identifier + version  # id, type, install/app/session, version
        return _EVENT_FRAME_BYTES + 6 * strings + count * per_property

    def clean(self) -> bool:
        """True when no string holds personal data (the PII check of :func:`_pii_in`)."""
        text_kind = _clean_text.kind
        version_kind = _clean_version.kind
        return all(
            text_kind(t) is None for t in {*self.identifiers, *self.keys, *self.texts}
        ) and all(version_kind(v) is None for v in set(self.versions))


_batch_decoder = msgspec.json.Decoder(list[_CheckedEvent])
#: The JSON of an event without its strings and properties, with room for the
#: longest timestamp, duration and success, and quotes instead of nulls.
_EVENT_FRAME_BYTES: Final = 256
#: The longest JSON of an int64 or a finite float (``-2.2250738585072014e-308``).
_NUMBER_BYTES: Final = 24
#: What :meth:`_BatchStrings.encoded_size_bound` gives for an event's strings at
#: their longest (id, type, install/app/session, version), and for a key and its colon
#: and quotes (the comma too) at the longest.
_LONGEST_FRAME_BYTES: Final = _EVENT_FRAME_BYTES + 6 * (
    36 + 64 + 3 * MAX_SHORT_STRING_LENGTH + MAX_SHORT_STRING_LENGTH
)
_LONGEST_KEY_BYTES: Final = 6 * MAX_PROPERTY_KEY_LENGTH + 4


class _CleanStrings:
    """A bounded memory of strings a PII check found nothing in.

    Only clean verdicts are kept (a string holding personal data is never
    retained), only for strings up to ``max_length`` characters, and the whole
    memory is dropped when it reaches ``size`` entries. Safe to share between
    threads: set operations are atomic, and a lost entry only costs a recheck.
    """

    def __init__(self, check: Callable[[str], str | None], *, size: int, max_length: int) -> None:
        self._check = check
        self._memo = BoundedSet(size=size, max_length=max_length)
        self._clean = self._memo.items

    def kind(self, text: str) -> str | None:
        """The kind of personal data in ``text`` (as ``check`` says), or ``None``."""
        if text in self._clean:
            return None
        kind = self._check(text)
        if kind is None:
            self._memo.remember(text)
        return kind


def _version_pii(value: str) -> str | None:
    # A four-part version ("10.0.0.1") is shaped like an IPv4 address: every other kind counts.
    for kind, pattern in PII_PATTERNS.items():
        if kind != "ip" and pattern.search(value):
            return kind
    return None


_CLEAN_SIZE: Final = 16_384
_CLEAN_MAX_LENGTH: Final = 256
_clean_text = _CleanStrings(find_pii, size=_CLEAN_SIZE, max_length=_CLEAN_MAX_LENGTH)
_clean_version = _CleanStrings(_version_pii, size=_CLEAN_SIZE, max_length=_CLEAN_MAX_LENGTH)


def _pii_in(event: Event) -> str | None:
    text_kind = _clean_text.kind
    for field, text in (
        ("install_id", event.install_id),
        ("session_id", event.session_id),
        ("app", event.app),
        ("app_version", event.app_version),
    ):
        if text is None:
            continue
        kind = _clean_version.kind(text) if field == "app_version" else text_kind(text)
        if kind is not None:
            return f"{field} looks like personal data ({kind})"
    for key, value in event.properties.items():
        kind = text_kind(key)
        if kind is None and isinstance(value, str):
            kind = text_kind(value)
        if kind is not None:
            return f"property {key[:64]!r} looks like personal data ({kind})"
    return None


def _decode_all(raws: list[msgspec.Raw], max_event_bytes: int) -> list[_CheckedEvent] | None:
    """Every event decoded and schema-checked in one call, or ``None`` when any fails."""
    if any(len(raw) > max_event_bytes for raw in raws):
        return None
    try:
        return _batch_decoder.decode(b"[" + b",".join(raws) + b"]")
    except (msgspec.DecodeError, RecursionError):
        return None


def check_events(
    raws: list[msgspec.Raw],
    *,
    now_ms: int,
    max_event_bytes: int,
    max_future_skew_ms: int,
) -> CheckedBatch:
    """Decode and validate each raw event on its own (in one call when all are valid).

    Codes: ``too_large`` (bytes per event), ``invalid_event`` (not a schema-1
    event object), the codes of :func:`telemetry_core.schema.validate_event`, and
    ``pii`` (``install_id``, ``session_id``, ``app``, ``app_version``, a property
    key or a property value looks like an e-mail address, IP address, home path
    or secret).
    """
    return _sorted(
        _decode_all(raws, max_event_bytes),
        lambda: _check_each(
            raws,
            now_ms=now_ms,
            max_event_bytes=max_event_bytes,
            max_future_skew_ms=max_future_skew_ms,
        ),
        now_ms=now_ms,
        max_future_skew_ms=max_future_skew_ms,
    )


_wire_encoder = msgspec.json.Encoder()


def check_built(
    events: Sequence[Event],
    *,
    now_ms: int,
    max_event_bytes: int,
    max_future_skew_ms: int,
    normalised: bool = False,
) -> CheckedBatch:
    """:func:`check_events` of ``events`` as wire JSON, without decoding them again.

    For events a translation built (plain :class:`Event` values, not yet checked):
    the verdict is the one :func:`check_events` gives for each event encoded as
    ``/v1/submit`` JSON. The events are converted into the constrained type in one
    call (the same ``msgspec.Meta`` rules as the decode of :func:`check_events`);
    the ``too_large`` rule is settled by a bound on the encoded size of every
    event (:meth:`_BatchStrings.quick_size_bound`, else the tighter
    :meth:`_BatchStrings.encoded_size_bound`), or, when both pass
    ``max_event_bytes``, by encoding each event; the same batch-wide string and
    PII checks follow. Anything the conversion refuses, an event over the limit,
    or a value JSON would change (a NaN or infinity encodes as ``null``, so the
    constraints refuse it here), is checked as :func:`check_events` checks the
    encoded events, so codes, indexes and messages are the same.

    ``normalised`` says that every event's ``id`` is a UUID in canonical form, its
    ``type`` was made by :func:`~telemetry_core.collector.translation.normalise_type`
    (or is one of the fixed types of a mapping) and every property key by
    :func:`~telemetry_core.collector.translation.normalise_key`, as the
    translations guarantee by construction: their character patterns are then
    not scanned again (the lengths still are, by the conversion).
    """
    converted = None
    if set(map(type, events)) <= {Event}:
        # Only exact Events: msgspec passes an instance of the target type through unchecked.
        try:
            converted = msgspec.convert(events, _CHECKED_LIST, from_attributes=True)
        except msgspec.ValidationError:
            converted = None

    def reference(encoded: list[bytes] | None = None) -> CheckedBatch:
        if encoded is None:
            encoded = [_wire_encoder.encode(e) for e in events]
        return check_events(
            list(map(msgspec.Raw, encoded)),
            now_ms=now_ms,
            max_event_bytes=max_event_bytes,
            max_future_skew_ms=max_future_skew_ms,
        )

    if converted is None:
        return reference()
    strings = _BatchStrings.of(converted)
    if (
        strings.quick_size_bound(converted) > max_event_bytes
        and strings.encoded_size_bound(converted) > max_event_bytes
    ):
        encoded = [_wire_encoder.encode(e) for e in events]
        if max(map(len, encoded), default=0) > max_event_bytes:
            return reference(encoded)  # encoded once, for the size and the verdict
    return _sorted(
        converted,
        reference,
        now_ms=now_ms,
        max_future_skew_ms=max_future_skew_ms,
        strings=strings,
        normalised=normalised,
    )


_CHECKED_LIST: Final = list[_CheckedEvent]


def _sorted(
    decoded: list[_CheckedEvent] | None,
    reference: Callable[[], CheckedBatch],
    *,
    now_ms: int,
    max_future_skew_ms: int,
    strings: _BatchStrings | None = None,
    normalised: bool = False,
) -> CheckedBatch:
    """The verdict on events already held to the msgspec constraints (``reference()``
    when ``decoded`` is ``None`` or a string breaks a character rule). ``strings``
    are those of ``decoded`` when already gathered; ``normalised`` as for
    :func:`check_built`."""
    if decoded is None:
        return reference()
    if strings is None:
        strings = _BatchStrings.of(decoded)
    if not strings.valid(decoded, normalised=normalised):
        return reference()
    latest = now_ms + max_future_skew_ms
    if max((e.timestamp for e in decoded), default=0) <= latest and strings.clean():
        return CheckedBatch(events=tuple(decoded), indexes=tuple(range(len(decoded))), errors=())
    sorter = _Sorter()
    for index, item in enumerate(decoded):
        problem = (
            validate_event(item, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
            if item.timestamp > latest
            else None
        )
        sorter.add(index, item, problem)
    return sorter.batch()


class _Sorter:
    """Sorts a batch's events into accepted ones and errors, by index: an event
    whose validation found a problem, or whose strings look like personal data,
    is rejected; the rest are kept in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.indexes: list[int] = []
        self.errors: list[EventError] = []

    def reject(self, index: int, code: str, message: str) -> None:
        """Record the event at ``index`` as rejected."""
        self.errors.append(EventError(index, code, message))

    def add(self, index: int, event: Event, problem: tuple[str, str] | None) -> None:
        """Keep ``event`` unless ``problem`` (from validation) or the PII check says no."""
        if problem is not None:
            self.reject(index, *problem)
            return
        pii = _pii_in(event)
        if pii is not None:
            self.reject(index, "pii", pii)
            return
        self.events.append(event)
        self.indexes.append(index)

    def batch(self) -> CheckedBatch:
        """The sorted batch."""
        return CheckedBatch(
            events=tuple(self.events), indexes=tuple(self.indexes), errors=tuple(self.errors)
        )


def _check_each(
    raws: list[msgspec.Raw], *, now_ms: int, max_event_bytes: int, max_future_skew_ms: int
) -> CheckedBatch:
    """The reference path: each event decoded and validated on its own, with the
    exact error of each (what :func:`check_events` falls back to)."""
    sorter = _Sorter()
    for index, raw in enumerate(raws):
        if len(raw) > max_event_bytes:
            sorter.reject(index, "too_large", f"event exceeds {max_event_bytes} bytes")
            continue
        try:
            event = _event_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            sorter.reject(index, "invalid_event", str(exc))
            continue
        sorter.add(
            index,
            event,
            validate_event(event, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms),
        )
    return sorter.batch()
