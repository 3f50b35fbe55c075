"""OTLP/HTTP logs: decoding both encodings and translating records into events."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import msgspec
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from telemetry_core.collector import otlp
from telemetry_core.collector.ingest import IngestError, check_events
from telemetry_core.collector.translation import (
    ID_NAMESPACE,
    Translation,
    derived_id_of_bytes,
    derived_ids_after,
)
from telemetry_core.schema import Event
from tests.conftest import assert_normalised

NOW_MS = int(time.time() * 1000)
ONE_INT = common_pb2.ArrayValue(values=[common_pb2.AnyValue(int_value=1)])
UID = "0190c1a2-0000-7000-8000-000000000001"


def kv(key: str, **value: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**value))


def request(*records: logs_pb2.LogRecord, resource: list[common_pb2.KeyValue] | None = None):
    attributes = (
        resource
        if resource is not None
        else [
            kv("service.name", string_value="shop"),
            kv("service.version", string_value="2.1.0"),
            kv("service.instance.id", string_value="inst-7"),
            kv("host.name", string_value="build-box"),
        ]
    )
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=resource_pb2.Resource(attributes=attributes),
                scope_logs=[
                    logs_pb2.ScopeLogs(
                        scope=common_pb2.InstrumentationScope(name="shop.ui"),
                        log_records=list(records),
                    )
                ],
            )
        ]
    )


def clicked(**extra: Any) -> logs_pb2.LogRecord:
    fields: dict[str, Any] = {
        "time_unix_nano": NOW_MS * 1_000_000 + 123,
        "event_name": "Button Clicked",
        "body": common_pb2.AnyValue(string_value="free text"),
        "trace_id": bytes(range(16)),
        "span_id": bytes(range(8)),
        "attributes": [
            kv("event.duration_ms", double_value=12.5),
            kv("event.success", bool_value=True),
            kv("plan", string_value="pro"),
            kv("seats", int_value=3),
            kv("ratio", double_value=0.5),
            kv("beta", bool_value=False),
            kv(
                "tags", array_value=common_pb2.ArrayValue(values=[common_pb2.AnyValue(int_value=1)])
            ),
            kv("session.id", string_value="sess-1"),
        ],
    }
    fields.update(extra)
    return logs_pb2.LogRecord(**fields)


def as_json(message: logs_service_pb2.ExportLogsServiceRequest) -> bytes:
    """The OTLP/JSON form: camelCase, int64 as strings, hex trace/span ids."""
    data = json.loads(json_format.MessageToJson(message))
    for resource_logs in data.get("resourceLogs", []):
        for scope_logs in resource_logs.get("scopeLogs", []):
            for record in scope_logs.get("logRecords", []):
                for field in ("traceId", "spanId"):
                    if field in record:
                        record[field] = base64.b64decode(record[field]).hex().upper()
    return json.dumps(data).encode()


def events_of(body: bytes, encoding: otlp.Encoding) -> tuple[list[Event], Translation]:
    translation = otlp.translate_logs(body, encoding, received_ms=NOW_MS)
    return [msgspec.json.decode(raw, type=Event) for raw in translation.raws], translation


def test_a_record_maps_to_an_event_as_design_section_10_says() -> None:
    [event], _ = events_of(request(clicked()).SerializeToString(), otlp.PROTOBUF)
    assert event.type == "button_clicked"
    assert event.timestamp == NOW_MS
    assert (event.app, event.app_version, event.install_id) == ("shop", "2.1.0", "inst-7")
    assert (event.duration_ms, event.success, event.session_id) == (12.5, True, "sess-1")
    # scalar attributes only; body, trace context and host.name are not stored
    assert event.properties == {"plan": "pro", "seats": 3, "ratio": 0.5, "beta": False}
    assert uuid.UUID(event.id).version == 5


def test_log_record_uid_is_the_event_id_when_it_is_a_uuid() -> None:
    record = clicked(attributes=[kv("log.record.uid", string_value=UID)])
    [event], _ = events_of(request(record).SerializeToString(), otlp.PROTOBUF)
    assert event.id == UID
    assert "log.record.uid" not in event.properties


def test_a_non_uuid_uid_gets_a_derived_id_instead() -> None:
    record = clicked(attributes=[kv("log.record.uid", string_value="01ARZ3NDEKTSV4RRFFQ69G5FAV")])
    [event], _ = events_of(request(record).SerializeToString(), otlp.PROTOBUF)
    assert uuid.UUID(event.id).version == 5


def test_a_resent_record_gets_the_same_derived_id_and_a_different_one_another() -> None:
    body = request(clicked()).SerializeToString()
    [first], _ = events_of(body, otlp.PROTOBUF)
    [again], _ = events_of(body, otlp.PROTOBUF)
    [other], _ = events_of(
        request(clicked(time_unix_nano=NOW_MS * 1_000_000 + 124)).SerializeToString(),
        otlp.PROTOBUF,
    )
    assert first.id == again.id
    assert other.id != first.id


def test_records_sharing_attributes_each_get_their_own_uid_and_properties() -> None:
    # Attribute lists that repeat are read once per request: the uid (wherever it
    # sits), a repeated key (its last value wins) and each event's own properties
    # must still come out per record.
    uids = [str(uuid.uuid4()) for _ in range(4)]
    common = [kv("plan", string_value="pro"), kv("seats", int_value=3)]
    records = [
        clicked(attributes=[kv("log.record.uid", string_value=uids[0]), *common]),
        clicked(attributes=[*common, kv("log.record.uid", string_value=uids[1])]),
        clicked(attributes=[common[0], kv("log.record.uid", string_value=uids[2]), common[1]]),
        clicked(attributes=[*common, kv("plan", string_value="team")]),
        clicked(attributes=list(common)),
        clicked(attributes=[*common, kv("log.record.uid", string_value=uids[3])]),
    ]
    events, _ = events_of(request(*records).SerializeToString(), otlp.PROTOBUF)
    assert [e.id for e in events[:3]] == uids[:3]
    assert events[5].id == uids[3]
    assert [e.properties for e in events] == [{"plan": "pro", "seats": 3}] * 3 + [
        {"plan": "team", "seats": 3},
        {"plan": "pro", "seats": 3},
        {"plan": "pro", "seats": 3},
    ]
    assert uuid.UUID(events[4].id).version == 5
    events[0].properties["plan"] = "changed"  # each event owns its properties
    assert events[1].properties["plan"] == "pro"


def test_derived_ids_are_uuid5_of_the_namespace_kind_and_content() -> None:
    for text in ("", "x", "record bytes " * 50):
        expected = uuid.uuid5(ID_NAMESPACE, "otlp\x00" + text)
        assert derived_id_of_bytes("otlp", text.encode()) == str(expected)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.binary(max_size=300), max_size=3))
def test_ids_derived_after_a_context_are_those_of_context_and_data(
    context: bytes, records: list[bytes]
) -> None:
    """A scope's context hashed once gives each record the id of context + record."""
    derive = derived_ids_after("otlp", context)
    for data in records:
        assert derive(data) == derived_id_of_bytes("otlp", context + data)
        name = ID_NAMESPACE.bytes + b"otlp\x00" + context + data
        digest = hashlib.sha1(name, usedforsecurity=False).digest()
        assert derive(data) == str(uuid.UUID(bytes=digest[:16], version=5))


