"""PostHog- and Segment-compatible ingest: their bodies translated into schema-1 events.

An app using ``posthog-python`` (or posthog-js, or any PostHog SDK sending
JSON) or Segment's ``analytics-python`` only changes its ``host`` to feed the
collector. What differs from ``/v1/submit`` is decided here, as pure functions;
the routes hand the result to the ``/v1/submit`` pipeline.

PostHog (``/batch/``, ``/capture/``, ``/e/``, ``/i/v0/e/``): a body is
``{"api_key", "batch": [event, ...]}``, a single event with ``api_key`` (or
``token``) beside it, or a list of events carrying ``properties.token``.
Segment (``/v1/batch``, ``/v1/track``): ``{"writeKey", "batch": [message, ...]}``
or a single message; the key may instead come as Basic auth (the route reads
it).

The mapping (docs/protocol.md has the tables):

- id: PostHog ``uuid`` / Segment ``messageId`` when it is a UUID; a Segment
  ``messageId`` that is not becomes a UUID derived from it; a message without
  one gets a UUID derived from its content. A resent batch is counted once.
- type: the event name normalised (``Button Clicked`` -> ``button_clicked``);
  PostHog's own events by :data:`POSTHOG_EVENT_TYPES` (``$pageview`` ->
  ``page_view``); Segment ``page`` / ``screen`` calls -> ``page_view`` /
  ``screen_view``.
- install_id: :class:`~telemetry_core.collector.identity.IdentityHasher` of
  ``distinct_id`` (PostHog) or ``anonymousId``, else ``userId`` (Segment): the
  raw id is never stored.
- properties: flattened one level; ``$`` properties (the SDKs' own) dropped;
  a numeric ``duration_ms`` and a boolean ``success`` become the event's fields.
- app / app_version: PostHog ``$app_name`` / ``$app_version``, Segment
  ``context.app.name`` / ``.version``; else ``posthog`` / ``segment``.

Person, group and alias calls (PostHog ``$identify``, ``$set``,
``$create_alias``, ``$groupidentify``, ...; Segment ``identify``, ``group``,
``alias``) carry profile data, not usage: they are rejected
(``unsupported_event``) and counted, never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from itertools import repeat
from operator import attrgetter
from typing import Any, Final, cast

import attrs
import msgspec

from telemetry_core.collector.identity import IdentityHasher
from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.translation import (
    CANONICAL_UUID,
    Translation,
    derived_id,
    flatten_properties,
    normalise_type,
    scalar_drops,
    uuid_or_none,
)
from telemetry_core.schema import Event

__all__ = [
    "POSTHOG_EVENT_TYPES",
    "POSTHOG_PROFILE_EVENTS",
    "SEGMENT_CALL_TYPES",
    "AnalyticsBatch",
    "decode_posthog",
    "decode_segment",
    "translate_posthog",
    "translate_segment",
]

#: PostHog's own events and the type each is stored as.
POSTHOG_EVENT_TYPES: Final[Mapping[str, str]] = {
    "$pageview": "page_view",
    "$pageleave": "page_leave",
    "$screen": "screen_view",
    "$autocapture": "autocapture",
    "$rageclick": "rage_click",
    "$dead_click": "dead_click",
    "$exception": "exception",
    "$feature_flag_called": "feature_flag_called",
    "$web_vitals": "web_vitals",
    "$opt_in": "opt_in",
}
#: PostHog events that carry person or group profiles: rejected, never stored.
POSTHOG_PROFILE_EVENTS: Final = frozenset(
    {
        "$identify",
        "$set",
        "$create_alias",
        "$merge_dangerously",
        "$groupidentify",
        "$delete_person",
        "$set_once",
    }
)
#: Segment call types stored, and the event type of those without an event name.
SEGMENT_CALL_TYPES: Final[Mapping[str, str | None]] = {
    "track": None,
    "page": "page_view",
    "screen": "screen_view",
}


@attrs.frozen
class AnalyticsBatch:
    """A decoded SDK request: the key found in its body (if any) and its messages.

    ``sdk_shaped`` batches come from the typed decode of a body as the SDKs send
    it: their messages are :class:`_PostHogMessage` or :class:`_SegmentMessage`
    values (every field the translation reads, each of its type), not dicts.
    """

    key: str | None
    messages: list[Any]
    sdk_shaped: bool = False


_any_decoder = msgspec.json.Decoder()
_Scalar = str | int | float | bool | None


class _PostHogMessage(msgspec.Struct, gc=False):
    """A PostHog event as posthog-python sends it: what the translation reads of it,
    each field present and of the type the batch-wide reading needs (properties
    scalars only). Other fields are skipped. No cycles: a tree of plain values."""

    event: str
    distinct_id: str
    properties: dict[str, _Scalar]
    timestamp: str
    uuid: str


class _PostHogBatch(msgspec.Struct, gc=False):
    batch: list[_PostHogMessage]
    api_key: str = ""


class _SegmentMessage(msgspec.Struct, gc=False):
    """A Segment track call as analytics-python sends it (see :class:`_PostHogMessage`);
    the fields the translation reads of other calls too, absent ones as ``None``,
    as ``dict.get`` reads them."""

    event: str
    anonymousId: str  # Segment's names
    properties: dict[str, _Scalar]
    timestamp: str
    type: str = "track"
    messageId: Any = None
    userId: Any = None
    context: Any = None
    name: Any = None


class _SegmentBatch(msgspec.Struct, gc=False):
    batch: list[_SegmentMessage]
    writeKey: str = ""


_posthog_decoder = msgspec.json.Decoder(_PostHogBatch)
_segment_decoder = msgspec.json.Decoder(_SegmentBatch)


def _typed(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """``body`` decoded as a batch the SDKs send, or ``None`` (then the generic
    decode reads it, and says what is wrong with it)."""
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def _as_dicts(batch: AnalyticsBatch) -> list[Any]:
    """An ``sdk_shaped`` batch's structs as the dicts the generic decode gives
    (an absent field and a null one are both ``None`` to ``dict.get``)."""
    return [msgspec.structs.asdict(m) for m in batch.messages]


def _decode_json(body: bytes) -> Any:
    try:
        return _any_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise IngestError(400, "malformed", f"invalid JSON body: {exc}") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def decode_posthog(body: bytes, *, max_events: int) -> AnalyticsBatch:
    """Decode a PostHog capture body (batch, single event or list of events).

    Raises :class:`IngestError` 400 (``malformed``) for anything else, 413
    (``too_many_events``) past ``max_events``.
    """
    typed = _typed(_posthog_decoder, body)
    if typed is not None and typed.api_key:
        return _bounded(AnalyticsBatch(typed.api_key, typed.batch, sdk_shaped=True), max_events)
    return _bounded(_posthog_generic(body), max_events)


def _posthog_generic(body: bytes) -> AnalyticsBatch:
    """:func:`decode_posthog` without the typed decode (and without the bound)."""
    data = _decode_json(body)
    if isinstance(data, list):
        messages = data
        first = next((m for m in data if isinstance(m, dict)), {})
        props = first.get("properties")
        key = _text(first.get("api_key")) or _text(first.get("token"))
        if key is None and isinstance(props, dict):
            key = _text(props.get("token"))
    elif isinstance(data, dict):
        key = _text(data.get("api_key")) or _text(data.get("token"))
        batch = data.get("batch", data.get("data"))
        if isinstance(batch, list):
            messages = batch
        elif "event" in data:
            messages = [data]
            props = data.get("properties")
            if key is None and isinstance(props, dict):
                key = _text(props.get("token"))
        else:
            raise IngestError(400, "malformed", "expected a batch or an event")
    else:
        raise IngestError(400, "malformed", "expected a JSON object or list")
    return AnalyticsBatch(key, messages)


def decode_segment(body: bytes, *, max_events: int) -> AnalyticsBatch:
    """Decode a Segment body: ``{"batch": [...]}`` or a single message."""
    typed = _typed(_segment_decoder, body)
    if typed is not None:
        key = typed.writeKey or None  # what _text gives for a string
        return _bounded(AnalyticsBatch(key, typed.batch, sdk_shaped=True), max_events)
    return _bounded(_segment_generic(body), max_events)


def _segment_generic(body: bytes) -> AnalyticsBatch:
    """:func:`decode_segment` without the typed decode (and without the bound)."""
    data = _decode_json(body)
    if not isinstance(data, dict):
        raise IngestError(400, "malformed", "expected a JSON object")
    key = _text(data.get("writeKey"))
    batch = data.get("batch")
    if isinstance(batch, list):
        messages = batch
    elif "batch" in data:
        raise IngestError(400, "malformed", "batch must be a list")
    else:
        messages = [data]
    return AnalyticsBatch(key, messages)


def _bounded(batch: AnalyticsBatch, max_events: int) -> AnalyticsBatch:
    if len(batch.messages) > max_events:
        raise IngestError(
            413, "too_many_events", f"{len(batch.messages)} events; at most {max_events}"
        )
    return batch


def _timestamp_ms(value: object, received_ms: int) -> int | None:
    """Milliseconds of an ISO-8601 timestamp (naive means UTC); ``received_ms``
    when absent; ``None`` when unreadable."""
    if type(value) is not str:
        return received_ms if value is None else None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _user_id(value: object) -> str | None:
    if type(value) is str:  # the common case first
        return value or None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    return _text(value)


def _lift(properties: dict[str, Any]) -> tuple[Any, Any]:
    """Pop ``duration_ms`` (a number) and ``success`` (a bool) for the event's fields.

    ``properties`` come from :func:`flatten_properties`, which keeps values of
    the exact scalar types only, so a number is a value of type ``int`` or ``float``.
    """
    duration = properties.get("duration_ms")
    success = properties.get("success")
    if type(duration) in _NUMBERS:
        del properties["duration_ms"]
    else:
        duration = None
    if success is True or success is False:
        del properties["success"]
    else:
        success = None
    return duration, success


_NUMBERS: Final = frozenset({int, float})


#: Why a message was not translated: its error code and message.
_Rejection = tuple[str, str]
_BAD_TIMESTAMP: Final = ("invalid_field", "timestamp is not ISO-8601")


def _each(
    messages: list[Any], read: Callable[[dict[str, Any]], Event | _Rejection], not_object: str
) -> Translation:
    """What the per-message readers share: each message that is a JSON object
    translated by ``read`` into its event or its rejection, any other rejected
    as ``invalid_event`` with ``not_object``."""
    out = Translation(total=len(messages))
    for index, message in enumerate(messages):
        result = read(message) if isinstance(message, dict) else ("invalid_event", not_object)
        if isinstance(result, Event):
            out.add(index, result)
        else:
            out.reject(index, *result)
    return out


def translate_posthog(
    batch: AnalyticsBatch, *, hasher: IdentityHasher, received_ms: int
) -> Translation:
    """Translate PostHog capture events into schema-1 events.

    A batch as the SDKs send it (every event an object with a name, properties,
    a ``distinct_id``, an ISO-8601 timestamp with its offset and a canonical
    ``uuid``) is read field by field across the whole batch
    (:func:`_posthog_ordinary`); any other batch event by event
    (:func:`_posthog_each`). Both give the same events.
    """
    return _translate(
        batch,
        hasher,
        received_ms,
        typed=_posthog_typed,
        ordinary=_posthog_ordinary,
        each=_posthog_each,
    )


def _translate(
    batch: AnalyticsBatch,
    hasher: IdentityHasher,
    received_ms: int,
    *,
    typed: Callable[[list[Any], Callable[[str], str]], Translation | None],
    ordinary: Callable[[list[Any], Callable[[str], str]], Translation | None],
    each: Callable[[AnalyticsBatch, Callable[[str], str], int], Translation],
) -> Translation:
    """The first reading that covers the batch: typed structs (an SDK-shaped
    body), then batch-wide from dicts, then message by message."""
    hash_id = hasher.memo()
    if batch.sdk_shaped:
        result = typed(batch.messages, hash_id)
        if result is not None:
            return result
        batch = AnalyticsBatch(batch.key, _as_dicts(batch))
    result = ordinary(batch.messages, hash_id)
    return result if result is not None else each(batch, hash_id, received_ms)


def _posthog_each(
    batch: AnalyticsBatch, hash_id: Callable[[str], str], received_ms: int
) -> Translation:
    """The reference translation: each event on its own, each rejection with its reason."""

    def read(message: dict[str, Any]) -> Event | _Rejection:
        name = message.get("event")
        if not isinstance(name, str) or not name:
            return "missing_type", "the event has no name"
        if name in POSTHOG_PROFILE_EVENTS:
            return "unsupported_event", f"{name} carries profile data; not stored"
        event_type = _posthog_type(name)
        if event_type is None:
            return "missing_type", f"event name {name[:64]!r} has no letter"
        raw_props = message.get("properties")
        props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
        distinct = _user_id(message.get("distinct_id")) or _user_id(props.get("distinct_id"))
        if distinct is None:
            return "missing_install", "the event has no distinct_id"
        timestamp = _timestamp_ms(message.get("timestamp"), received_ms)
        if timestamp is None:
            return _BAD_TIMESTAMP
        return _posthog_event(
            name,
            event_type,
            props,
            install=hash_id(distinct),
            timestamp=timestamp,
            event_id=uuid_or_none(message.get("uuid")),
        )

    return _each(batch.messages, read, "an event must be a JSON object")


def _posthog_event(
    name: str,
    event_type: str,
    props: dict[str, Any],
    *,
    install: str,
    timestamp: int,
    event_id: str | None,
    properties: dict[str, Any] | None = None,
) -> Event:
    """The event of a PostHog capture whose name, user and timestamp were read
    (``properties``: ``props`` as :func:`_posthog_properties` gives them, unless given)."""
    if properties is None:
        properties = _posthog_properties(props)
    duration, success = _lift(properties)
    if event_id is None:
        event_id = derived_id("posthog", [install, name, timestamp, properties, duration, success])
    # What _text gives, without three calls per event.
    app = props.get("$app_name")
    version = props.get("$app_version")
    session = props.get("$session_id")
    return Event(
        id=event_id,
        type=event_type,
        timestamp=timestamp,
        install_id=install,
        app=app if isinstance(app, str) and app else "posthog",
        app_version=version if isinstance(version, str) and version else None,
        session_id=session if isinstance(session, str) and session else None,
        duration_ms=duration,
        success=success,
        properties=properties,
    )


#: Property names a PostHog event's properties do not keep (the SDKs' copies of
#: the user and the key).
_POSTHOG_DROPPED_NAMES: Final = frozenset({"distinct_id", "token"})


def _posthog_properties(props: dict[str, Any]) -> dict[str, Any]:
    """A PostHog event's properties as kept: flattened, ``$`` keys and the
    :data:`_POSTHOG_DROPPED_NAMES` dropped."""
    properties = flatten_properties(props, drop_prefix="$")
    for name in _POSTHOG_DROPPED_NAMES:
        properties.pop(name, None)
    return properties


def _without(props: dict[str, Any], drops: list[str]) -> dict[str, Any]:
    """A copy of ``props`` less ``drops`` (see :func:`scalar_drops`)."""
    kept = props.copy()
    for key in drops:
        if key in kept:
            del kept[key]
    return kept


_EVENT: Final = attrgetter("event")
_PROPERTIES: Final = attrgetter("properties")
_TIMESTAMP: Final = attrgetter("timestamp")


def _posthog_typed(
    messages: list[_PostHogMessage], hash_id: Callable[[str], str]
) -> Translation | None:
    """:func:`_posthog_ordinary` of an ``sdk_shaped`` batch: its fields typed by the
    decode, its properties (scalars only) kept by deleting keys from a copy of each
    map (:func:`scalar_drops`) instead of the flattening loop, unless a key needs a
    new name; ``None`` for a batch this does not cover (read then as dicts)."""
    if not messages:
        return None
    props = list(map(_PROPERTIES, messages))
    return _posthog_batch(
        list(map(_EVENT, messages)),
        props,
        list(map(attrgetter("distinct_id"), messages)),
        list(map(_TIMESTAMP, messages)),
        list(map(attrgetter("uuid"), messages)),
        hash_id=hash_id,
        drops=scalar_drops(
            set().union(*props), drop_prefix="$", dropped_names=_POSTHOG_DROPPED_NAMES
        ),
    )


def _column(messages: list[Any], key: str, kind: type) -> list[Any] | None:
    """``message[key]`` of every message, when each is of type ``kind``; else ``None``."""
    values = list(map(dict.get, messages, repeat(key)))
    return values if set(map(type, values)) == {kind} else None


def _posthog_ordinary(messages: list[Any], hash_id: Callable[[str], str]) -> Translation | None:
    """The translation of a batch none of whose events :func:`_posthog_each` would
    reject or read differently, with each field read across the batch in one call
    where it can; ``None`` for any other batch (or an empty one)."""
    if not messages or set(map(type, messages)) != {dict}:
        return None
    names = _column(messages, "event", str)
    props = _column(messages, "properties", dict)
    users = _column(messages, "distinct_id", str)
    stamps = _column(messages, "timestamp", str)
    ids = _column(messages, "uuid", str)
    if names is None or props is None or users is None or stamps is None or ids is None:
        return None
    return _posthog_batch(names, props, users, stamps, ids, hash_id=hash_id, drops=None)


def _posthog_batch(
    names: list[str],
    props: list[dict[str, Any]],
    users: list[str],
    stamps: list[str],
    ids: list[str],
    *,
    hash_id: Callable[[str], str],
    drops: list[str] | None,
) -> Translation | None:
    """What the batch-wide PostHog readers share, from the batch's columns: every
    name a valid type, every id a canonical UUID, users and timestamps readable
    (else ``None``). ``drops``: the keys deleted from a copy of each map (scalar
    maps whose keys keep their names); ``None``: each map is flattened."""
    types = {name: _posthog_type(name) for name in set(names)}
    if None in types.values() or None in map(CANONICAL_UUID.fullmatch, ids):
        return None
    read = _installs_and_times(users, stamps, hash_id)
    if read is None:
        return None
    installs, timestamps = read
    known = cast(dict[str, str], types)
    return _all_kept(
        [
            _posthog_event(
                name,
                known[name],
                p,
                install=installs[user],
                timestamp=timestamp,
                event_id=event_id,
                properties=None if drops is None else _without(p, drops),
            )
            for name, p, user, timestamp, event_id in zip(
                names, props, users, timestamps, ids, strict=True
            )
        ]
    )


def _installs_and_times(
    users: list[str], stamps: list[str], hash_id: Callable[[str], str]
) -> tuple[dict[str, str], list[int]] | None:
    """What the batch-wide readers share: each user's install id (every user
    hashed once) and each message's timestamp, when no user is empty and every
    timestamp reads with :func:`_aware_ms`; ``None`` otherwise."""
    if "" in users:
        return None
    timestamps = _aware_ms(stamps)
    if timestamps is None:
        return None
    return {user: hash_id(user) for user in set(users)}, timestamps


def _all_kept(events: list[Event]) -> Translation:
    """The translation of a batch whose every message became the event at its index."""
    return Translation(events=events, origins=list(range(len(events))), total=len(events))


def _aware_ms(stamps: list[str]) -> list[int] | None:
    """What :func:`_timestamp_ms` reads from each of ``stamps``, when every one is an
    ISO-8601 time with its offset (or ``Z``); ``None`` otherwise."""
    try:
        utc = map(str.replace, stamps, repeat("Z"), repeat("+00:00"))
        parsed = list(map(datetime.fromisoformat, utc))
    except ValueError:
        return None
    if None in map(datetime.utcoffset, parsed):
        return None  # naive timestamps: read one by one (they mean UTC)
    return [int(seconds * 1000) for seconds in map(datetime.timestamp, parsed)]


def _posthog_type(name: str) -> str | None:
    """The event type of a PostHog event name, or ``None`` when it is not stored."""
    if not name or name in POSTHOG_PROFILE_EVENTS:
        return None
    return POSTHOG_EVENT_TYPES.get(name) or normalise_type(name)


def _segment_type(message: dict[str, Any]) -> tuple[str | None, str]:
    """The event type of a Segment message, or ``None`` and why not."""
    call = message.get("type", "track")
    if not isinstance(call, str) or call not in SEGMENT_CALL_TYPES:  # a list is unhashable
        return None, f"{str(call)[:32]!r} calls carry profile data or are unknown; not stored"
    fixed = SEGMENT_CALL_TYPES[call]
    if fixed is not None:
        return fixed, ""
    name = message.get("event")
    if not isinstance(name, str) or not name:
        return None, "the track call has no event name"
    normalised = normalise_type(name)
    return normalised, "" if normalised else f"event name {name[:64]!r} has no letter"


def translate_segment(
    batch: AnalyticsBatch, *, hasher: IdentityHasher, received_ms: int
) -> Translation:
    """Translate Segment messages (track, page, screen) into schema-1 events.

    A batch of track calls as analytics-python sends it (an event name, an
    ``anonymousId``, an ISO-8601 timestamp with its offset and properties in
    every message) is read field by field across the batch
    (:func:`_segment_ordinary`); any other batch message by message
    (:func:`_segment_each`). Both give the same events.
    """
    return _translate(
        batch,
        hasher,
        received_ms,
        typed=_segment_typed,
        ordinary=_segment_ordinary,
        each=_segment_each,
    )


def _segment_each(
    batch: AnalyticsBatch, hash_id: Callable[[str], str], received_ms: int
) -> Translation:
    """The reference translation: each message on its own, each rejection with its reason."""

    def read(message: dict[str, Any]) -> Event | _Rejection:
        event_type, why = _segment_type(message)
        if event_type is None:
            tracked = message.get("type", "track") == "track"
            return ("missing_type" if tracked else "unsupported_event"), why
        user = _user_id(message.get("anonymousId")) or _user_id(message.get("userId"))
        if user is None:
            return "missing_install", "the message has no anonymousId or userId"
        timestamp = _timestamp_ms(message.get("timestamp"), received_ms)
        if timestamp is None:
            return _BAD_TIMESTAMP
        return _segment_event(message, event_type, hash_id(user), timestamp)

    return _each(batch.messages, read, "a message must be a JSON object")


def _segment_event(
    message: dict[str, Any],
    event_type: str,
    install: str,
    timestamp: int,
    event_id: str | None = None,
) -> Event:
    """The event of a Segment message whose type, user and timestamp were read
    (and its id, when its ``messageId`` is a canonical UUID)."""
    raw_props = message.get("properties")
    properties = flatten_properties(raw_props if isinstance(raw_props, dict) else {})
    if message.get("type") in ("page", "screen"):
        page_name = _text(message.get("name"))
        if page_name is not None:
            properties.setdefault("name", page_name)
    duration, success = _lift(properties)
    if event_id is None:
        message_id = message.get("messageId")
        event_id = uuid_or_none(message_id) or (
            derived_id("segment", message_id)
            if isinstance(message_id, str) and message_id
            else derived_id("segment", [install, event_type, timestamp, properties])
        )
    name, version = _segment_app(message.get("context"))
    return Event(
        id=event_id,
        type=event_type,
        timestamp=timestamp,
        install_id=install,
        app=name,
        app_version=version,
        duration_ms=duration,
        success=success,
        properties=properties,
    )


def _segment_app(context: Any) -> tuple[str, str | None]:
    """The app name and version of a Segment message's ``context``."""
    app = context.get("app") if isinstance(context, dict) else None
    if not isinstance(app, dict):
        return "segment", None
    name, version = app.get("name"), app.get("version")  # what _text gives, sooner
    return (
        name if isinstance(name, str) and name else "segment",
        version if isinstance(version, str) and version else None,
    )


