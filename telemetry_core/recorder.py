"""The recording pipeline: from ``track()``'s arguments to a checked, scrubbed event.

One pipeline, in this order: the event type; duration and success; the
properties copied with their cheap bounds checked in O(size) (count, key and
value lengths, types, finite numbers) before any scrubbing or PII pattern runs;
the session id; scrubbing (the ``telemetry_scrub_event`` chain); the PII
re-check of what scrubbing left; the schema check (:func:`validate_event`); the
encoded size. The event carries nothing else about the machine.

Its fast path is a memory inside the same pipeline, not a second copy of it:
when every registered scrubber declares that its verdict on a property depends
on that key and value alone and leaves no personal data
(:meth:`PluginHost.scrub_verdicts_reusable`), the verdict on each property of a
valid event is remembered. An event whose properties were all seen before in a
valid event, with the same install, app and version, then needs only what is
new checked: duration, success, timestamp and size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, cast

import msgspec

from telemetry_core._memo import BoundedMap
from telemetry_core.errors import EventRejected
from telemetry_core.pii import find_pii
from telemetry_core.schema import (
    EVENT_TYPE_PATTERN,
    INT64_MAX,
    INT64_MIN,
    MAX_DURATION_MS,
    MAX_EVENT_BYTES,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_LENGTH,
    MAX_PROPERTY_VALUE_LENGTH,
    MAX_SHORT_STRING_LENGTH,
    Event,
    PropertyValue,
    new_event_id,
    validate_event,
)

if TYPE_CHECKING:
    from telemetry_core.models import Clock
    from telemetry_core.plugin_host import PluginHost

__all__ = ["Identity", "Recorder"]

#: Scrubbing verdicts remembered per recorder (dropped all at once when full);
#: string values longer than _VERDICT_VALUE_LENGTH are never remembered.
_VERDICTS: Final = 2048
_VERDICT_VALUE_LENGTH: Final = 256
# An event whose properties hold fewer characters than this cannot encode to
# more than MAX_EVENT_BYTES (6 bytes per escaped character, plus every other
# field at its maximum length), so its encoded size need not be measured.
_SMALL_EVENT_CHARS: Final = (MAX_EVENT_BYTES - 4096) // 6
#: Scrub verdict: the property stays as it is.
_KEEP: Final = object()
_MISSING: Final = object()

_encoder = msgspec.json.Encoder()

#: The fixed fields of every event a service records: (install id, app, app version).
Identity = tuple[str, str, str | None]
#: A verdict: _KEEP, or (the new value or _MISSING for a dropped key, its counter).
_Verdict = object


def counter_name(prefix: str, code: str) -> str:
    """The name of a local counter: ``prefix:code``."""
    return f"{prefix}:{code}"


class Recorder:
    """Builds events for one service (see the module docstring).

    :param host: the plugin host whose scrubbing chain runs.
    :param count: counts a local counter (``scrubbed:<kind>``).
    :param clock: wall clock in seconds; dates the events.
    """

    def __init__(self, host: PluginHost, count: Callable[[str], None], clock: Clock) -> None:
        self._host = host
        self._count = count
        self._clock = clock
        # Verdicts by property: (key, string value), or key for other types.
        self._verdicts: BoundedMap[object, _Verdict] = BoundedMap(size=_VERDICTS)
        # The same verdicts for properties seen in a valid event, keyed by
        # (key, string value) or (key, type): such a property needs no check.
        self._known: BoundedMap[object, _Verdict] = BoundedMap(size=_VERDICTS)
        # The identity of the last valid event.
        self._trusted: Identity | None = None

    def build(
        self,
        identity: Identity,
        event_type: str,
        properties: Mapping[str, PropertyValue] | None,
        *,
        duration_ms: float | None,
        success: bool | None,
        session_id: str | None,
        remember: bool,
    ) -> Event:
        """A checked, scrubbed event, or :class:`EventRejected` saying why not.

        :param remember: the scrubbers' verdicts may be reused (see
            :meth:`PluginHost.scrub_verdicts_reusable`).
        """
        if not isinstance(event_type, str) or not EVENT_TYPE_PATTERN.match(event_type):
            raise EventRejected("invalid_type", "type must match ^[a-z][a-z0-9_.:-]{0,63}$")
        known = None
        if remember and session_id is None and self._trusted == identity:
            known = self._known_properties(properties)
        if known is not None:
            props, chars, counters = known
            _check_duration_and_success(duration_ms, success)
            for counter in counters or ():
                self._count(counter)
        else:
            props, chars = _copy_properties(properties)
            _check_duration_and_success(duration_ms, success)
            _check_session(session_id)
            original = self._scrub(event_type, props, remember)
        timestamp = int(self._clock() * 1000)
        install_id, app, app_version = identity
        event = Event(
            id=new_event_id(),
            type=event_type,
            timestamp=timestamp,
            install_id=install_id,
            app=app,
            app_version=app_version,
            session_id=session_id,
            duration_ms=None if duration_ms is None else float(duration_ms),
            success=success,
            properties=props,
        )
        if known is None:
            problem = validate_event(event, now_ms=timestamp)
            if problem is not None:
                raise EventRejected(*problem)
        elif not 0 <= timestamp <= INT64_MAX:
            raise EventRejected(
                "invalid_timestamp", "timestamp must be milliseconds since the epoch"
            )
        if chars >= _SMALL_EVENT_CHARS and len(_encoder.encode(event)) > MAX_EVENT_BYTES:
            raise EventRejected("too_large", f"the encoded event exceeds {MAX_EVENT_BYTES} bytes")
        if known is None and remember:
            self._learn(identity, original)
        return event

    # -- scrubbing -------------------------------------------------------------

    def _scrub(
        self, event_type: str, props: dict[str, PropertyValue], remember: bool
    ) -> list[tuple[str, PropertyValue]] | None:
        """Scrub ``props`` in place; return the properties as given when verdicts
        are remembered (to learn from once the event is valid)."""
        if not props:
            return None
        if remember:
            original = list(props.items())
            self._scrub_remembering(event_type, props)
            return original
        before = dict(props)
        self._host.scrub_event(event_type, props)
        for key, value in before.items():
            new = props.get(key, _MISSING)
            # Identity first: a NaN is not equal to itself but was not changed.
            if new is not value and (new is _MISSING or new != value):
                self._count(_scrubbed_counter(value))
        for key, value in props.items():
            if isinstance(value, str) and (kind := find_pii(value)) is not None:
                raise EventRejected("pii", f"property {key!r} still holds {kind} after scrubbing")
        return None

    def _scrub_remembering(self, event_type: str, props: dict[str, PropertyValue]) -> None:
        """Scrub ``props`` in place with the chain, asking it only about
        properties whose verdict is not remembered (one call for all of them)."""
        verdicts = self._verdicts.items
        todo: dict[str, PropertyValue] = {}
        changes: list[tuple[str, _Verdict]] = []
        for key, value in props.items():
            verdict = verdicts.get((key, value) if type(value) is str else key)
            if verdict is None:
                todo[key] = value
            elif verdict is not _KEEP:
                changes.append((key, verdict))
        if todo:
            before = dict(todo)
            self._host.scrub_event(event_type, todo)
            room = len(before)
            for key, value in before.items():
                verdict = _verdict(value, todo.get(key, _MISSING))
                if verdict is not _KEEP:
                    changes.append((key, verdict))
                if type(value) is not str:
                    self._verdicts.remember(key, verdict, room=room)
                elif len(value) <= _VERDICT_VALUE_LENGTH:
                    self._verdicts.remember((key, value), verdict, room=room)
                room = 1
        for key, verdict in changes:
            new, counter = cast("tuple[object, str]", verdict)
            if new is _MISSING:
                del props[key]
            else:
                props[key] = cast("PropertyValue", new)
            self._count(counter)

    # -- the memory of valid events ------------------------------------------

    def _learn(self, identity: Identity, original: list[tuple[str, PropertyValue]] | None) -> None:
        """Remember what a valid event showed: its identity, and for each
        property the scrubbers' verdict, now known to yield a valid property."""
        self._trusted = identity
        if not original:
            return
        verdicts = self._verdicts.items
        room = len(original)
        for key, value in original:
            kind = type(value)
            verdict = verdicts.get((key, value) if kind is str else key)
            if verdict is not None:
                self._known.remember(
                    (key, value) if kind is str else (key, kind), verdict, room=room
                )
                room = 1

    def _known_properties(
        self, properties: Mapping[str, PropertyValue] | None
    ) -> tuple[dict[str, PropertyValue], int, list[str] | None] | None:
        """``properties`` scrubbed and checked when every one of them was seen
        before in a valid event (the common case: apps repeat keys and values);
        else None, and the whole pipeline decides.

        Returns the properties to store, their characters (keys and string
        values) and the scrub counters to add.
        """
        if properties is None:
            return {}, 0, None
        if type(properties) is not dict or len(properties) > MAX_PROPERTIES:
            return None
        known = self._known.items
        props: dict[str, PropertyValue] = {}
        chars = 0
        counters: list[str] | None = None
        for key, value in properties.items():
            if type(key) is not str:
                return None
            kind = type(value)
            if kind is str:
                verdict = known.get((key, value))
            elif (kind is int and not INT64_MIN <= value <= INT64_MAX) or (
                kind is float and not math.isfinite(value)
            ):
                return None
            else:
                verdict = known.get((key, kind))
            if verdict is _KEEP:
                props[key] = value
                chars += len(key) + (len(value) if kind is str else 0)
                continue
            if verdict is None:
                return None
            new, counter = cast("tuple[object, str]", verdict)
            if new is not _MISSING:
                props[key] = cast("PropertyValue", new)
                chars += len(new) if type(new) is str else 0
            if counters is None:
                counters = []
            counters.append(counter)
            chars += len(key)
        return props, chars, counters