def test_json_and_protobuf_give_the_same_events() -> None:
    named_by_attribute = clicked(event_name="", attributes=[kv("event.name", string_value="x")])
    with_uid = clicked(attributes=[kv("log.record.uid", string_value=UID)])
    message = request(clicked(), named_by_attribute, with_uid)
    from_pb, _ = events_of(message.SerializeToString(), otlp.PROTOBUF)
    from_json, _ = events_of(as_json(message), otlp.JSON)
    assert len(from_pb) == 3
    # Ids derived from content are derived per encoding (a retry resends the same bytes).
    assert [msgspec.structs.replace(e, id="") for e in from_json] == [
        msgspec.structs.replace(e, id="") for e in from_pb
    ]
    assert from_json[2].id == from_pb[2].id == UID


def test_a_resent_json_record_gets_the_same_derived_id() -> None:
    body = as_json(request(clicked()))
    [first], _ = events_of(body, otlp.JSON)
    [again], _ = events_of(body, otlp.JSON)
    [other], _ = events_of(as_json(request(clicked(severity_text="WARN"))), otlp.JSON)
    assert first.id == again.id != other.id


def test_json_accepts_int64_as_numbers_too() -> None:
    body = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "a"}}]
                },
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": NOW_MS * 1_000_000,
                                "eventName": "opened",
                                "attributes": [{"key": "n", "value": {"intValue": 5}}],
                                "unknownField": {"ignored": True},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    [event], _ = events_of(json.dumps(body).encode(), otlp.JSON)
    assert (event.type, event.timestamp, event.properties) == ("opened", NOW_MS, {"n": 5})
    assert (event.app, event.install_id) == ("a", otlp.DEFAULT_INSTALL)


