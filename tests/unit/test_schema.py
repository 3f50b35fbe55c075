"""Wire schema v1: UUIDv7 ids, validate_event codes, msgspec round trips."""

from __future__ import annotations

import re
import threading
import time
import uuid
from typing import Any

import msgspec
import pytest

from telemetry_core import schema
from telemetry_core.schema import (
    MAX_FUTURE_SKEW_MS,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_LENGTH,
    MAX_PROPERTY_VALUE_LENGTH,
    MAX_SHORT_STRING_LENGTH,
    SCHEMA_VERSION,
    Event,
    EventError,
    Limits,
    ServerInfo,
    SubmitEnvelope,
    SubmitRequest,
    SubmitResponse,
    new_event_id,
    validate_event,
)
from tests.conftest import build_event

_CANONICAL = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_NOW_MS = 1_700_000_000_000


@pytest.fixture
def fresh_uuid7_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start the process-wide UUIDv7 state at zero; restored after the test.

    Tests that pass ``now_ms`` far from the real clock must not leave the
    module's "last millisecond" in the future for the rest of the suite.
    """
    monkeypatch.setattr(schema, "_uuid7_last_ms", 0)
    monkeypatch.setattr(schema, "_uuid7_counter", 0)


def _ms_of(event_id: str) -> int:
    return uuid.UUID(event_id).int >> 80


def _counter_of(event_id: str) -> int:
    return (uuid.UUID(event_id).int >> 64) & 0xFFF


# --- new_event_id -------------------------------------------------------------------------


def test_new_event_id_is_rfc9562_uuid7() -> None:
    event_id = new_event_id()
    parsed = uuid.UUID(event_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert _CANONICAL.match(event_id), event_id
    assert str(parsed) == event_id


def test_new_event_id_embeds_the_given_timestamp(fresh_uuid7_state: None) -> None:
    assert _ms_of(new_event_id(now_ms=_NOW_MS)) == _NOW_MS
    assert _ms_of(new_event_id(now_ms=_NOW_MS + 5)) == _NOW_MS + 5


def test_new_event_id_embeds_the_wall_clock() -> None:
    before = time.time_ns() // 1_000_000
    event_id = new_event_id()
    after = time.time_ns() // 1_000_000
    # Earlier ids of this process may hold the module a few ms ahead (counter overflow).
    assert before <= _ms_of(event_id) <= after + 1000


def test_ids_in_one_millisecond_are_strictly_increasing_across_counter_overflow(
    fresh_uuid7_state: None,
) -> None:
    # The counter is seeded below 0x800, so 10,000 ids in one millisecond overflow it
    # at least twice; order must hold through every overflow.
    ids = [new_event_id(now_ms=_NOW_MS) for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(_CANONICAL.match(i) for i in ids)
    millis = [_ms_of(i) for i in ids]
    assert millis[0] == _NOW_MS
    assert millis[-1] >= _NOW_MS + 2
    assert millis == sorted(millis)


def test_counter_overflow_moves_to_the_next_millisecond(
    fresh_uuid7_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = new_event_id(now_ms=_NOW_MS)
    monkeypatch.setattr(schema, "_uuid7_counter", 0xFFF)
    second = new_event_id(now_ms=_NOW_MS)
    assert second > first
    assert _ms_of(second) == _NOW_MS + 1
    assert _counter_of(second) <= 0x7FF
    third = new_event_id(now_ms=_NOW_MS)
    assert third > second
    assert _ms_of(third) == _NOW_MS + 1


def test_ids_stay_increasing_when_the_clock_goes_backwards(fresh_uuid7_state: None) -> None:
    first = new_event_id(now_ms=_NOW_MS)
    second = new_event_id(now_ms=_NOW_MS - 60_000)
    assert second > first
    assert _ms_of(second) == _NOW_MS
    third = new_event_id(now_ms=_NOW_MS + 1)
    assert third > second
    assert _ms_of(third) == _NOW_MS + 1


def test_ids_from_many_threads_are_unique(fresh_uuid7_state: None) -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(new_event_id(now_ms=_NOW_MS) for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    every = [i for out in results for i in out]
    assert len(set(every)) == 8000
    for out in results:
        assert out == sorted(out)


# --- validate_event: valid events ---------------------------------------------------------


def test_a_plain_event_is_valid() -> None:
    assert validate_event(build_event()) is None


def test_a_full_event_is_valid() -> None:
    event = build_event(
        "cli.run:ok-1",
        {"command": "run", "count": 3, "ratio": 0.5, "flag": True, "none": None, "A.b:c-d": "x"},
        app_version="1.2.3",
        session_id="abc",
        duration_ms=0.0,
        success=False,
    )
    assert validate_event(event, now_ms=event.timestamp) is None


def test_any_valid_uuid_is_accepted_not_only_v7() -> None:
    assert validate_event(build_event(id=str(uuid.uuid4()))) is None
    assert validate_event(build_event(id=str(uuid.uuid4()).upper())) is None


def _code(event: Event, **kwargs: Any) -> str | None:
    problem = validate_event(event, **kwargs)
    return None if problem is None else problem[0]


# --- validate_event: each code ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "not-a-uuid",
        "0123456789abcdef0123456789abcdef",  # unhyphenated
        "0123456789abcdef0123456789abcdef----",  # 36 chars, hyphens misplaced
        "01234567-89ab-cdef-0123-456789abc_ef",  # int() accepts the underscore
        "+1234567-89ab-cdef-0123-456789abcdef",  # int() accepts the sign
        " 1234567-89ab-cdef-0123-456789abcdef",  # int() accepts the space
        "{01234567-89ab-cdef-0123-456789abcdef}",
        "urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
        "01234567-89ab-cdef-0123-456789abcdeg",
        "01234567-89ab-cdef-0123-456789abcdef\n",
    ],
)
def test_invalid_id(bad_id: str) -> None:
    assert _code(build_event(id=bad_id)) == "invalid_id"


@pytest.mark.parametrize(
    "event_type",
    ["a", "a" * 64, "command_executed", "cli.run:ok", "x-y_z.0:9", "z" + "9" * 63],
)
def test_valid_types(event_type: str) -> None:
    assert _code(build_event(event_type)) is None


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        "a" * 65,
        "Command",
        "9lives",
        "_private",
        "-x",
        "has space",
        "a/b",
        "ümlaut",
        "command\n",  # `$` would accept this trailing newline
        "command\r",
        "\ncommand",
    ],
)
def test_invalid_type(event_type: str) -> None:
    assert _code(build_event(event_type)) == "invalid_type"


@pytest.mark.parametrize("timestamp", [-1, 2**63, -(2**63)])
def test_invalid_timestamp(timestamp: int) -> None:
    assert _code(build_event(timestamp=timestamp)) == "invalid_timestamp"


def test_timestamp_bounds_are_inclusive() -> None:
    assert _code(build_event(timestamp=0)) is None
    assert _code(build_event(timestamp=2**63 - 1)) is None


def test_future_timestamp_uses_now_and_skew() -> None:
    event = build_event(timestamp=_NOW_MS + MAX_FUTURE_SKEW_MS)
    assert _code(event, now_ms=_NOW_MS) is None
    later = build_event(timestamp=_NOW_MS + MAX_FUTURE_SKEW_MS + 1)
    assert _code(later, now_ms=_NOW_MS) == "future_timestamp"
    # Without a clock there is no future check; with a tighter skew, a tighter bound.
    assert _code(later) is None
    assert _code(build_event(timestamp=_NOW_MS + 11), now_ms=_NOW_MS, max_future_skew_ms=10) == (
        "future_timestamp"
    )
    assert _code(build_event(timestamp=_NOW_MS + 10), now_ms=_NOW_MS, max_future_skew_ms=10) is None


@pytest.mark.parametrize(
    "duration", [-1.0, -0.001, float("inf"), float("-inf"), float("nan"), 1e15, "12", True]
)
def test_invalid_duration(duration: Any) -> None:
    assert _code(build_event(duration_ms=duration)) == "invalid_duration"


@pytest.mark.parametrize("duration", [0, 0.0, 12.5, 10**9])
def test_valid_duration(duration: float) -> None:
    assert _code(build_event(duration_ms=duration)) is None


@pytest.mark.parametrize("field", ["install_id", "session_id", "app", "app_version"])
@pytest.mark.parametrize(
    "value",
    ["", "x" * (MAX_SHORT_STRING_LENGTH + 1), "a\nb", "a\x00b", "tab\there", "del\x7f", "c1\x85"],
)
def test_invalid_field(field: str, value: str) -> None:
    problem = validate_event(build_event(**{field: value}))
    assert problem is not None
    assert problem[0] == "invalid_field"
    assert field in problem[1]


@pytest.mark.parametrize("field", ["install_id", "session_id", "app", "app_version"])
def test_short_fields_at_the_limit_are_valid(field: str) -> None:
    assert _code(build_event(**{field: "x" * MAX_SHORT_STRING_LENGTH})) is None


@pytest.mark.parametrize("field", ["install_id", "session_id", "app", "app_version"])
def test_non_string_short_field_is_invalid_not_a_crash(field: str) -> None:
    assert _code(build_event(**{field: 12345})) == "invalid_field"


@pytest.mark.parametrize("version", [0, 2, -1])
def test_unsupported_schema(version: int) -> None:
    assert _code(build_event(schema=version)) == "unsupported_schema"


def test_too_many_properties() -> None:
    at_limit = {f"k{i}": i for i in range(MAX_PROPERTIES)}
    assert _code(build_event(properties=at_limit)) is None
    over = {f"k{i}": i for i in range(MAX_PROPERTIES + 1)}
    assert _code(build_event(properties=over)) == "too_many_properties"
    assert _code(build_event(properties={"a": 1, "b": 2}), max_properties=1) == (
        "too_many_properties"
    )


@pytest.mark.parametrize(
    "properties",
    [
        {"": 1},
        {"9key": 1},
        {"-key": 1},
        {"has space": 1},
        {"key\n": 1},
        {"ключ": 1},
        {"k" * (MAX_PROPERTY_KEY_LENGTH + 1): 1},
        {"v": "x" * (MAX_PROPERTY_VALUE_LENGTH + 1)},
        {"v": "nul\x00byte"},
        {"v": "escape\x1b[31m"},
        {"v": "c1\x9b"},
        {"v": "del\x7f"},
        {"v": "lone \ud800 surrogate"},
        {"v": 2**63},
        {"v": -(2**63) - 1},
        {"v": float("inf")},
        {"v": float("-inf")},
        {"v": float("nan")},
        {"v": [1, 2]},
        {"v": {"nested": 1}},
        {"v": b"bytes"},
        {"v": object()},
        {1: "non-string key"},
        {None: "non-string key"},
    ],
)
def test_invalid_property(properties: dict[Any, Any]) -> None:
    assert _code(build_event(properties=properties)) == "invalid_property"


@pytest.mark.parametrize(
    "properties",
    [
        {"_k": 1},
        {"K.a:b-c_d": 1},
        {"k" * MAX_PROPERTY_KEY_LENGTH: 1},
        {"v": "x" * MAX_PROPERTY_VALUE_LENGTH},
        {"v": "tabs\tand\nnewlines\r\nare fine"},
        {"v": "unicode ✓ ünïcödé 🎉"},
        {"v": 2**63 - 1},
        {"v": -(2**63)},
        {"v": 1e308},
        {"v": -0.0},
        {"v": True},
        {"v": None},
        {"v": ""},
    ],
)
def test_valid_property(properties: dict[str, Any]) -> None:
    assert _code(build_event(properties=properties)) is None


def test_property_limits_are_parameters() -> None:
    event = build_event(properties={"abcd": "xyz"})
    assert _code(event, max_key_length=3) == "invalid_property"
    assert _code(event, max_value_length=2) == "invalid_property"
    assert _code(event, max_key_length=4, max_value_length=3) is None


def test_checks_report_the_first_problem_with_a_message() -> None:
    problem = validate_event(build_event("Bad", id="nope", schema=9))
    assert problem is not None
    code, message = problem
    assert code == "unsupported_schema"
    assert "9" in message


# --- msgspec round trips ------------------------------------------------------------------


def test_event_round_trip_carries_every_field_and_the_schema() -> None:
    event = build_event()
    wire = msgspec.json.encode(event)
    decoded = msgspec.json.decode(wire)
    assert set(decoded) == {
        "id",
        "type",
        "timestamp",
        "install_id",
        "app",
        "app_version",
        "session_id",
        "duration_ms",
        "success",
        "properties",
        "schema",
    }
    assert decoded["schema"] == SCHEMA_VERSION
    assert msgspec.json.decode(wire, type=Event) == event
    assert msgspec.json.decode(wire, type=Event).schema == SCHEMA_VERSION


def test_full_event_round_trip() -> None:
    event = build_event(
        "x",
        {"s": "v", "i": -3, "f": 1.5, "b": False, "n": None},
        app_version="2.0",
        session_id="s1",
        duration_ms=3.25,
        success=True,
    )
    wire = msgspec.json.encode(event)
    assert msgspec.json.decode(wire, type=Event) == event
    assert msgspec.json.decode(wire)["properties"]["n"] is None


def test_event_decoding_rejects_wrong_types() -> None:
    good = msgspec.json.decode(msgspec.json.encode(build_event()))
    for field, value in [("timestamp", "soon"), ("id", 7), ("properties", [1]), ("success", 1)]:
        bad = dict(good, **{field: value})
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(msgspec.json.encode(bad), type=Event)
    missing = {k: v for k, v in good.items() if k != "install_id"}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(missing), type=Event)


def test_submit_request_decodes_as_envelope_with_raw_events() -> None:
    events = [build_event(), build_event("other")]
    body = msgspec.json.encode(SubmitRequest(events=events))
    assert msgspec.json.decode(body, type=SubmitRequest) == SubmitRequest(events=events)
    envelope = msgspec.json.decode(body, type=SubmitEnvelope)
    assert len(envelope.events) == 2
    assert [msgspec.json.decode(raw, type=Event) for raw in envelope.events] == events


def test_envelope_keeps_one_bad_event_apart() -> None:
    good = msgspec.json.encode(build_event()).decode()
    body = f'{{"events": [{good}, {{"id": 1}}, "text", {good}]}}'.encode()
    envelope = msgspec.json.decode(body, type=SubmitEnvelope)
    outcomes = []
    for raw in envelope.events:
        try:
            msgspec.json.decode(raw, type=Event)
            outcomes.append("ok")
        except msgspec.ValidationError:
            outcomes.append("bad")
    assert outcomes == ["ok", "bad", "bad", "ok"]


def test_envelope_rejects_a_malformed_body() -> None:
    for body in [b"", b"[]", b'{"events": 1}', b'{"events": [1', b"{}"]:
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(body, type=SubmitEnvelope)


def test_submit_response_round_trip() -> None:
    response = SubmitResponse(
        success=False,
        accepted=2,
        rejected=1,
        duplicates=3,
        errors=[EventError(index=1, code="invalid_type", message="bad type")],
    )
    wire = msgspec.json.encode(response)
    assert msgspec.json.decode(wire, type=SubmitResponse) == response
    plain = msgspec.json.decode(wire)
    assert plain["errors"] == [{"index": 1, "code": "invalid_type", "message": "bad type"}]
    empty = SubmitResponse(success=True, accepted=1, rejected=0, duplicates=0)
    assert msgspec.json.decode(msgspec.json.encode(empty))["errors"] == []


def test_server_info_round_trip_carries_every_limit() -> None:
    info = ServerInfo(
        name="telemetry-collector", version="1.0", limits=Limits(max_events_per_batch=5)
    )
    wire = msgspec.json.encode(info)
    assert msgspec.json.decode(wire, type=ServerInfo) == info
    plain = msgspec.json.decode(wire)
    assert plain["schema_version"] == SCHEMA_VERSION
    assert set(plain["limits"]) == set(Limits.__struct_fields__)
    assert plain["limits"]["max_events_per_batch"] == 5
    assert msgspec.json.decode(b'{"name": "n", "version": "v"}', type=ServerInfo).limits == Limits()


def test_values_are_frozen() -> None:
    event = build_event()
    with pytest.raises(AttributeError):
        event.type = "other"  # type: ignore[misc]


@pytest.mark.parametrize("timestamp", ["soon", 1.5, True, None])
def test_non_integer_timestamp_is_invalid_not_a_crash(timestamp: Any) -> None:
    assert _code(build_event(timestamp=timestamp)) == "invalid_timestamp"


@pytest.mark.parametrize("event_type", [None, 7, b"bytes"])
def test_non_string_type_is_invalid_not_a_crash(event_type: Any) -> None:
    assert _code(build_event(event_type)) == "invalid_type"


@pytest.mark.parametrize("event_id", [None, 7, uuid.uuid4()])
def test_non_string_id_is_invalid_not_a_crash(event_id: Any) -> None:
    assert _code(build_event(id=event_id)) == "invalid_id"


def test_remembered_well_formed_strings_keep_their_own_rules() -> None:
    """A value with a tab is a valid property value, never a valid short field,
    however often it was seen before; a remembered key still obeys the length limit."""
    for _ in range(3):
        assert validate_event(build_event(properties={"k": "a\tb"})) is None
        assert validate_event(build_event(app="a\tb")) == (
            "invalid_field",
            "app must not contain control characters",
        )
    key = "k" * MAX_PROPERTY_KEY_LENGTH
    assert validate_event(build_event(properties={key: 1})) is None
    problem = validate_event(build_event(properties={key: 1}), max_key_length=10)
    assert problem is not None and problem[0] == "invalid_property"
