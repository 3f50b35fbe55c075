"""The submit pipeline without HTTP: the PII re-check and the in-flight byte budget."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core.collector.ingest import (
    InFlightBudget,
    IngestError,
    _check_each,
    check_built,
    check_events,
    read_body,
)
from telemetry_core.schema import new_event_id
from tests.conftest import COLLECTOR_NOW_MS, wire_event

NOW_MS = COLLECTOR_NOW_MS


def _codes(**fields: Any) -> list[str]:
    raw = msgspec.Raw(json.dumps(wire_event(**fields)).encode())
    checked = check_events(
        [raw], now_ms=NOW_MS, max_event_bytes=16384, max_future_skew_ms=86_400_000
    )
    return [e.code for e in checked.errors]


@pytest.mark.parametrize("field", ["install_id", "session_id", "app", "app_version"])
@pytest.mark.parametrize("value", ["alice@example.com", "/home/alice/x", "ghp_" + "a" * 30])
def test_pii_in_identifier_fields_is_rejected(field: str, value: str) -> None:
    """Finding 3: the re-check covers every free-form string field, not only properties."""
    assert _codes(**{field: value}) == ["pii"]


@pytest.mark.parametrize("field", ["install_id", "session_id", "app"])
def test_ip_in_identifier_fields_is_rejected(field: str) -> None:
    assert _codes(**{field: "192.168.1.20"}) == ["pii"]


@pytest.mark.parametrize("version", ["1.0.0.0", "10.0.19045.1", "2.3.1-beta"])
def test_four_part_versions_are_not_mistaken_for_ip_addresses(version: str) -> None:
    assert _codes(app_version=version) == []


def test_ordinary_identifiers_pass() -> None:
    assert _codes(install_id=new_event_id(), session_id="sess-1", app_version="1.2.3") == []


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_budget_reserves_compressed_and_inflated_bytes_and_releases_them() -> None:
    body = json.dumps({"events": [wire_event()]}).encode() * 10
    wire = zlib.compress(body, wbits=31)
    budget = InFlightBudget(10_000)

    async def run() -> int:
        with budget.lease() as lease:
            await read_body(
                _chunks(wire), encoding="gzip", max_compressed_bytes=1 << 20,
                max_body_bytes=1 << 20, lease=lease,
            )  # fmt: skip
            return lease.held

    held = asyncio.run(run())
    assert held == len(wire) + len(body)
    assert budget.used == 0


def test_budget_refuses_past_its_size_and_keeps_others_reservations() -> None:
    budget = InFlightBudget(1000)
    first = budget.lease()
    first.reserve(600)

    async def run() -> None:
        with budget.lease() as lease:
            await read_body(
                _chunks(b"x" * 300, b"y" * 300), encoding="identity",
                max_compressed_bytes=1 << 20, max_body_bytes=1 << 20, lease=lease,
            )  # fmt: skip

    with pytest.raises(IngestError) as raised:
        asyncio.run(run())
    assert (raised.value.status, raised.value.code) == (503, "overloaded")
    assert budget.used == 600
    first.release()
    first.release()  # idempotent
    assert budget.used == 0


# -- the one-call decode agrees with the event-by-event reference ---------------

_field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "x" * 129, "a\x00b", "tab\there", "line\nbreak", "\x85", "ok"]),
    st.text(max_size=20),
)
_mutations = st.dictionaries(
    st.sampled_from(
        ["id", "type", "timestamp", "install_id", "app", "app_version", "session_id",
         "duration_ms", "success", "schema"]
    ),
    _field_values,
    max_size=1,
)  # fmt: skip
_properties = st.dictionaries(
    st.one_of(st.sampled_from(["k", "a.b:c-d", "1bad", "x" * 65, "sp ace"]), st.text(max_size=8)),
    _field_values,
    max_size=4,
)


def _verdicts(batch: Any) -> tuple[list[Any], list[int], list[tuple[int, str, str]]]:
    return (
        [msgspec.to_builtins(e) for e in batch.events],
        list(batch.indexes),
        [(e.index, e.code, e.message) for e in batch.errors],
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.just({}), _mutations),
            st.one_of(st.just({"k": "v"}), _properties),
            st.booleans(),
        ),
        min_size=1,
        max_size=3,
    ),
    st.integers(min_value=0, max_value=1),
)
def test_batch_decode_gives_the_reference_verdicts(
    specs: list[tuple[dict[str, Any], dict[str, Any], bool]], skew_days: int
) -> None:
    """Whatever mix of valid and invalid events, the result is the reference path's."""
    raws = []
    for changes, properties, future in specs:
        event = wire_event(properties=properties, **changes)
        if future:
            event["timestamp"] = NOW_MS + 2 * 86_400_000
        raws.append(msgspec.Raw(json.dumps(event).encode()))
    limits = {
        "now_ms": NOW_MS,
        "max_event_bytes": 16384,
        "max_future_skew_ms": skew_days * 3 * 86_400_000,
    }
    assert _verdicts(check_events(raws, **limits)) == _verdicts(_check_each(raws, **limits))


