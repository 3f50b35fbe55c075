"""Hypothesis: valid events validate, the wire round trip is identity, ids sort by creation."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core import schema
from telemetry_core.schema import Event, SubmitEnvelope, SubmitRequest, new_event_id, validate_event
from tests.property.strategies import events, property_keys, property_values

_encoder = msgspec.json.Encoder()


@given(events())
def test_events_from_valid_strategies_validate(event: Event) -> None:
    assert validate_event(event) is None
    assert validate_event(event, now_ms=event.timestamp) is None


@given(events())
def test_encode_decode_round_trip_is_identity(event: Event) -> None:
    wire = _encoder.encode(event)
    decoded = msgspec.json.decode(wire, type=Event)
    assert decoded == event
    assert _encoder.encode(decoded) == wire
    assert validate_event(decoded) is None


@settings(max_examples=30)
@given(st.lists(events(), max_size=5))
def test_batch_round_trip_through_the_raw_envelope(batch: list[Event]) -> None:
    body = _encoder.encode(SubmitRequest(events=batch))
    envelope = msgspec.json.decode(body, type=SubmitEnvelope)
    assert [msgspec.json.decode(raw, type=Event) for raw in envelope.events] == batch


@given(st.dictionaries(property_keys, property_values, min_size=1, max_size=4), st.text())
def test_a_valid_event_with_one_bad_value_is_rejected_not_crashed(
    properties: dict[str, schema.PropertyValue], bad_key_suffix: str
) -> None:
    base = next(iter(properties))
    broken: dict[object, object] = dict(properties)
    broken[base + " " + bad_key_suffix] = 1  # a space is never allowed in a key
    event = msgspec.structs.replace(
        Event(id=new_event_id(), type="t", timestamp=0, install_id="i", app="a"),
        properties=broken,  # type: ignore[arg-type]
    )
    problem = validate_event(event)
    assert problem is not None
    assert problem[0] == "invalid_property"


@contextlib.contextmanager
def fresh_uuid7_state() -> Iterator[None]:
    """Reset the process-wide UUIDv7 state for one example, then restore it."""
    saved = schema._uuid7_last_ms, schema._uuid7_counter
    schema._uuid7_last_ms, schema._uuid7_counter = 0, 0
    try:
        yield
    finally:
        schema._uuid7_last_ms, schema._uuid7_counter = saved


@settings(max_examples=50)
@given(
    start=st.integers(min_value=0, max_value=2**47),
    steps=st.lists(st.integers(min_value=-5_000, max_value=5_000), min_size=1, max_size=300),
)
def test_ids_sort_like_creation_order(start: int, steps: list[int]) -> None:
    # Any clock, even one that jumps backwards or repeats, gives increasing ids.
    now = start
    ids = []
    with fresh_uuid7_state():
        for step in steps:
            now = max(0, now + step)
            ids.append(new_event_id(now_ms=now))
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    assert uuid.UUID(ids[0]).int >> 80 == max(0, start + steps[0])
    assert uuid.UUID(ids[-1]).int >> 80 >= now


class _Str(str):
    pass


class _Float(float):
    pass


_any_key = st.one_of(
    property_keys,
    st.text(max_size=70),
    st.integers(),
    st.builds(_Str, property_keys),
)
_any_value = st.one_of(
    property_values,
    st.text(max_size=1100),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.builds(_Str, st.text(max_size=20)),
    st.builds(_Float, st.floats()),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300)
@given(events(), st.dictionaries(_any_key, _any_value, max_size=6))
def test_fast_path_gives_the_exact_verdict_of_the_per_property_checks(
    event: Event, properties: dict[object, object]
) -> None:
    """validate_event's fast path never accepts what the exact checks reject, and
    reports the same first problem."""
    candidate = msgspec.structs.replace(event, properties=properties)  # type: ignore[arg-type]
    expected = next(
        (
            problem
            for key, value in properties.items()
            if (
                problem := schema._property_problem(
                    key, value, schema.MAX_PROPERTY_KEY_LENGTH, schema.MAX_PROPERTY_VALUE_LENGTH
                )
            )
            is not None
        ),
        None,
    )
    assert validate_event(candidate) == expected
