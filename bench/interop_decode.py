"""Decoding foreign batches (OTLP, PostHog, Segment) against our own ``/v1/submit`` body.

Every subject turns the body of one request carrying the same events into the
checked events the store receives: the native body through
``decode_envelope`` + ``check_events``; OTLP protobuf (as the ``otlp`` transport
sends it, ids in ``log.record.uid``; and as an OpenTelemetry SDK sends it, no
uid, so each id is derived from the record's content), OTLP JSON, a PostHog
batch (as posthog-python builds it, with its ``$lib`` properties) and a Segment
batch (as analytics-python builds it) through their decoder, their translation
and then ``check_built`` as the foreign routes call it (``normalised=True``: the
translations build ids, types and keys in their patterns), which gives the
verdict of ``check_events`` on the events' JSON. Timed per event; the target is at most 2x
the native decoding time for OTLP protobuf and PostHog.

One more row, a reference without a target: the PostHog body through the
least a translation can do (decode, one :class:`Event` per message from the
fields this bench's messages carry, no normalising, hashing or checks, then the
same ``check_built``). It is what any Python translation costs at
least, so it shows how close to the target the mapping can get.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench import _ours
from bench._harness import Context, Report, Round, Unavailable, interleave

NAME = "interop_decode"
NATIVE = "native /v1/submit JSON"
OTLP_PB = "OTLP protobuf (otlp transport, uid)"
OTLP_PB_DERIVED = "OTLP protobuf (SDK shape, derived ids)"
OTLP_JSON = "OTLP JSON (uid)"
POSTHOG = "PostHog /batch/"
SEGMENT = "Segment /v1/batch"
FLOOR = "reference: PostHog, no mapping"


def _events(n: int) -> list[Any]:
    from telemetry_core.schema import Event, new_event_id

    now_ms = int(time.time() * 1000)
    return [
        Event(
            id=new_event_id(),
            type=_ours.EVENT_TYPE,
            timestamp=now_ms - i,
            install_id="3f2b8c1e-5d4a-4e7b-9c2f-1a6d8e0b7c55",
            app="bench",
            app_version="1.0.0",
            duration_ms=_ours.EVENT_DURATION_MS,
            success=True,
            properties=dict(_ours.EVENT_PROPERTIES),
        )
        for i in range(n)
    ]


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _posthog_body(events: list[Any]) -> bytes:
    batch = [
        {
            "event": e.type,
            "distinct_id": e.install_id,
            "properties": {
                **e.properties,
                "duration_ms": e.duration_ms,
                "success": e.success,
                "$lib": "posthog-python",
                "$lib_version": "7.0.0",
                "$geoip_disable": True,
                "$is_server": True,
            },
            "timestamp": _iso(e.timestamp),
            "uuid": e.id,
            "type": "capture",
        }
        for e in events
    ]
    return json.dumps({"api_key": "k", "batch": batch, "sent_at": _iso(0)}).encode()


def _segment_body(events: list[Any]) -> bytes:
    batch = [
        {
            "type": "track",
            "event": e.type,
            "anonymousId": e.install_id,
            "userId": None,
            "properties": {**e.properties, "duration_ms": e.duration_ms, "success": e.success},
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            "integrations": {},
            "timestamp": _iso(e.timestamp),
            "messageId": e.id,
        }
        for e in events
    ]
    return json.dumps({"batch": batch, "writeKey": "k", "sentAt": _iso(0)}).encode()


def _otlp_json(protobuf: bytes) -> bytes:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    data = json.loads(
        json_format.MessageToJson(logs_service_pb2.ExportLogsServiceRequest.FromString(protobuf))
    )
    for resource_logs in data["resourceLogs"]:
        for scope_logs in resource_logs["scopeLogs"]:
            for record in scope_logs["logRecords"]:
                for key in ("traceId", "spanId"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex()
    return json.dumps(data).encode()


def _without_uid(protobuf: bytes) -> bytes:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    request = logs_service_pb2.ExportLogsServiceRequest.FromString(protobuf)
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                kept = [kv for kv in record.attributes if kv.key != "log.record.uid"]
                del record.attributes[:]
                record.attributes.extend(kept)
    data: bytes = request.SerializeToString()
    return data


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    n = ctx.pick(200, 500)
    rounds = ctx.pick(7, 25)
    report = Report(NAME, "decode one batch into checked events (time per event)")
    report.params = {"events_per_batch": n, "rounds": rounds}
    try:
        import msgspec

        from telemetry_core.collector import analytics_sdks, otlp
        from telemetry_core.collector.identity import IdentityHasher
        from telemetry_core.collector.ingest import check_built, check_events, decode_envelope
        from telemetry_core.collector.translation import Translation
        from telemetry_core.schema import Event, SubmitRequest
        from telemetry_core_plugins._otlp_client import encode_events
    except ImportError as exc:
        raise Unavailable(f"collector or otlp extra: {exc}") from exc
    events = _events(n)
    now_ms = int(time.time() * 1000)
    hasher = IdentityHasher(uuid.uuid4().hex)
    limits = {"max_event_bytes": 16 * 1024, "max_future_skew_ms": 86_400_000}
    native_body = msgspec.json.encode(SubmitRequest(events=events))
    otlp_body = encode_events(events)
    bodies = {
        NATIVE: native_body,
        OTLP_PB: otlp_body,
        OTLP_PB_DERIVED: _without_uid(otlp_body),
        OTLP_JSON: _otlp_json(otlp_body),
        POSTHOG: _posthog_body(events),
        SEGMENT: _segment_body(events),
    }
    report.params["body_bytes"] = {name: len(body) for name, body in bodies.items()}
    bodies[FLOOR] = bodies[POSTHOG]

    def native(body: bytes) -> int:
        raws = decode_envelope(body, max_events=n)
        return len(check_events(raws, now_ms=now_ms, **limits).events)

    def via_otlp(encoding: otlp.Encoding) -> Callable[[bytes], int]:
        def decode(body: bytes) -> int:
            translation = otlp.translate_logs(body, encoding, received_ms=now_ms)
            return len(
                check_built(translation.events, now_ms=now_ms, normalised=True, **limits).events
            )

        return decode

    def posthog(body: bytes) -> int:
        batch = analytics_sdks.decode_posthog(body, max_events=n)
        translation = analytics_sdks.translate_posthog(batch, hasher=hasher, received_ms=now_ms)
        return len(check_built(translation.events, now_ms=now_ms, normalised=True, **limits).events)

    def segment(body: bytes) -> int:
        batch = analytics_sdks.decode_segment(body, max_events=n)
        translation = analytics_sdks.translate_segment(batch, hasher=hasher, received_ms=now_ms)
        return len(check_built(translation.events, now_ms=now_ms, normalised=True, **limits).events)

    def posthog_floor(body: bytes) -> int:
        out = Translation()
        for message in msgspec.json.decode(body)["batch"]:
            props = message["properties"]
            out.add(
                len(out.events),
                Event(
                    id=message["uuid"],
                    type=message["event"],
                    timestamp=int(
                        dt.datetime.fromisoformat(message["timestamp"]).timestamp() * 1000
                    ),
                    install_id=message["distinct_id"],
                    app="posthog",
                    duration_ms=props["duration_ms"],
                    success=props["success"],
                    properties={k: props[k] for k in _ours.EVENT_PROPERTIES},
                ),
            )
        return len(check_built(out.events, now_ms=now_ms, normalised=True, **limits).events)

    decoders: dict[str, Callable[[bytes], int]] = {
        NATIVE: native,
        OTLP_PB: via_otlp(otlp.PROTOBUF),
        OTLP_PB_DERIVED: via_otlp(otlp.PROTOBUF),
        OTLP_JSON: via_otlp(otlp.JSON),
        POSTHOG: posthog,
        SEGMENT: segment,
        FLOOR: posthog_floor,
    }

    def subject(name: str) -> Callable[[], Callable[[], Round]]:
        def factory() -> Callable[[], Round]:
            decode, body = decoders[name], bodies[name]
            if decode(body) != n:  # every subject must keep every event, or it is not comparable
                raise Unavailable(f"{name} kept {decode(body)} of {n} events")

            def one_round() -> Round:
                started = time.perf_counter_ns()
                decode(body)
                return Round(time.perf_counter_ns() - started, n)

            return one_round

        return factory

    report.rows = interleave({name: subject(name) for name in bodies}, rounds=rounds, unit="event")
    # "within 2x of the native decoding time" is a throughput ratio of at least 0.5.
    report.check_ratio(OTLP_PB, NATIVE, at_least=0.5)
    report.check_ratio(OTLP_PB_DERIVED, NATIVE, at_least=0.5)
    report.check_ratio(POSTHOG, NATIVE, at_least=0.5)
    report.check_ratio(OTLP_JSON, NATIVE, at_least=0.5)
    report.check_ratio(SEGMENT, NATIVE, at_least=0.5)
    floor = report.ratio(FLOOR, NATIVE)
    if floor is not None:
        report.notes.append(f"{FLOOR} vs {NATIVE}: {floor:.3f}x (a reference, no target)")
    return report
