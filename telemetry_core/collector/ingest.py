"""The decode and validation pipeline of ``POST /v1/submit``.

Framework-free: :func:`read_body` enforces both size caps while the body
streams in (gzip is inflated incrementally with a hard output cap, so a gzip
bomb costs at most ``max_body_bytes`` of memory) and reserves every byte it
holds from the process-wide :class:`InFlightBudget`, so the bodies of all
requests being read together stay bounded; :func:`decode_envelope` reads
``{"events": [...]}`` keeping each event raw, and :func:`check_events` decodes and
validates every event on its own, so one bad event is rejected with its index
while the others are stored.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import AsyncIterator

import attrs
import msgspec

from telemetry_core.privacy import PII_PATTERNS, find_pii
from telemetry_core.schema import Event, EventError, SubmitEnvelope, validate_event

__all__ = [
    "BudgetLease",
    "CheckedBatch",
    "InFlightBudget",
    "IngestError",
    "check_events",
    "decode_envelope",
    "read_body",
]


class IngestError(Exception):
    """A request-level refusal: HTTP ``status`` with an error ``code`` and ``message``.

    ``close`` asks the server to close the connection after answering (the
    request body was not read to its end).
    """

    def __init__(self, status: int, code: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close


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


def _version_pii(value: str) -> str | None:
    # A four-part version ("10.0.0.1") is shaped like an IPv4 address: every other kind counts.
    for kind, pattern in PII_PATTERNS.items():
        if kind != "ip" and pattern.search(value):
            return kind
    return None


def _pii_in(event: Event) -> str | None:
    for field, text in (
        ("install_id", event.install_id),
        ("session_id", event.session_id),
        ("app", event.app),
        ("app_version", event.app_version),
    ):
        if text is None:
            continue
        kind = _version_pii(text) if field == "app_version" else find_pii(text)
        if kind is not None:
            return f"{field} looks like personal data ({kind})"
    for key, value in event.properties.items():
        kind = find_pii(key)
        if kind is None and isinstance(value, str):
            kind = find_pii(value)
        if kind is not None:
            return f"property {key[:64]!r} looks like personal data ({kind})"
    return None


def check_events(
    raws: list[msgspec.Raw],
    *,
    now_ms: int,
    max_event_bytes: int,
    max_future_skew_ms: int,
) -> CheckedBatch:
    """Decode and validate each raw event on its own.

    Codes: ``too_large`` (bytes per event), ``invalid_event`` (not a schema-1
    event object), the codes of :func:`telemetry_core.schema.validate_event`, and
    ``pii`` (``install_id``, ``session_id``, ``app``, ``app_version``, a property
    key or a property value looks like an e-mail address, IP address, home path
    or secret).
    """
    events: list[Event] = []
    indexes: list[int] = []
    errors: list[EventError] = []
    for index, raw in enumerate(raws):
        if len(raw) > max_event_bytes:
            errors.append(EventError(index, "too_large", f"event exceeds {max_event_bytes} bytes"))
            continue
        try:
            event = _event_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            errors.append(EventError(index, "invalid_event", str(exc)))
            continue
        problem = validate_event(event, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
        if problem is not None:
            errors.append(EventError(index, problem[0], problem[1]))
            continue
        pii = _pii_in(event)
        if pii is not None:
            errors.append(EventError(index, "pii", pii))
            continue
        events.append(event)
        indexes.append(index)
    return CheckedBatch(events=tuple(events), indexes=tuple(indexes), errors=tuple(errors))