def _segment_typed(
    messages: list[_SegmentMessage], hash_id: Callable[[str], str]
) -> Translation | None:
    """:func:`_segment_ordinary` of an ``sdk_shaped`` batch of track calls with
    canonical ``messageId``s (properties as in :func:`_posthog_typed`); ``None``
    for any other."""
    if not messages or [m.type for m in messages].count("track") != len(messages):
        return None
    names = list(map(_EVENT, messages))
    ids = list(map(attrgetter("messageId"), messages))
    types = {name: normalise_type(name) for name in set(names)}  # None for ""
    if None in types.values() or set(map(type, ids)) != {str}:
        return None
    if None in map(CANONICAL_UUID.fullmatch, ids):
        return None
    users = list(map(attrgetter("anonymousId"), messages))
    read = _installs_and_times(users, list(map(_TIMESTAMP, messages)), hash_id)
    if read is None:
        return None
    installs, timestamps = read
    known = cast(dict[str, str], types)
    drops = scalar_drops(set().union(*map(_PROPERTIES, messages)))
    # A key that needs a new name: each map flattened, as the dict reading does.
    shaped: Callable[[dict[str, Any]], dict[str, Any]] = (
        flatten_properties if drops is None else partial(_without, drops=drops)
    )
    events = []
    for message, name, user, timestamp, event_id in zip(
        messages, names, users, timestamps, ids, strict=True
    ):
        properties = shaped(message.properties)
        duration, success = _lift(properties)
        app, version = _segment_app(message.context)
        events.append(
            Event(
                id=event_id,
                type=known[name],
                timestamp=timestamp,
                install_id=installs[user],
                app=app,
                app_version=version,
                duration_ms=duration,
                success=success,
                properties=properties,
            )
        )
    return _all_kept(events)