def test_event_name_falls_back_to_the_event_name_attribute_and_time_to_observed() -> None:
    record = logs_pb2.LogRecord(
        observed_time_unix_nano=(NOW_MS - 5) * 1_000_000,
        attributes=[kv("event.name", string_value="$pageview")],
    )
    [event], _ = events_of(request(record, resource=[]).SerializeToString(), otlp.PROTOBUF)
    assert (event.type, event.timestamp) == ("pageview", NOW_MS - 5)
    assert (event.app, event.install_id) == (otlp.DEFAULT_APP, otlp.DEFAULT_INSTALL)
    assert "event.name" not in event.properties


def test_a_log_line_without_an_event_name_is_rejected_with_its_index() -> None:
    plain = logs_pb2.LogRecord(time_unix_nano=1, body=common_pb2.AnyValue(string_value="GET /"))
    events, translation = events_of(request(clicked(), plain).SerializeToString(), otlp.PROTOBUF)
    assert len(events) == 1
    assert [(e.index, e.code) for e in translation.errors] == [(1, "missing_type")]
    assert translation.total == 2


def test_schema_rules_and_pii_reject_records_after_translation_with_request_indexes() -> None:
    message = request(
        clicked(),
        clicked(attributes=[kv("event.duration_ms", double_value=-1.0)]),
        clicked(attributes=[kv("owner", string_value="ann@example.com")]),
    )
    translation = otlp.translate_logs(
        message.SerializeToString(), otlp.PROTOBUF, received_ms=NOW_MS
    )
    checked = check_events(
        translation.raws, now_ms=NOW_MS, max_event_bytes=16384, max_future_skew_ms=86_400_000
    )
    errors = translation.all_errors(checked.errors)
    assert len(checked.events) == 1
    assert [(e.index, e.code) for e in errors] == [(1, "invalid_duration"), (2, "pii")]


@pytest.mark.parametrize(
    ("body", "encoding"),
    [(b"\xff\xff\xff", otlp.PROTOBUF), (b"{", otlp.JSON), (b'{"resourceLogs": 3}', otlp.JSON)],
)
def test_an_undecodable_body_is_a_400(body: bytes, encoding: otlp.Encoding) -> None:
    with pytest.raises(IngestError) as info:
        otlp.translate_logs(body, encoding, received_ms=NOW_MS)
    assert (info.value.status, info.value.code) == (400, "malformed")


def test_encoding_is_read_from_the_content_type() -> None:
    assert otlp.encoding_of("application/x-protobuf") == otlp.PROTOBUF
    assert otlp.encoding_of("Application/JSON; charset=utf-8") == otlp.JSON
    assert otlp.encoding_of("text/plain") is None
    assert otlp.encoding_of(None) is None


def test_partial_success_is_a_real_export_response_in_both_encodings() -> None:
    pb = logs_service_pb2.ExportLogsServiceResponse.FromString(
        otlp.encode_export_response(2, "record 1: pii", otlp.PROTOBUF)
    )
    assert pb.partial_success.rejected_log_records == 2
    assert pb.partial_success.error_message == "record 1: pii"
    assert otlp.encode_export_response(0, "", otlp.PROTOBUF) == b""
    as_json_answer = json.loads(otlp.encode_export_response(2, "x", otlp.JSON))
    assert as_json_answer == {"partialSuccess": {"rejectedLogRecords": "2", "errorMessage": "x"}}
    assert json.loads(otlp.encode_export_response(0, "", otlp.JSON)) == {}


def test_a_refusal_is_a_google_rpc_status_in_the_request_encoding() -> None:
    body, media = otlp.encode_status(401, "missing or unknown key", otlp.PROTOBUF)
    status = status_pb2.Status.FromString(body)
    assert (media, status.code, status.message) == (otlp.PROTOBUF, 16, "missing or unknown key")
    body, media = otlp.encode_status(429, "slow down", otlp.JSON)
    assert (media, json.loads(body)) == (otlp.JSON, {"code": 8, "message": "slow down"})
    body, media = otlp.encode_status(415, "no", None)
    assert media == otlp.JSON


# -- record shapes (protobuf): the same translation as the attribute memo alone -------