_EDGES = [
    ("install_id", "x" * 128), ("install_id", "x" * 129), ("install_id", ""),
    ("app", "a\x7fb"), ("app", "a\x9fb"), ("app", "a\xa0b"), ("session_id", "t\tab"),
    ("app_version", "1.0\n"), ("timestamp", -1), ("timestamp", 2**63 - 1), ("timestamp", 2**63),
    ("timestamp", 1.5), ("timestamp", True), ("duration_ms", 0), ("duration_ms", -0.5),
    ("duration_ms", 1e15), ("duration_ms", 1e15 - 1), ("duration_ms", True), ("schema", 2),
    ("schema", True), ("type", "Bad"), ("type", "a" * 64), ("type", "a" * 65),
    ("id", "01A22327-CFEE-71C1-8B85-3BBCF27ACDAD"), ("id", "0" * 32), ("id", 7),
    ("success", 1), ("properties", {"k": 2**63}), ("properties", {"k": -(2**63)}),
    ("properties", {"k": -(2**63) - 1}), ("properties", {"k": "x" * 1024}),
    ("properties", {"k": "x" * 1025}), ("properties", {"k": "a\tb\r\nc"}),
    ("properties", {"k": "a\x0bb"}), ("properties", {"k": "\x85"}), ("properties", {"k": [1]}),
    ("properties", {f"k{i}": i for i in range(64)}),
    ("properties", {f"k{i}": i for i in range(65)}),
    ("properties", {"x" * 64: 1}), ("properties", {"x" * 65: 1}), ("properties", {"_a.b:c-d": 1}),
    ("properties", {"9a": 1}), ("properties", {"sp ace": 1}), ("type", "a b"),
    ("id", "01a22327-cfee-71c1-8b85 3bbcf27acdad"), ("app", "two words"),
    ("properties", {"k": 1e308}), ("properties", {"k": None}),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), _EDGES)
def test_schema_edges_give_the_reference_verdicts(field: str, value: Any) -> None:
    """Each limit of schema 1, just inside and just outside, beside a valid event."""
    raws = [
        msgspec.Raw(json.dumps(wire_event()).encode()),
        msgspec.Raw(json.dumps(wire_event(**{field: value})).encode()),
    ]
    limits = {"now_ms": NOW_MS, "max_event_bytes": 16384, "max_future_skew_ms": 86_400_000}
    assert _verdicts(check_events(raws, **limits)) == _verdicts(_check_each(raws, **limits))


def test_a_valid_batch_takes_the_one_call_path() -> None:
    """A batch of valid events is decoded into the constrained type in one call
    (the test fails if the fast path stops accepting ordinary events)."""
    raws = [msgspec.Raw(json.dumps(wire_event(properties={"n": 1, "s": "x"})).encode())] * 2
    raws.append(msgspec.Raw(json.dumps(wire_event()).encode()))
    checked = check_events(raws, now_ms=NOW_MS, max_event_bytes=16384, max_future_skew_ms=1)
    assert checked.indexes == (0, 1, 2)
    assert all(type(e).__name__ == "_CheckedEvent" for e in checked.events)
    alone = check_events(raws[2:], now_ms=NOW_MS, max_event_bytes=16384, max_future_skew_ms=1)
    assert type(alone.events[0]).__name__ == "_CheckedEvent"


def test_pii_found_in_a_remembered_string_is_still_found() -> None:
    """Only clean verdicts are remembered: the same PII value is rejected every time."""
    assert _codes(properties={"who": "bob@example.com"}) == ["pii"]
    assert _codes(properties={"who": "bob@example.com"}) == ["pii"]
    assert _codes(properties={"who": "bob"}) == []
    assert _codes(properties={"who": "bob"}) == []


# -- check_built (events a translation built) agrees with check_events of their JSON --------

_built_values = st.one_of(
    _field_values,
    st.floats(),  # NaN and infinities: JSON turns them into null
    st.sampled_from([-0.0, 1e15, 2**63, [1], {"k": 1}, b"x"]),
)
_built_properties = st.dictionaries(
    st.one_of(
        st.sampled_from(["k", "a.b:c-d", "1bad", "x" * 65, "sp ace", "who", "duration_ms"]),
        st.text(max_size=8),
        st.integers(min_value=0, max_value=3),  # a key JSON turns into a string
    ),
    st.one_of(_built_values, st.sampled_from(["bob@example.com", "10.0.0.1", "y" * 300])),
    max_size=5,
)


