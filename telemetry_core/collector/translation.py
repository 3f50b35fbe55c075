"""What every foreign protocol shares on its way into the ``/v1/submit`` pipeline.

The OTLP receiver (:mod:`~telemetry_core.collector.otlp`) and the analytics-SDK
routes (:mod:`~telemetry_core.collector.analytics_sdks`) translate each record
they receive into a schema-1 event and hand the batch to the same
:func:`~telemetry_core.collector.ingest.check_events` checks as ``/v1/submit``
(through :func:`~telemetry_core.collector.ingest.check_built`, which gives its
verdicts without encoding the events): the
translation decides only names, ids and which fields carry over; validation, the
PII re-check, dedup and rollups stay where they are. A record that cannot be
translated at all (no event name, no user id) is rejected here, with its index
in the request, and counted like any other rejection.

Names are normalised to the event type pattern (``Button Clicked`` becomes
``button_clicked``); property keys to the property key pattern. Records without
a usable id get a deterministic UUID derived from their content
(:func:`derived_id`), so a retried request is counted once.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import msgspec

from telemetry_core.schema import MAX_PROPERTY_KEY_LENGTH, Event, EventError, PropertyValue

__all__ = [
    "CANONICAL_UUID",
    "ID_NAMESPACE",
    "Translation",
    "derived_id",
    "derived_id_of_bytes",
    "derived_ids_after",
    "first_messages",
    "flatten_properties",
    "normalise_key",
    "normalise_type",
    "scalar_drops",
    "uuid_or_none",
]

#: The namespace of every derived id (uuid5). Fixed forever: changing it would
#: make a retried record look new.
ID_NAMESPACE: Final = uuid.UUID("6c1f7f0e-3a52-5d8e-9d5b-2f1a7c0e4b61")

_CAMEL_BOUNDARY: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_TYPE_CHARS: Final = re.compile(r"[^a-z0-9_.:-]+")
_NOT_KEY_CHARS: Final = re.compile(r"[^A-Za-z0-9_.:-]+")
_UNDERSCORES: Final = re.compile(r"__+")
_MAX_TYPE_LENGTH: Final = 64


@functools.lru_cache(maxsize=4096)
def normalise_type(name: str) -> str | None:
    """``name`` as an event type of pattern ``^[a-z][a-z0-9_.:-]{0,63}$``, or ``None``.

    A leading ``$`` is dropped, camelCase and spaces become ``snake_case``, any
    other character outside the pattern becomes ``_``, and the result is cut
    to 64 characters. ``None`` when nothing is left that starts with a letter.
    """
    text = _CAMEL_BOUNDARY.sub("_", name.strip().lstrip("$")).lower()
    text = _UNDERSCORES.sub("_", _NOT_TYPE_CHARS.sub("_", text)).strip("_")
    text = text[:_MAX_TYPE_LENGTH].rstrip("_")
    if not text or not ("a" <= text[0] <= "z"):
        return None
    return text


@functools.lru_cache(maxsize=4096)
def normalise_key(key: str) -> str | None:
    """``key`` as a property key (``^[A-Za-z_][A-Za-z0-9_.:-]*$``, at most 64
    characters), or ``None`` when it is empty. Case is kept."""
    text = _UNDERSCORES.sub("_", _NOT_KEY_CHARS.sub("_", key.strip()))
    if not text:
        return None
    if not (text[0].isascii() and (text[0].isalpha() or text[0] == "_")):
        text = "_" + text
    return text[:MAX_PROPERTY_KEY_LENGTH]


def uuid_or_none(value: object) -> str | None:
    """``value`` in canonical form when it is a UUID string, else ``None``."""
    if not isinstance(value, str) or len(value) > 45:
        return None
    if CANONICAL_UUID.fullmatch(value):
        return value  # the common case, without building a UUID
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


_canonical = msgspec.json.Encoder(order="sorted")
#: A UUID in canonical form (lower-case hex with hyphens): :func:`uuid_or_none`
#: gives back such a string unchanged.
CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def derived_id(kind: str, content: object) -> str:
    """A UUID (version 5) determined by ``content`` alone.

    ``content`` is any msgspec-encodable value; it is encoded canonically (map
    keys sorted), so the same record sent twice (a retry) gets the same id while
    any difference in its content gives another. ``kind`` separates the
    protocols, so equal content from two of them never collides.
    """
    return derived_id_of_bytes(kind, _canonical.encode(content))


#: The hex digit of a UUID's variant nibble (RFC 4122: ``10`` in its top bits),
#: by the hex digit of the digest there.
_VARIANT_DIGIT: Final = {f"{n:x}": f"{n & 0x3 | 0x8:x}" for n in range(16)}
#: SHA-1 of each kind's prefix (namespace, kind, NUL), copied for each id.
_PREFIX_HASHES: dict[str, Any] = {}


def derived_id_of_bytes(kind: str, data: bytes) -> str:
    """The UUID (version 5, in :data:`ID_NAMESPACE`) of ``data``, for ``kind``."""
    return _id_of_hash(_prefix_hash(kind), data)


def derived_ids_after(kind: str, context: bytes) -> Callable[[bytes], str]:
    """``derived_id_of_bytes(kind, context + data)`` as a function of ``data``, with
    ``context`` hashed once (for the records of one scope, say)."""
    prefix = _prefix_hash(kind).copy()
    prefix.update(context)
    return functools.partial(_id_of_hash, prefix)


def _prefix_hash(kind: str) -> Any:
    prefix = _PREFIX_HASHES.get(kind)
    if prefix is None:
        prefix = _PREFIX_HASHES[kind] = hashlib.sha1(
            ID_NAMESPACE.bytes + kind.encode() + b"\x00", usedforsecurity=False
        )
    return prefix


def _id_of_hash(prefix: Any, data: bytes) -> str:
    """The UUID of a copy of the SHA-1 state ``prefix`` fed ``data``."""
    digest = prefix.copy()
    digest.update(data)
    # What str(uuid.UUID(bytes=digest[:16], version=5)) gives, without building the
    # object: the first 16 bytes of the digest with the version (5) and the variant set.
    h = digest.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


_SCALAR_TYPES: Final = frozenset({str, int, float, bool, type(None)})


def flatten_properties(
    properties: Mapping[str, object], *, drop_prefix: str | None = None
) -> dict[str, PropertyValue]:
    """``properties`` as a flat map of scalars.

    A nested map is flattened one level (``{"plan": {"tier": "pro"}}`` becomes
    ``{"plan.tier": "pro"}``); deeper maps, lists and other values are dropped,
    and so are keys starting with ``drop_prefix`` (at either level). Keys are
    normalised with :func:`normalise_key`.
    """
    names = _key_names(drop_prefix)
    flat: dict[str, PropertyValue] = {}
    for key, value in properties.items():
        name = names.get(key, _UNSEEN)
        if name is _UNSEEN:
            name = names[key] = _key_name(key, drop_prefix)
        if name is _DROPPED:
            continue
        if type(value) in _SCALAR_TYPES:
            if name is not None:
                flat[name] = value  # type: ignore[assignment,index]
        elif isinstance(value, Mapping):
            for inner, inner_value in value.items():
                inner_key = str(inner)
                if drop_prefix is not None and inner_key.startswith(drop_prefix):
                    continue
                if type(inner_value) in _SCALAR_TYPES:
                    inner_name = normalise_key(f"{key}.{inner_key}")
                    if inner_name is not None:
                        flat[inner_name] = inner_value
    return flat


#: What :func:`_key_name` says of a key with ``drop_prefix``: not kept at all.
_DROPPED: Final = "(dropped)"
_UNSEEN: Final = object()
_KEY_NAMES_SIZE: Final = 4096
#: Per ``drop_prefix``: each top-level key seen, as :func:`_key_name` reads it.
_key_names_by_prefix: dict[str | None, dict[str, object]] = {}


def _key_names(drop_prefix: str | None) -> dict[str, object]:
    """The remembered key names for ``drop_prefix`` (dropped whole when full)."""
    names = _key_names_by_prefix.get(drop_prefix)
    if names is None or len(names) >= _KEY_NAMES_SIZE:
        names = _key_names_by_prefix[drop_prefix] = {}
    return names


def _key_name(key: str, drop_prefix: str | None) -> str | None:
    """A top-level key's property name: :data:`_DROPPED` when it has the prefix,
    else :func:`normalise_key` (``None``: no name, though a map under it is read)."""
    if drop_prefix is not None and key.startswith(drop_prefix):
        return _DROPPED
    return normalise_key(key)


def scalar_drops(
    keys: Iterable[str],
    *,
    drop_prefix: str | None = None,
    dropped_names: frozenset[str] = frozenset(),
) -> list[str] | None:
    """The keys to delete from a copy of a map of scalars to get what
    :func:`flatten_properties` gives for it (less the names in ``dropped_names``),
    for every map whose keys are among ``keys``: those it drops by prefix, those
    without a name and those named in ``dropped_names``. ``None`` when a key is
    renamed (its name is not the key itself): only the loop gives that map.

    With every kept key named as it is, no two keys share a name, and a copy of
    the map keeps its order: the copy less these keys *is* the flattened map.
    """
    names = _key_names(drop_prefix)
    drops = []
    for key in keys:
        name = names.get(key, _UNSEEN)
        if name is _UNSEEN:
            name = names[key] = _key_name(key, drop_prefix)
        if name is _DROPPED or name is None:
            drops.append(key)
        elif name != key:
            return None
        elif name in dropped_names:
            drops.append(key)
    return drops


_event_encoder = msgspec.json.Encoder()
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


@attrs.define
class Translation:
    """A request's records translated into ``/v1/submit`` events.

    ``events`` are the translated events (what the routes hand to
    :func:`~telemetry_core.collector.ingest.check_built`) and :attr:`raws` the
    same as wire JSON, for :func:`~telemetry_core.collector.ingest.check_events`; ``origins``
    give the index in the request of each; ``errors`` are the records that
    could not be translated, by their index in the request; ``total`` counts
    every record.

    Every translator builds each event's ``id`` with :func:`uuid_or_none` or
    :func:`derived_id` (a UUID in canonical form), its ``type`` with
    :func:`normalise_type` (or a fixed type of its mapping) and its property keys
    with :func:`normalise_key`: the events are ``normalised`` in the sense of
    :func:`~telemetry_core.collector.ingest.check_built` (tests hold every
    translator to it).
    """

    events: list[Event] = attrs.field(factory=list)
    origins: list[int] = attrs.field(factory=list)
    errors: list[EventError] = attrs.field(factory=list)
    total: int = 0

    def add(self, index: int, event: Event) -> None:
        """Add the record at ``index``, translated into ``event``."""
        self.events.append(event)
        self.origins.append(index)

    @property
    def raws(self) -> list[msgspec.Raw]:
        """Each event as wire JSON (encoded in one call, split in another)."""
        if not self.events:
            return []
        return _raw_list.decode(_event_encoder.encode(self.events))

    def reject(self, index: int, code: str, message: str) -> None:
        """Record that the record at ``index`` could not be translated."""
        self.errors.append(EventError(index, code, message))

    def all_errors(self, verdict: Sequence[EventError]) -> list[EventError]:
        """Every rejection of the request, by request index: the translation's
        and those of ``verdict`` (indexed into :attr:`raws`), in index order."""
        errors = list(self.errors)
        errors.extend(EventError(self.origins[e.index], e.code, e.message) for e in verdict)
        errors.sort(key=lambda e: e.index)
        return errors


def first_messages(errors: Iterable[EventError], limit: int = 3) -> str:
    """A short developer-facing summary of ``errors`` (the first ``limit``)."""
    items = list(errors)
    parts = [f"record {e.index}: {e.code}: {e.message}" for e in items[:limit]]
    if len(items) > limit:
        parts.append(f"and {len(items) - limit} more")
    return "; ".join(parts)