_UIDS = [UID, "0190C1A2-0000-7000-8000-000000000002", "not-a-uuid", ""]
_pb_values = st.one_of(
    st.builds(lambda s: {"string_value": s}, st.sampled_from(["a", "", "pro", *_UIDS])),
    st.builds(lambda i: {"int_value": i}, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.builds(lambda b: {"bool_value": b}, st.booleans()),
    st.builds(lambda d: {"double_value": d}, st.sampled_from([0.0, -0.0, 12.5, float("nan")])),
    st.just({"array_value": ONE_INT}),
    st.just({}),
)
_pb_keys = st.sampled_from(
    ["log.record.uid", "event.name", "event.duration_ms", "event.success", "session.id",
     "plan", "seats", "Plan Name"]
)  # fmt: skip
_pb_shapes = st.lists(
    st.tuples(
        st.sampled_from(["Button Clicked", "", "123", "page_view"]),
        st.builds(
            lambda first, rest: first + rest,
            st.sampled_from([[], [("log.record.uid", {"string_value": UID})]]),
            st.lists(st.tuples(_pb_keys, _pb_values), max_size=5),
        ),
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def _pb_requests(draw: st.DrawFn) -> bytes:
    """Requests whose records mostly share a few shapes: each record one of the
    drawn shapes with its own times and, where the shape has a uid, its own uid."""
    shapes = draw(_pb_shapes)
    records = []
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        name, attributes = shapes[draw(st.integers(min_value=0, max_value=len(shapes) - 1))]
        pairs = [
            kv(key, **({"string_value": draw(st.sampled_from(_UIDS))} if
                       key == "log.record.uid" and "string_value" in value and draw(st.booleans())
                       else value))
            for key, value in attributes
        ]  # fmt: skip
        times = draw(st.sampled_from([0, NOW_MS * 1_000_000, NOW_MS * 1_000_000 + 7]))
        records.append(
            logs_pb2.LogRecord(
                event_name=name,
                attributes=pairs,
                time_unix_nano=times,
                observed_time_unix_nano=draw(st.sampled_from([0, times + 1, times + 5_000_000])),
            )
        )
    return request(*records).SerializeToString()


def _pb_translated(translation: Translation) -> tuple[Any, ...]:
    return (
        translation.total,
        translation.origins,
        [repr(msgspec.structs.asdict(e)) for e in translation.events],  # repr: -0.0, nan
        [(e.index, e.code, e.message) for e in translation.errors],
    )


@settings(max_examples=300, deadline=None)
@given(_pb_requests())
def test_protobuf_records_read_by_shape_give_the_events_read_through_the_memo(
    body: bytes,
) -> None:
    """Records mapped by their shape (times and uid blanked, encoding looked up) get
    the events and rejections that reading every record's attributes gives: ids
    from each record's own uid or content, -0.0 kept apart from 0.0, repeated and
    misplaced uids, non-string uids, records without a name."""
    shaped = otlp._translate_protobuf(body, NOW_MS)
    assert _pb_translated(shaped) == _pb_translated(
        otlp._translate_protobuf(body, NOW_MS, shapes=False)
    )
    assert_normalised(shaped)


def _read_by_shape(records: list[Any]) -> Any:
    """A protobuf request's reader after it read ``records`` (one scope), shapes on."""
    reader = otlp._PbRequest(NOW_MS, shapes=True)
    reader.resource = otlp._Resource({})
    parsed = request(*records).resource_logs[0].scope_logs[0].log_records
    for index, record in enumerate(parsed):
        reader.record(index, record)
    return reader


def test_an_sdk_export_is_read_by_shape() -> None:
    """The otlp transport's records (a uid each, the rest alike) take the shape
    path (the equivalence test above would prove nothing if they never did)."""
    records = [
        clicked(
            attributes=[kv("log.record.uid", string_value=str(uuid.uuid4())), kv("n", int_value=1)],
            time_unix_nano=NOW_MS * 1_000_000 + i,
        )
        for i in range(40)
    ]
    reader = _read_by_shape(records)
    assert reader.shapes is not None
    assert (reader.shapes.hits, reader.shapes.misses) == (39, 1)
    assert reader.shapes.template is not None and reader.shapes.template_misses == 0
    assert [e.id for e in reader.out.events] == [
        kv.value.string_value for r in records for kv in r.attributes[:1]
    ]


def test_a_template_that_misses_more_than_it_hits_is_left_alone() -> None:
    """Three shapes in turn: the template (the last shape learnt) hits one record in
    three, so once its misses pass its own hits the reader stops trying it, while
    the shapes themselves keep hitting."""
    records = [
        clicked(
            attributes=[
                kv("log.record.uid", string_value=str(uuid.uuid4())),
                kv(f"k{i % 3}", int_value=1),
            ],
            time_unix_nano=NOW_MS * 1_000_000 + i,
        )
        for i in range(300)
    ]
    reader = _read_by_shape(records)
    shapes = reader.shapes
    assert shapes is not None
    assert shapes.template_misses > shapes.template_hits
    assert not shapes.template_worth_it
    assert shapes.worth_it  # the shapes are still worth it: all three hit
    assert len(reader.out.events) == 300


@pytest.mark.parametrize(
    "odd",
    [
        kv("mark", string_value="\x7f" * 36),  # the uid's mark: found twice
        kv("mark", bytes_value=b"\x09" + (0x7E5A3C1F2D4B6987).to_bytes(8, "little")),
        kv("mark", bytes_value=b"\x59" + (0x6987D4B2F1C3A5E7).to_bytes(8, "little")),
    ],
)
def test_a_record_holding_a_mark_gets_no_template_and_the_same_events(odd: Any) -> None:
    """A template's holes are found by their marks; a record whose other bytes hold
    a mark too gets no template, and its like records are read by shape as before."""
    records = [
        clicked(
            attributes=[kv("log.record.uid", string_value=str(uuid.uuid4())), odd],
            time_unix_nano=NOW_MS * 1_000_000 + i,
            observed_time_unix_nano=NOW_MS * 1_000_000 + 2 * i + 1,
        )
        for i in range(5)
    ]
    reader = otlp._PbRequest(NOW_MS, shapes=True)
    reader.resource = otlp._Resource({})
    for index, record in enumerate(request(*records).resource_logs[0].scope_logs[0].log_records):
        reader.record(index, record)
    assert reader.shapes is not None and reader.shapes.template is None
    body = request(*records).SerializeToString()
    assert _pb_translated(otlp._translate_protobuf(body, NOW_MS)) == _pb_translated(
        otlp._translate_protobuf(body, NOW_MS, shapes=False)
    )


def test_records_of_ever_new_shapes_stop_the_shape_lookups() -> None:
    """A request whose records all differ (say, a duration in each) stops looking
    for shapes after a few misses, so it costs about what the memo alone costs."""
    records = [clicked(attributes=[kv("n", int_value=i)]) for i in range(100)]
    reader = otlp._PbRequest(NOW_MS, shapes=True)
    reader.resource = otlp._Resource({})
    for index, record in enumerate(request(*records).resource_logs[0].scope_logs[0].log_records):
        reader.record(index, record)
    assert reader.shapes is not None
    assert reader.shapes.misses == 17
    assert [e.properties for e in reader.out.events] == [{"n": i} for i in range(100)]


@settings(max_examples=300, deadline=None)
@given(_pb_requests())
def test_json_records_read_by_shape_give_the_events_read_one_by_one(body: bytes) -> None:
    """The same for OTLP JSON: records compared with the last shape (uid's value
    aside) get what reading each record's attributes gives, -0.0 and 0.0 apart."""
    data = as_json(logs_service_pb2.ExportLogsServiceRequest.FromString(body))
    shaped = otlp._translate_json(data, NOW_MS)
    assert _pb_translated(shaped) == _pb_translated(
        otlp._translate_json(data, NOW_MS, shapes=False)
    )
    assert_normalised(shaped)


def test_json_records_differing_only_in_a_zero_sign_keep_their_own() -> None:
    """Structs compare 0.0 equal to -0.0: a shape is never taken from a double zero."""
    records = [clicked(attributes=[kv("event.duration_ms", double_value=d)]) for d in (0.0, -0.0)]
    events, _ = events_of(as_json(request(*records, *records)), otlp.JSON)
    assert [repr(e.duration_ms) for e in events] == ["0.0", "-0.0", "0.0", "-0.0"]


def test_a_log_record_holds_no_map_field_so_its_plain_encoding_is_deterministic() -> None:
    """Derived ids hash a record's plain encoding: the same bytes as the
    deterministic one only while no map field (whose order varies) is reachable."""
    seen: set[str] = set()
    todo = [logs_pb2.LogRecord.DESCRIPTOR]
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        assert not message.GetOptions().map_entry, message.full_name
        todo.extend(field.message_type for field in message.fields if field.message_type)
    assert "opentelemetry.proto.common.v1.AnyValue" in seen
    record = clicked(
        attributes=[
            kv(
                "m",
                kvlist_value=common_pb2.KeyValueList(
                    values=[kv("b", int_value=1), kv("a", int_value=2)]
                ),
            )
        ]
    )
    assert record.SerializeToString() == record.SerializeToString(deterministic=True)
