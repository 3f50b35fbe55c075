"""PostHog and Segment bodies translated into schema-1 events."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core.collector.analytics_sdks import (
    AnalyticsBatch,
    _lift,
    _posthog_each,
    _posthog_generic,
    _posthog_ordinary,
    _posthog_typed,
    _segment_each,
    _segment_generic,
    _segment_ordinary,
    _segment_typed,
    _timestamp_ms,
    _user_id,
    _without,
    decode_posthog,
    decode_segment,
    translate_posthog,
    translate_segment,
)
from telemetry_core.collector.identity import IdentityHasher, persisted_secret
from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.translation import (
    Translation,
    flatten_properties,
    normalise_key,
    normalise_type,
    scalar_drops,
)
from telemetry_core.schema import Event
from tests.conftest import assert_normalised

NOW_MS = 1_765_000_000_000
HASHER = IdentityHasher("s" * 32)
UUID_1 = "0190c1a2-0000-7000-8000-000000000001"


def posthog_event(**extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "Button Clicked",
        "distinct_id": "ann@example.com",
        "properties": {
            "$lib": "posthog-python",
            "$lib_version": "7.0.0",
            "$geoip_disable": True,
            "plan": "pro",
            "billing": {"cycle": "yearly", "seats": 3, "$internal": 1, "deep": {"x": 1}},
            "tags": ["a", "b"],
            "duration_ms": 40,
            "success": False,
        },
        "timestamp": "2025-12-06T05:46:40.250000+00:00",
        "uuid": UUID_1,
        "type": "capture",
    }
    event.update(extra)
    return event


def events(translation: Translation) -> list[Event]:
    return [msgspec.json.decode(raw, type=Event) for raw in translation.raws]


def posthog(*messages: dict[str, Any]) -> list[Event]:
    batch = AnalyticsBatch("key", list(messages))
    return events(translate_posthog(batch, hasher=HASHER, received_ms=NOW_MS))


def segment(*messages: dict[str, Any]) -> Translation:
    batch = AnalyticsBatch("key", list(messages))
    return translate_segment(batch, hasher=HASHER, received_ms=NOW_MS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Button Clicked", "button_clicked"),
        ("buttonClicked", "button_clicked"),
        ("$pageview", "pageview"),
        ("  Signed-Up (v2)!  ", "signed-up_v2"),
        ("checkout:step.2", "checkout:step.2"),
        ("123 go", None),
        ("$$$", None),
        ("x" * 80, "x" * 64),
    ],
)
def test_names_are_normalised_to_the_type_pattern(name: str, expected: str | None) -> None:
    assert normalise_type(name) == expected


def test_keys_are_normalised_to_the_key_pattern() -> None:
    assert normalise_key("Plan Name") == "Plan_Name"
    assert normalise_key("2fa") == "_2fa"
    assert normalise_key("") is None


def test_properties_are_flattened_one_level_and_sdk_properties_dropped() -> None:
    flat = flatten_properties(
        {"$lib": "x", "a": 1, "b": {"c": "d", "$e": 2, "f": {"g": 1}}, "h": [1]}, drop_prefix="$"
    )
    assert flat == {"a": 1, "b.c": "d"}


def test_a_posthog_event_maps_as_documented() -> None:
    [event] = posthog(posthog_event())
    assert event.id == UUID_1
    assert event.type == "button_clicked"
    assert event.timestamp == 1_765_000_000_250
    assert event.install_id == HASHER.hash("ann@example.com")
    assert event.app == "posthog"
    assert (event.duration_ms, event.success) == (40, False)
    assert event.properties == {"plan": "pro", "billing.cycle": "yearly", "billing.seats": 3}


def test_posthog_own_events_have_documented_types() -> None:
    [page, screen] = posthog(
        posthog_event(event="$pageview", uuid=str(uuid.uuid4())),
        posthog_event(event="$screen", uuid=str(uuid.uuid4())),
    )
    assert (page.type, screen.type) == ("page_view", "screen_view")


def test_posthog_app_name_and_version_come_from_the_sdk_properties() -> None:
    message = posthog_event()
    message["properties"].update({"$app_name": "Shop", "$app_version": "3.1"})
    [event] = posthog(message)
    assert (event.app, event.app_version) == ("Shop", "3.1")


def test_posthog_events_without_uuid_get_an_id_derived_from_content() -> None:
    message = posthog_event()
    del message["uuid"]
    [first] = posthog(message)
    [again] = posthog(message)
    [other] = posthog({**message, "timestamp": "2025-12-06T05:46:41+00:00"})
    assert first.id == again.id != other.id
    assert uuid.UUID(first.id).version == 5


def test_profile_events_and_events_without_user_are_rejected_by_index() -> None:
    batch = AnalyticsBatch(
        "key",
        [
            posthog_event(event="$identify"),
            posthog_event(distinct_id=None),
            "not an object",
            posthog_event(timestamp="yesterday"),
            posthog_event(),
        ],
    )
    translation = translate_posthog(batch, hasher=HASHER, received_ms=NOW_MS)
    assert [(e.index, e.code) for e in translation.errors] == [
        (0, "unsupported_event"),
        (1, "missing_install"),
        (2, "invalid_event"),
        (3, "invalid_field"),
    ]
    assert translation.origins == [4]


def test_posthog_bodies_are_read_in_all_three_shapes() -> None:
    batch = decode_posthog(
        json.dumps({"api_key": "k1", "batch": [posthog_event()]}).encode(), max_events=10
    )
    assert (batch.key, len(batch.messages)) == ("k1", 1)
    single = decode_posthog(json.dumps({**posthog_event(), "api_key": "k2"}).encode(), max_events=1)
    assert (single.key, len(single.messages)) == ("k2", 1)
    listed = posthog_event()
    listed["properties"]["token"] = "k3"
    as_list = decode_posthog(json.dumps([listed, listed]).encode(), max_events=10)
    assert (as_list.key, len(as_list.messages)) == ("k3", 2)
    [event] = posthog(listed)
    assert "token" not in event.properties


def test_malformed_and_oversized_bodies_are_refused() -> None:
    for body in (b"{", b'"text"', b'{"api_key": "k"}'):
        with pytest.raises(IngestError) as info:
            decode_posthog(body, max_events=10)
        assert info.value.status == 400
    with pytest.raises(IngestError) as info:
        decode_segment(json.dumps({"batch": [{}] * 3}).encode(), max_events=2)
    assert (info.value.status, info.value.code) == (413, "too_many_events")


def segment_track(**extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "anonymousId": "device-42",
        "userId": "ann@example.com",
        "properties": {"total": 30.5, "currency": "EUR", "items": [{"sku": 1}]},
        "context": {"library": {"name": "analytics-python"}, "ip": "10.1.2.3"},
        "timestamp": "2025-12-06T05:46:40.250+00:00",
        "messageId": UUID_1,
    }
    message.update(extra)
    return message


def test_a_segment_track_maps_as_documented() -> None:
    [event] = events(segment(segment_track()))
    assert (event.id, event.type, event.timestamp) == (UUID_1, "order_completed", 1_765_000_000_250)
    assert event.install_id == HASHER.hash("device-42")
    assert event.properties == {"total": 30.5, "currency": "EUR"}
    assert event.app == "segment"


def test_segment_user_id_is_hashed_when_there_is_no_anonymous_id() -> None:
    [event] = events(segment(segment_track(anonymousId=None)))
    assert event.install_id == HASHER.hash("ann@example.com")


def test_a_non_uuid_message_id_becomes_a_stable_uuid() -> None:
    [a] = events(segment(segment_track(messageId="ajs-next-1")))
    [b] = events(segment(segment_track(messageId="ajs-next-1", timestamp=None)))
    [c] = events(segment(segment_track(messageId="ajs-next-2")))
    assert a.id == b.id != c.id
    assert uuid.UUID(a.id).version == 5


def test_segment_page_and_screen_calls_are_views_and_profile_calls_are_rejected() -> None:
    translation = segment(
        segment_track(type="page", name="Pricing", messageId=str(uuid.uuid4())),
        segment_track(type="screen", name="Home", messageId=str(uuid.uuid4())),
        segment_track(type="identify", traits={"email": "ann@example.com"}),
        segment_track(type="alias"),
        segment_track(event=None),
    )
    page, screen = events(translation)
    assert (page.type, page.properties["name"]) == ("page_view", "Pricing")
    assert screen.type == "screen_view"
    assert [(e.index, e.code) for e in translation.errors] == [
        (2, "unsupported_event"),
        (3, "unsupported_event"),
        (4, "missing_type"),
    ]


def test_segment_single_message_and_write_key_are_read() -> None:
    batch = decode_segment(json.dumps({**segment_track(), "writeKey": "wk"}).encode(), max_events=5)
    assert (batch.key, len(batch.messages)) == ("wk", 1)


def test_the_identity_hash_is_keyed_stable_and_short() -> None:
    other = IdentityHasher("t" * 32)
    assert HASHER.hash("ann") == HASHER.hash("ann") != other.hash("ann")
    assert len(HASHER.hash("ann")) == 32
    with pytest.raises(ValueError, match="16"):
        IdentityHasher("short")


def test_the_persisted_secret_is_created_once_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "collector.db"
    first = persisted_secret(db_path=db)
    assert persisted_secret(db_path=db) == first
    with sqlite3.connect(db) as conn:
        [(stored,)] = conn.execute("SELECT value FROM collector_secrets").fetchall()
    conn.close()
    assert stored == first and len(first) == 64


# -- the fast field readers agree with their first, plain definitions ----------------------


def _reference_timestamp_ms(value: object, received_ms: int) -> int | None:
    if value is None:
        return received_ms
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _reference_user_id(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    return value if isinstance(value, str) and value else None


def _reference_lift(properties: dict[str, Any]) -> tuple[Any, Any]:
    duration = properties.get("duration_ms")
    success = properties.get("success")
    lifted_duration = None
    lifted_success = None
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        lifted_duration = properties.pop("duration_ms")
    if isinstance(success, bool):
        lifted_success = properties.pop("success")
    return lifted_duration, lifted_success


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["", "0", "ann", "2025-12-06T05:46:40Z"]),
)
_timestamps = st.one_of(
    _json_scalars,
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat(timespec="milliseconds") + "Z"),
    st.sampled_from([
        "2025-12-06T05:46:40.250000+00:00", "2025-12-06T05:46:40.2505", "2025-12-06",
        "2025-12-06 05:46:40", "2025-12-06T05:46:40.999999-01:30", "1969-12-31T23:59:59.9995Z",
        "2025-12-06T05:46:40ZZ", "20251206T054640Z", "yesterday", "2025-13-01T00:00:00",
    ]),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(_timestamps)
def test_timestamps_read_as_before(value: object) -> None:
    """The millisecond rule (naive means UTC, ``Z`` is UTC, absent means received)."""
    assert _timestamp_ms(value, NOW_MS) == _reference_timestamp_ms(value, NOW_MS)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_json_scalars, st.lists(st.integers(), max_size=2)))
def test_user_ids_read_as_before(value: object) -> None:
    assert _user_id(value) == _reference_user_id(value)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["duration_ms", "success", "k"]), _json_scalars, max_size=3
    ).map(flatten_properties)
)
def test_lifted_fields_as_before(properties: dict[str, Any]) -> None:
    """duration_ms (a number, never a bool) and success (a bool) leave the properties."""
    ours, reference = dict(properties), dict(properties)
    lifted, expected = _lift(ours), _reference_lift(reference)
    assert repr(lifted) == repr(expected)  # repr: NaN equals itself, 1 and True differ
    assert repr(ours) == repr(reference)


# -- a batch read across all its events gives what reading each event gives ---------------

_names = st.one_of(
    st.sampled_from(["Button Clicked", "$pageview", "$identify", "$set", "", "  ", "9", "ok"]),
    st.text(max_size=10),
    st.none(),
    st.integers(),
)
_stamps = st.one_of(
    st.sampled_from([
        "2025-12-06T05:46:40.250000+00:00", "2025-12-06T05:46:40Z", "2025-12-06T05:46:40.2505",
        "2025-12-06T05:46:40.999999-01:30", "1969-12-31T23:59:59.9995Z", "2025-12-06",
        "yesterday", "",
    ]),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda d: d.isoformat()),
    st.none(),
    st.integers(),
)  # fmt: skip
_ids = st.one_of(
    st.just(UUID_1),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.sampled_from(["", "not-a-uuid", "{" + UUID_1 + "}"]),
    st.none(),
)
_users = st.one_of(st.sampled_from(["", "ann", "bob"]), st.integers(), st.none(), st.booleans())
_finite = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12), st.sampled_from(["", "0", "ann"]),
)  # fmt: skip
_props = st.one_of(
    st.dictionaries(
        st.one_of(
            st.sampled_from([
                "plan", "$lib", "$app_name", "$app_version", "$session_id", "duration_ms",
                "success", "distinct_id", "token", "Sp ace", "billing",
            ]),
            st.text(max_size=6),
        ),
        st.one_of(
            _finite,
            st.dictionaries(st.text(max_size=4), _finite, max_size=2),
            st.lists(st.integers(), max_size=2),
        ),
        max_size=6,
    ),
    st.none(),
    st.just([]),
)  # fmt: skip


_FIELDS = {
    "event": _names,
    "distinct_id": _users,
    "timestamp": _stamps,
    "uuid": _ids,
    "properties": _props,
}


@st.composite
def _posthog_batches(draw: st.DrawFn) -> list[Any]:
    """SDK-shaped batches (varied names, users, aware timestamps, ids, properties)
    of which at most two events have one field changed, dropped or replaced."""
    batch: list[Any] = [
        posthog_event(
            event=draw(st.sampled_from(["Button Clicked", "$pageview", "signUp", "ok"])),
            distinct_id=draw(st.sampled_from(["ann", "bob", "7"])),
            timestamp=draw(st.datetimes()).isoformat()
            + draw(st.sampled_from(["+00:00", "Z", "-01:30", "+05:45"])),
            uuid=str(draw(st.uuids())),
            properties=draw(_props.filter(lambda p: isinstance(p, dict))),
        )
        for _ in range(draw(st.integers(min_value=0, max_value=3)))
    ]
    for _ in range(draw(st.integers(min_value=0, max_value=2)) if batch else 0):
        index = draw(st.integers(min_value=0, max_value=len(batch) - 1))
        field = draw(st.sampled_from([*_FIELDS, "whole"]))
        if field == "whole":
            batch[index] = draw(st.one_of(st.none(), st.integers(), st.just([])))
        elif isinstance(batch[index], dict) and draw(st.booleans()):
            batch[index].pop(field, None)
        elif isinstance(batch[index], dict):
            batch[index][field] = draw(_FIELDS[field])
    return batch


def _translated(translation: Translation) -> tuple[Any, ...]:
    return (
        translation.total,
        list(translation.origins),
        [msgspec.json.encode(e) for e in translation.events],
        [(e.index, e.code, e.message) for e in translation.errors],
    )


@settings(max_examples=300, deadline=None)
@given(_posthog_batches())
def test_posthog_batches_read_across_give_the_events_read_one_by_one(
    messages: list[Any],
) -> None:
    """Whatever the batch (odd names, users, timestamps, ids, properties; any one
    event off), translate_posthog gives what the event-by-event reading gives."""
    messages = msgspec.json.decode(json.dumps(messages).encode())  # as the route sees them
    batch = AnalyticsBatch("key", messages)
    expected = _posthog_each(batch, HASHER.memo(), NOW_MS)
    translation = translate_posthog(batch, hasher=HASHER, received_ms=NOW_MS)
    assert _translated(translation) == _translated(expected)
    assert_normalised(translation)


def test_an_sdk_batch_is_read_across_the_batch() -> None:
    """posthog-python's batches take the batch-wide reading (the equivalence test
    above would prove nothing if they never did), with the same events."""
    messages = [
        posthog_event(),
        posthog_event(uuid=str(uuid.uuid4()), timestamp="2025-12-06T05:46:41.5Z"),
        posthog_event(event="$pageview", distinct_id="bob"),
    ]
    ordinary = _posthog_ordinary(messages, HASHER.memo())
    assert ordinary is not None
    each = _posthog_each(AnalyticsBatch("key", messages), HASHER.memo(), NOW_MS)
    assert _translated(ordinary) == _translated(each)
    assert [e.type for e in ordinary.events] == ["button_clicked", "button_clicked", "page_view"]


@pytest.mark.parametrize(
    "odd",
    [
        posthog_event(timestamp="2025-12-06T05:46:41"),  # naive, means UTC
        posthog_event(timestamp="yesterday"),
        posthog_event(timestamp=None),
        posthog_event(distinct_id=""),
        posthog_event(distinct_id=7),
        posthog_event(event="$identify"),
        posthog_event(event="$$$"),
        posthog_event(event=""),
        posthog_event(event=3),
        posthog_event(uuid=UUID_1.upper()),
        posthog_event(uuid=None),
        posthog_event(properties=[]),
        ["not", "an", "event"],
    ],
)
def test_a_batch_with_one_odd_event_is_read_event_by_event(odd: Any) -> None:
    """One event the batch-wide reading does not cover sends the whole batch to the
    event-by-event reading, which gives its rejection or its own reading."""
    messages = [posthog_event(), odd]
    assert _posthog_ordinary(messages, HASHER.memo()) is None
    translated = translate_posthog(
        AnalyticsBatch("key", messages), hasher=HASHER, received_ms=NOW_MS
    )
    expected = _posthog_each(AnalyticsBatch("key", messages), HASHER.memo(), NOW_MS)
    assert _translated(translated) == _translated(expected)
    assert translated.origins[0] == 0


_SEGMENT_FIELDS = {
    # Not a list or map: the message-by-message reading fails on those (TypeError).
    "type": st.one_of(
        st.sampled_from(["track", "page", "screen", "identify", "alias", ""]),
        st.none(),
        st.integers(),
    ),
    "event": _names,
    "anonymousId": _users,
    "userId": _users,
    "timestamp": _stamps,
    "messageId": _ids,
    "properties": _props,
    "name": st.one_of(st.sampled_from(["Home", ""]), st.none(), st.integers()),
    "context": st.one_of(
        st.just({"app": {"name": "shop", "version": "2.1"}}),
        st.just({"app": "shop"}),
        st.just([]),
        st.none(),
    ),
}


@st.composite
def _segment_batches(draw: st.DrawFn) -> list[Any]:
    """analytics-python-shaped batches of track calls, of which at most two messages
    have one field changed, dropped or replaced."""
    batch: list[Any] = [
        segment_track(
            event=draw(st.sampled_from(["Order Completed", "signUp", "ok"])),
            anonymousId=draw(st.sampled_from(["device-42", "d2", "7"])),
            userId=draw(st.sampled_from([None, "ann"])),
            timestamp=draw(st.datetimes()).isoformat()
            + draw(st.sampled_from(["+00:00", "Z", "-01:30"])),
            messageId=draw(st.one_of(st.uuids().map(str), st.just("ajs-1"))),
            properties=draw(_props.filter(lambda p: isinstance(p, dict))),
        )
        for _ in range(draw(st.integers(min_value=0, max_value=3)))
    ]
    for _ in range(draw(st.integers(min_value=0, max_value=2)) if batch else 0):
        index = draw(st.integers(min_value=0, max_value=len(batch) - 1))
        field = draw(st.sampled_from([*_SEGMENT_FIELDS, "whole"]))
        if field == "whole":
            batch[index] = draw(st.one_of(st.none(), st.integers(), st.just([])))
        elif isinstance(batch[index], dict) and draw(st.booleans()):
            batch[index].pop(field, None)
        elif isinstance(batch[index], dict):
            batch[index][field] = draw(_SEGMENT_FIELDS[field])
    return batch


@settings(max_examples=300, deadline=None)
@given(_segment_batches())
def test_segment_batches_read_across_give_the_events_read_one_by_one(
    messages: list[Any],
) -> None:
    """Whatever the batch, translate_segment gives what the message-by-message
    reading gives: events, ids, origins and rejections."""
    messages = msgspec.json.decode(json.dumps(messages).encode())  # as the route sees them
    batch = AnalyticsBatch("key", messages)
    expected = _segment_each(batch, HASHER.memo(), NOW_MS)
    translation = translate_segment(batch, hasher=HASHER, received_ms=NOW_MS)
    assert _translated(translation) == _translated(expected)
    assert_normalised(translation)


def test_an_sdk_segment_batch_is_read_across_the_batch() -> None:
    messages = [
        segment_track(),
        segment_track(messageId="ajs-next-1", timestamp="2025-12-06T05:46:41.5Z"),
        segment_track(event="Signed Up", anonymousId="d2", userId=None),
    ]
    ordinary = _segment_ordinary(messages, HASHER.memo())
    assert ordinary is not None
    each = _segment_each(AnalyticsBatch("key", messages), HASHER.memo(), NOW_MS)
    assert _translated(ordinary) == _translated(each)
    assert [e.type for e in ordinary.events] == ["order_completed", "order_completed", "signed_up"]


@pytest.mark.parametrize(
    "odd",
    [
        segment_track(timestamp="2025-12-06T05:46:41"),  # naive, means UTC
        segment_track(timestamp="yesterday"),
        segment_track(timestamp=None),
        segment_track(anonymousId=""),
        segment_track(anonymousId=None),
        segment_track(anonymousId=7),
        segment_track(type="page", name="Home"),
        segment_track(type="identify"),
        segment_track(type=7),
        segment_track(type=["track"]),
        segment_track(type={"call": "track"}),
        segment_track(event="$$$"),
        segment_track(event=""),
        segment_track(event=None),
        ["not", "a", "message"],
    ],
)
def test_a_segment_batch_with_one_odd_message_is_read_message_by_message(odd: Any) -> None:
    messages = [segment_track(), odd]
    assert _segment_ordinary(messages, HASHER.memo()) is None
    batch = AnalyticsBatch("key", messages)
    translated = translate_segment(batch, hasher=HASHER, received_ms=NOW_MS)
    assert _translated(translated) == _translated(_segment_each(batch, HASHER.memo(), NOW_MS))
    assert translated.origins[0] == 0


@pytest.mark.parametrize("call", [["track"], {"call": "track"}, None, 1.5])
def test_a_segment_call_type_that_is_not_a_string_is_rejected_alone(call: Any) -> None:
    translation = segment(segment_track(), segment_track(type=call))
    assert len(events(translation)) == 1
    assert [(e.index, e.code) for e in translation.errors] == [(1, "unsupported_event")]


def _reference_flatten(properties: dict[str, Any], drop_prefix: str | None) -> dict[str, Any]:
    """flatten_properties as it was before it remembered key names (the reference)."""
    scalars = (str, int, float, bool, type(None))
    flat: dict[str, Any] = {}
    for key, value in properties.items():
        if drop_prefix is not None and key.startswith(drop_prefix):
            continue
        if type(value) in scalars:
            name = normalise_key(key)
            if name is not None:
                flat[name] = value
        elif isinstance(value, dict):
            for inner, inner_value in value.items():
                if drop_prefix is not None and str(inner).startswith(drop_prefix):
                    continue
                if type(inner_value) in scalars:
                    name = normalise_key(f"{key}.{inner}")
                    if name is not None:
                        flat[name] = inner_value
    return flat


_flat_keys = st.one_of(
    st.sampled_from(["", " ", "$lib", "a b", "a_b", "x.y", "$", "k"]), st.text(max_size=6)
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            _flat_keys,
            st.one_of(_json_scalars, st.dictionaries(_flat_keys, _json_scalars, max_size=3),
                      st.lists(st.integers(), max_size=1)),
            max_size=6,
        ),
        max_size=4,
    ),
    st.sampled_from([None, "$"]),
)  # fmt: skip
def test_flatten_properties_gives_what_it_gave_before_remembering_names(
    batch: list[dict[str, Any]], drop_prefix: str | None
) -> None:
    """Remembered key names (dropped, unnamed, named) give the same flat maps, in the
    same key order, as reading every key afresh; a map under an unnamed key included."""
    for properties in batch:
        flat = flatten_properties(properties, drop_prefix=drop_prefix)
        expected = _reference_flatten(properties, drop_prefix)
        assert list(flat.items()) == list(expected.items())


# -- the typed decode of SDK-shaped bodies -------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)  # fmt: skip
_scalar_keys = st.one_of(
    st.sampled_from([
        "plan", "$lib", "$app_name", "$app_version", "$session_id", "duration_ms", "success",
        "distinct_id", "token", " token", "Sp ace", "", " ", "a.b", "9x", "$", "x__y",
    ]),
    st.text(max_size=5),
)  # fmt: skip
_scalar_props = st.dictionaries(_scalar_keys, _scalars, max_size=7)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_scalar_props, max_size=4),
    st.sampled_from([None, "$"]),
    st.sampled_from([frozenset(), frozenset({"distinct_id", "token"})]),
)
def test_scalar_drops_give_the_flattened_maps(
    batch: list[dict[str, Any]], drop_prefix: str | None, dropped: frozenset[str]
) -> None:
    """A copy less the keys scalar_drops names is the map flatten_properties gives
    (less the dropped names), in the same order with the same values, whenever it
    names any; a renamed key (a space, a leading digit, ...) makes it say None."""
    drops = scalar_drops(set().union(*batch), drop_prefix=drop_prefix, dropped_names=dropped)
    renamed = any(
        normalise_key(k) not in (None, k)
        for p in batch
        for k in p
        if drop_prefix is None or not k.startswith(drop_prefix)
    )
    assert (drops is None) == renamed
    for properties in batch if drops is not None else []:
        expected = flatten_properties(properties, drop_prefix=drop_prefix)
        for name in dropped:
            expected.pop(name, None)
        got = _without(properties, drops)
        assert msgspec.json.encode(got) == msgspec.json.encode(expected)  # order, 1 vs True


def _sdk_body(draw: st.DrawFn, batch: list[Any], key_field: str) -> bytes:
    """``batch`` as an SDK's body: most messages' properties scalars only (what the
    typed decode takes), the key drawn (absent, empty, null, set), extra fields."""
    for message in batch:
        if isinstance(message, dict) and draw(st.integers(min_value=0, max_value=3)):
            message["properties"] = draw(_scalar_props)
    body: dict[str, Any] = {"batch": batch, "sent_at": "2025-12-06T05:46:40Z"}
    key = draw(st.sampled_from(["k", "k", "", None, 7, "absent"]))
    if key != "absent":
        body[key_field] = key
    if draw(st.booleans()):
        body["token"] = "t"
    return json.dumps(body).encode()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_posthog_bodies_decoded_typed_give_what_the_generic_decode_gives(
    data: st.DataObject,
) -> None:
    """A body as posthog-python sends it takes the typed decode and the leaner
    build; any other body (one field off, nested properties, no key) falls back:
    the key, the events, ids, origins and rejections are those of the generic decode
    read event by event."""
    body = _sdk_body(data.draw, data.draw(_posthog_batches()), "api_key")
    batch = decode_posthog(body, max_events=50)
    reference = _posthog_generic(body)
    assert batch.key == reference.key
    translation = translate_posthog(batch, hasher=HASHER, received_ms=NOW_MS)
    expected = _posthog_each(reference, HASHER.memo(), NOW_MS)
    assert _translated(translation) == _translated(expected)
    assert_normalised(translation)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_segment_bodies_decoded_typed_give_what_the_generic_decode_gives(
    data: st.DataObject,
) -> None:
    """As for PostHog: analytics-python's bodies, one message off or not."""
    body = _sdk_body(data.draw, data.draw(_segment_batches()), "writeKey")
    try:
        reference = _segment_generic(body)
    except IngestError:
        with pytest.raises(IngestError):
            decode_segment(body, max_events=50)
        return
    batch = decode_segment(body, max_events=50)
    assert batch.key == reference.key
    translation = translate_segment(batch, hasher=HASHER, received_ms=NOW_MS)
    expected = _segment_each(reference, HASHER.memo(), NOW_MS)
    assert _translated(translation) == _translated(expected)
    assert_normalised(translation)