def _scrubbed_counter(value: PropertyValue) -> str:
    kind = find_pii(value) if isinstance(value, str) else None
    return counter_name("scrubbed", kind or "identifier")


def _verdict(value: PropertyValue, new: object) -> _Verdict:
    """What the scrubbers did to one property: _KEEP, or (new value, counter)."""
    if new is value or (new is not _MISSING and new == value):
        return _KEEP
    return (new, _scrubbed_counter(value))


def _check_duration_and_success(duration_ms: float | None, success: bool | None) -> None:
    if duration_ms is not None:
        if isinstance(duration_ms, bool) or not isinstance(duration_ms, (int, float)):
            raise EventRejected("invalid_duration", "duration_ms must be a number")
        if not math.isfinite(duration_ms) or not 0 <= duration_ms < MAX_DURATION_MS:
            raise EventRejected("invalid_duration", "duration_ms must be a finite number >= 0")
    if success is not None and not isinstance(success, bool):
        raise EventRejected("invalid_field", "success must be True, False or None")


def _check_session(session_id: str | None) -> None:
    if session_id is None:
        return
    if not isinstance(session_id, str):
        raise EventRejected("invalid_field", "session_id must be a string")
    if len(session_id) > MAX_SHORT_STRING_LENGTH:
        raise EventRejected("invalid_field", f"session_id is longer than {MAX_SHORT_STRING_LENGTH}")
    if find_pii(session_id) is not None:
        raise EventRejected("pii", "session_id looks like personal data")