def _built_event(changes: dict[str, Any], properties: dict[Any, Any], future: bool) -> Any:
    from telemetry_core.schema import Event

    fields = wire_event(**{"properties": properties, **changes})
    if future:
        fields["timestamp"] = NOW_MS + 2 * 86_400_000
    return Event(**fields)  # Event() checks no types: whatever a translation could build


def _as_raws(events: list[Any]) -> list[msgspec.Raw]:
    return [msgspec.Raw(msgspec.json.encode(e)) for e in events]


def _same_verdict(events: list[Any], **limits: Any) -> None:
    built = check_built(events, **limits)
    reference = check_events(_as_raws(events), **limits)
    assert _verdicts(built) == _verdicts(reference)
    # The same path as well: checked events of the constrained type both ways, or neither.
    assert [type(e).__name__ for e in built.events] == [type(e).__name__ for e in reference.events]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.just({}), st.dictionaries(st.sampled_from(
                ["id", "type", "timestamp", "install_id", "app", "app_version", "session_id",
                 "duration_ms", "success", "schema"]), _built_values, max_size=1)),
            st.one_of(st.just({"k": "v"}), _built_properties),
            st.booleans(),
        ),
        min_size=0,
        max_size=4,
    ),
    st.integers(min_value=0, max_value=1),
    st.integers(min_value=150, max_value=700),
)  # fmt: skip
def test_check_built_gives_the_verdicts_of_check_events(
    specs: list[tuple[dict[str, Any], dict[Any, Any], bool]], skew_days: int, max_bytes: int
) -> None:
    """Built events, valid or not (wrong types, NaN, integer keys, PII, future
    timestamps, sizes around a small ``max_event_bytes``), get exactly the verdict
    their JSON gets from check_events: events, indexes, codes and messages."""
    events = [_built_event(*spec) for spec in specs]
    _same_verdict(
        events,
        now_ms=NOW_MS,
        max_event_bytes=max_bytes,
        max_future_skew_ms=skew_days * 3 * 86_400_000,
    )


@pytest.mark.parametrize(("field", "value"), _EDGES)
def test_check_built_schema_edges_give_the_verdicts_of_check_events(field: str, value: Any) -> None:
    """Each limit of schema 1, just inside and just outside, as built events."""
    events = [_built_event({}, {"k": "v"}, False), _built_event({field: value}, {}, False)]
    _same_verdict(events, now_ms=NOW_MS, max_event_bytes=16384, max_future_skew_ms=86_400_000)


def test_check_built_too_large_is_the_encoded_size_of_each_event() -> None:
    """The too_large verdict is by each event's encoded size: an event exactly at the
    limit is kept, one byte over is rejected, as check_events rejects its JSON."""
    small = _built_event({}, {"k": "v"}, False)
    size = len(msgspec.json.encode(_built_event({}, {"k": "x" * 500}, False)))
    big = _built_event({}, {"k": "x" * 500}, False)
    for limit in (size - 1, size, size + 1):
        limits = {"now_ms": NOW_MS, "max_event_bytes": limit, "max_future_skew_ms": 86_400_000}
        _same_verdict([small, big, small], **limits)
        verdict = check_built([small, big, small], **limits)
        assert [e.code for e in verdict.errors] == (["too_large"] if limit < size else [])
        assert verdict.indexes == ((0, 2) if limit < size else (0, 1, 2))


_normalised_properties = st.dictionaries(
    st.one_of(st.text(max_size=70), st.sampled_from(["k", "Who Is", "duration_ms", "y" * 80])),
    st.one_of(
        _built_values,
        st.sampled_from(["bob@example.com", "10.0.0.1", "y" * 1024, "y" * 1025, "\x01" * 900]),
    ),
    max_size=6,
)