def test_sdk_bodies_take_the_typed_path() -> None:
    """The equivalence tests above prove something only if SDK bodies do take the
    typed path, and others do not."""
    scalar = {"plan": "pro", "$lib": "posthog-python", "duration_ms": 4, "$app_name": "shop"}
    posthog_body = {"api_key": "k", "batch": [posthog_event(properties=scalar)] * 2}
    batch = decode_posthog(json.dumps(posthog_body).encode(), max_events=5)
    assert batch.sdk_shaped and batch.key == "k"
    assert _posthog_typed(batch.messages, HASHER.memo()) is not None
    for _ in range(2):  # the batch's own maps are left as they came
        translation = translate_posthog(batch, hasher=HASHER, received_ms=NOW_MS)
        assert [(e.app, e.properties) for e in translation.events] == [
            ("shop", {"plan": "pro"})
        ] * 2
    nested = {**posthog_body, "batch": [posthog_event()]}  # a map and a list in properties
    assert not decode_posthog(json.dumps(nested).encode(), max_events=5).sdk_shaped
    message = segment_track(properties={"total": 30.5, "currency": "EUR"})
    batch = decode_segment(json.dumps({"batch": [message] * 2}).encode(), max_events=5)
    assert batch.sdk_shaped and batch.key is None
    assert _segment_typed(batch.messages, HASHER.memo()) is not None
    translation = translate_segment(batch, hasher=HASHER, received_ms=NOW_MS)
    assert [e.properties for e in translation.events] == [{"total": 30.5, "currency": "EUR"}] * 2