def _copy_properties(
    properties: Mapping[str, PropertyValue] | None,
) -> tuple[dict[str, PropertyValue], int]:
    """Copy ``properties``, checking the cheap bounds (count, key and value
    lengths, types, finite numbers) in O(size), before anything scans the text.

    Subclasses of str, int and float become their base type (the encoder
    refuses them). Returns the copy and the number of characters in its keys
    and string values.
    """
    if properties is None:
        return {}, 0
    if not isinstance(properties, Mapping):
        raise EventRejected("invalid_property", "properties must be a mapping")
    if len(properties) > MAX_PROPERTIES:
        raise EventRejected(
            "too_many_properties", f"at most {MAX_PROPERTIES} properties are allowed"
        )
    props: dict[str, PropertyValue] = {}
    chars = 0
    for raw_key, raw_value in properties.items():
        key = raw_key if type(raw_key) is str else _plain_key(raw_key)
        if len(key) > MAX_PROPERTY_KEY_LENGTH:
            _plain_key(key)  # raises, naming the key
        kind = type(raw_value)
        if kind is str or kind is int or kind is float or kind is bool or raw_value is None:
            value: PropertyValue = raw_value
        else:
            value = _plain_value(key, raw_value)
        if type(value) is str:
            if len(value) > MAX_PROPERTY_VALUE_LENGTH:
                raise EventRejected(
                    "invalid_property",
                    f"property {key!r} is longer than {MAX_PROPERTY_VALUE_LENGTH}",
                )
            chars += len(value)
        elif type(value) is float and not math.isfinite(value):
            raise EventRejected("invalid_property", f"property {key!r} must be finite")
        chars += len(key)
        props[key] = value
    if len(props) > MAX_PROPERTIES:  # a mapping whose len() and items() disagree
        raise EventRejected(
            "too_many_properties", f"at most {MAX_PROPERTIES} properties are allowed"
        )
    return props, chars


def _plain_key(key: object) -> str:
    if type(key) is not str:
        if not isinstance(key, str):
            raise EventRejected("invalid_property", "property keys must be strings")
        key = str.__str__(key)
    if len(key) > MAX_PROPERTY_KEY_LENGTH:
        raise EventRejected(
            "invalid_property",
            f"property key {key[:MAX_PROPERTY_KEY_LENGTH]!r}... is longer than "
            f"{MAX_PROPERTY_KEY_LENGTH}",
        )
    return key


def _plain_value(key: str, value: object) -> PropertyValue:
    """``value`` as an exact str/int/float/bool/None (a subclass becomes its base
    type, without calling methods it may override)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):  # bool cannot be subclassed
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    raise EventRejected(
        "invalid_property",
        f"property {key!r} has type {kind.__name__}; use str, int, float, bool or None",
    )