def _normalised_event(
    name: str, changes: dict[str, Any], properties: dict[str, Any], future: bool
) -> Any:
    """An event as a translation builds it: a canonical UUID, a normalised type and
    normalised keys; any other field (from the sender) anything."""
    from telemetry_core.collector.translation import normalise_key, normalise_type

    keys = {normalise_key(k): v for k, v in properties.items()}
    event = _built_event(changes, {k: v for k, v in keys.items() if k is not None}, future)
    return msgspec.structs.replace(event, type=normalise_type(name) or "page_view")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=70),
            st.one_of(st.just({}), st.dictionaries(st.sampled_from(
                ["timestamp", "install_id", "app", "app_version", "session_id",
                 "duration_ms", "success", "schema"]), _built_values, max_size=1)),
            _normalised_properties,
            st.booleans(),
        ),
        min_size=0,
        max_size=4,
    ),
    st.one_of(st.integers(min_value=150, max_value=9000), st.just(16384)),
)  # fmt: skip
def test_check_built_of_normalised_events_gives_the_verdicts_of_check_events(
    specs: list[tuple[str, dict[str, Any], dict[str, Any], bool]], max_bytes: int
) -> None:
    """Events as translations build them, checked with ``normalised=True`` (no scan
    of ids, types and keys; sizes by a bound where it settles them), get the verdict
    their JSON gets from check_events, for limits below, around and above the bound."""
    events = [_normalised_event(*spec) for spec in specs]
    limits = {"now_ms": NOW_MS, "max_event_bytes": max_bytes, "max_future_skew_ms": 86_400_000}
    built = check_built(events, normalised=True, **limits)
    assert _verdicts(built) == _verdicts(check_events(_as_raws(events), **limits))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=70),
            st.dictionaries(st.sampled_from(["install_id", "app", "app_version", "session_id",
                            "duration_ms", "timestamp"]), _field_values, max_size=2),
            _normalised_properties,
        ),
        min_size=1,
        max_size=4,
    )
)  # fmt: skip
def test_encoded_size_bound_is_never_below_an_events_json(
    specs: list[tuple[str, dict[str, Any], dict[str, Any]]],
) -> None:
    """The bound that spares encoding each event is an upper bound on each event's
    JSON, for every batch the constrained type accepts (control characters, which
    JSON escapes to 6 bytes; the longest integers and floats; multi-byte text)."""
    from telemetry_core.collector.ingest import _CHECKED_LIST, _BatchStrings

    events = [_normalised_event(name, changes, props, False) for name, changes, props in specs]
    try:
        converted = msgspec.convert(events, _CHECKED_LIST, from_attributes=True)
    except msgspec.ValidationError:
        return
    strings = _BatchStrings.of(converted)
    bound = strings.encoded_size_bound(converted)
    assert max(len(msgspec.json.encode(e)) for e in events) <= bound
    assert bound <= strings.quick_size_bound(converted)  # the looser one


def test_encoded_size_bound_of_extreme_values() -> None:
    """Worst cases by hand: every string at its length limit and all control
    characters, the longest int64 and float JSON, 64 properties."""
    from telemetry_core.collector.ingest import _CHECKED_LIST, _BatchStrings
    from telemetry_core.schema import Event

    props: dict[str, Any] = {f"k{i:02d}" + "_" * 61: "\x01" * 1024 for i in range(62)}
    props["n"] = -(2**63)
    props["f"] = -2.2250738585072014e-308
    event = Event(
        id=new_event_id(),
        type="a" * 64,
        timestamp=2**63 - 1,
        install_id="\x01" * 128,
        app="\x02" * 128,
        app_version="\x03" * 128,
        session_id="\x04" * 128,
        duration_ms=-0.0,
        success=False,
        properties=props,
    )
    converted = msgspec.convert([event], _CHECKED_LIST, from_attributes=True)
    strings = _BatchStrings.of(converted)
    bound = strings.encoded_size_bound(converted)
    assert len(msgspec.json.encode(event)) <= bound
    assert strings.quick_size_bound(converted) == bound  # every string at its longest


def test_check_built_normalised_trusts_ids_types_and_keys() -> None:
    """``normalised=True`` is a promise the caller keeps: a type outside the pattern
    is not scanned for (which is why only translations, tested to keep it, pass it)."""
    limits = {"now_ms": NOW_MS, "max_event_bytes": 16384, "max_future_skew_ms": 1}
    event = msgspec.structs.replace(_built_event({}, {}, False), type="Not A Type")
    assert [e.code for e in check_built([event], **limits).errors] == ["invalid_type"]
    assert check_built([event], normalised=True, **limits).indexes == (0,)


def test_check_built_takes_the_one_call_path_and_never_trusts_checked_events() -> None:
    """Ordinary built events are converted in one call into the constrained type; an
    event already of that type (which the conversion would pass through unchecked)
    is checked through its JSON instead."""
    from telemetry_core.collector.ingest import _CheckedEvent

    limits = {"now_ms": NOW_MS, "max_event_bytes": 16384, "max_future_skew_ms": 1}
    events = [_built_event({}, {"n": 1, "s": "x"}, False) for _ in range(3)]
    checked = check_built(events, **limits)
    assert checked.indexes == (0, 1, 2)
    assert all(type(e).__name__ == "_CheckedEvent" for e in checked.events)
    assert _verdicts(checked) == _verdicts(check_events(_as_raws(events), **limits))
    sneaky = _CheckedEvent(**{**msgspec.structs.asdict(events[0]), "install_id": "x" * 129})
    verdict = check_built([events[0], sneaky], **limits)
    assert [(e.index, e.code) for e in verdict.errors] == [(1, "invalid_field")]
    _same_verdict([events[0], sneaky], **limits)