def test_sdk_bodies_with_keys_to_rename_stay_on_the_typed_path() -> None:
    """A key that needs a new name ("Plan Name") does not send an SDK body back to the
    generic reading (which decoded, hashed and read every timestamp again): the typed
    path flattens those maps itself, with the same result as the dict reading."""
    renamed = {"Plan Name": "pro", "$lib": "posthog-python", "$app_name": "shop"}
    body = json.dumps({"api_key": "k", "batch": [posthog_event(properties=renamed)]}).encode()
    batch = decode_posthog(body, max_events=5)
    typed = _posthog_typed(batch.messages, HASHER.memo())
    assert typed is not None
    assert [e.properties for e in typed.events] == [{"Plan_Name": "pro"}]
    reference = _posthog_each(_posthog_generic(body), HASHER.memo(), NOW_MS)
    assert _translated(typed) == _translated(reference)
    message = segment_track(properties={"Order Total": 30.5})
    body = json.dumps({"batch": [message]}).encode()
    batch = decode_segment(body, max_events=5)
    typed = _segment_typed(batch.messages, HASHER.memo())
    assert typed is not None
    assert [e.properties for e in typed.events] == [{"Order_Total": 30.5}]
    reference = _segment_each(_segment_generic(body), HASHER.memo(), NOW_MS)
    assert _translated(typed) == _translated(reference)