def _segment_ordinary(messages: list[Any], hash_id: Callable[[str], str]) -> Translation | None:
    """The translation of a batch of track calls none of which :func:`_segment_each`
    would reject or read differently, with the name, user and timestamp read across
    the batch; ``None`` for any other batch (or an empty one)."""
    if not messages or set(map(type, messages)) != {dict}:
        return None
    calls = list(map(dict.get, messages, repeat("type"), repeat("track")))
    names = _column(messages, "event", str)
    users = _column(messages, "anonymousId", str)
    stamps = _column(messages, "timestamp", str)
    tracks = calls.count("track") == len(calls)  # by equality: a call may be any JSON value
    if not tracks or names is None or users is None or stamps is None:
        return None
    types = {name: normalise_type(name) for name in set(names)}  # None for ""
    if None in types.values():
        return None
    read = _installs_and_times(users, stamps, hash_id)
    if read is None:
        return None
    installs, timestamps = read
    known = cast(dict[str, str], types)
    ids = _column(messages, "messageId", str)
    if ids is None or None in map(CANONICAL_UUID.fullmatch, ids):
        ids = [None] * len(messages)  # each message's id read on its own
    return _all_kept(
        [
            _segment_event(message, known[name], installs[user], timestamp, event_id)
            for message, name, user, timestamp, event_id in zip(
                messages, names, users, timestamps, ids, strict=True
            )
        ]
    )
