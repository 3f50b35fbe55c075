"""Shared hypothesis strategies: valid events and property maps (others may append)."""

from __future__ import annotations

from hypothesis import strategies as st

from telemetry_core.schema import (
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_LENGTH,
    MAX_PROPERTY_VALUE_LENGTH,
    Event,
    PropertyValue,
    new_event_id,
)

#: Event types matching ``^[a-z][a-z0-9_.:-]{0,63}$``.
event_types = st.from_regex(r"\A[a-z][a-z0-9_.:-]{0,20}\Z")

#: Property keys matching the schema's key pattern.
property_keys = st.from_regex(
    rf"\A[A-Za-z_][A-Za-z0-9_.:-]{{0,{min(MAX_PROPERTY_KEY_LENGTH - 1, 30)}}}\Z"
)

#: Scalar property values within the schema's bounds (finite floats, 64-bit ints).
property_values: st.SearchStrategy[PropertyValue] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    # Tab, newline and carriage return are allowed; other control characters
    # (C0, DEL, C1) are rejected by validate_event.
    st.text(
        st.characters(
            blacklist_categories=("Cs",),
            blacklist_characters=[
                chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t\n\r"
            ],
        ),
        max_size=min(MAX_PROPERTY_VALUE_LENGTH, 64),
    ),
)

#: Flat property maps within the schema's bounds.
property_dicts = st.dictionaries(property_keys, property_values, max_size=min(MAX_PROPERTIES, 8))


@st.composite
def events(draw: st.DrawFn, *, event_type: st.SearchStrategy[str] = event_types) -> Event:
    """Valid schema-1 events with fresh UUIDv7 ids."""
    return Event(
        id=new_event_id(),
        type=draw(event_type),
        timestamp=draw(st.integers(min_value=0, max_value=4_102_444_800_000)),
        install_id=draw(st.from_regex(r"\A[0-9a-f]{32}\Z")),
        app=draw(st.from_regex(r"\A[a-z][a-z0-9_-]{0,15}\Z")),
        app_version=draw(st.none() | st.from_regex(r"\A[0-9]{1,3}\.[0-9]{1,3}\Z")),
        session_id=draw(st.none() | st.from_regex(r"\A[0-9a-f]{8,32}\Z")),
        duration_ms=draw(st.none() | st.floats(min_value=0, max_value=1e9)),
        success=draw(st.none() | st.booleans()),
        properties=draw(property_dicts),
    )
