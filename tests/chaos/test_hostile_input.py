"""Hostile input against a real ``telemetry-collector serve`` over HTTPS.

A seeded generator produces malformed JSON, wrong types, deep nesting, huge
strings and numbers, invalid UTF-8, gzip bombs, bodies over every limit, slow
bodies, wrong methods, paths, content types and encodings, missing or wrong
keys, admin endpoints with submission keys, and malformed HTTP, each sent on
its own TLS connection. Valid batches (and resends of them) are interleaved.

Asserted: no 5xx and no crash; every refusal by the application is a 4xx with a
JSON ``{"error": {"code", "message"}}`` body (the dashboard's login page is HTML
by design; malformed HTTP is refused by the HTTP server layer before the
application, with a plain-text 400 or a closed connection); a 200 to a hostile
batch accepts exactly its valid events; the collector's RSS stays bounded; the
interleaved valid traffic is counted exactly.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from telemetry_core.schema import Event, new_event_id
from tests.chaos.conftest import (
    ADMIN_TOKEN,
    API_KEY,
    FULL,
    Collector,
    Figures,
    LogVault,
)
from tests.integration.collector_process import collector_command

REQUESTS = int(os.environ.get("TELEMETRY_CHAOS_HOSTILE_REQUESTS", "10000" if FULL else "2000"))
#: How long to wait for an answer that may legitimately never come.
CLOSE_WAIT = 0.5
VALID_TYPE = "hostile.valid"
#: The collector's RSS may grow by at most this much over the attack (KiB).
RSS_GROWTH_LIMIT_KIB = 150 * 1024
#: ... and never exceed this (KiB).
RSS_PEAK_LIMIT_KIB = 600 * 1024

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800 if FULL else 300)]


class Probe:
    """One generated request: raw bytes and what a correct answer looks like."""

    def __init__(
        self,
        kind: str,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        valid_ids: tuple[str, ...] = (),
        raw: bytes | None = None,
        slow: bool = False,
        may_close: bool = False,
        may_be_text: bool = False,
    ) -> None:
        self.kind = kind
        self.method = method
        self.path = path
        self.headers = {"Host": "127.0.0.1", **(headers or {})}
        self.body = body
        self.valid_ids = valid_ids
        self.raw = raw
        self.slow = slow
        self.may_close = may_close
        self.may_be_text = may_be_text

    def bytes(self) -> bytes:
        """The request on the wire."""
        if self.raw is not None:
            return self.raw
        headers = dict(self.headers)
        headers.setdefault("Content-Length", str(len(self.body)))
        headers["Connection"] = "close"
        head = f"{self.method} {self.path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        return head.encode("latin-1") + b"\r\n" + self.body


def _event(**overrides: Any) -> dict[str, Any]:
    event = {
        "id": new_event_id(),
        "type": VALID_TYPE,
        "timestamp": int(time.time() * 1000),
        "install_id": "0123456789abcdef0123456789abcdef",
        "app": "hostileapp",
        "duration_ms": 5.0,
        "success": True,
        "properties": {"n": 1},
    }
    event.update(overrides)
    return event


def _submit_headers(**extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-API-Key": API_KEY, **extra}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


class Generator:
    """Seeded generator of hostile probes, by kind."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        # ~50 MB of zeros in ~50 KB: decompressing it must stop at the body cap.
        self.bomb = gzip.compress(b"0" * (50 * 1024 * 1024), compresslevel=9)
        self.json_bomb = gzip.compress(
            b'{"events": [' + b" " * (20 * 1024 * 1024) + b"]}", compresslevel=9
        )
        self.sent_batches: list[tuple[bytes, tuple[str, ...]]] = []

    def kinds(self) -> dict[str, Callable[[], Probe]]:
        """Every generator, by kind name."""
        return {
            "malformed_json": self.malformed_json,
            "wrong_types": self.wrong_types,
            "deep_nesting": self.deep_nesting,
            "huge_strings": self.huge_strings,
            "huge_numbers": self.huge_numbers,
            "invalid_utf8": self.invalid_utf8,
            "gzip_bomb": self.gzip_bomb,
            "over_limit": self.over_limit,
            "slow_body": self.slow_body,
            "wrong_method": self.wrong_method,
            "wrong_path": self.wrong_path,
            "wrong_content_type": self.wrong_content_type,
            "wrong_key": self.wrong_key,
            "admin_with_submission_key": self.admin_with_submission_key,
            "partial_batch": self.partial_batch,
            "malformed_http": self.malformed_http,
        }

    def valid(self) -> Probe:
        """A valid batch (sometimes a resend of an earlier one)."""
        if self.sent_batches and self.rng.random() < 0.2:
            body, ids = self.rng.choice(self.sent_batches)
            return Probe("valid_resend", "POST", "/v1/submit", _submit_headers(), body)
        events = [_event() for _ in range(self.rng.randint(1, 20))]
        ids = tuple(e["id"] for e in events)
        body = _json({"events": events})
        self.sent_batches.append((body, ids))
        return Probe("valid", "POST", "/v1/submit", _submit_headers(), body, valid_ids=ids)

    def _post(self, kind: str, body: bytes, **headers: str) -> Probe:
        return Probe(kind, "POST", "/v1/submit", _submit_headers(**headers), body)

    def malformed_json(self) -> Probe:
        rng = self.rng
        choices: list[bytes] = [
            bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))),
            _json({"events": [_event()]})[: rng.randint(0, 60)],
            b'{"events": [',
            b"null",
            b"[]",
            b"{}",
            b'{"events": NaN}',
            b'{"events": [], "events": [{}]',
            b"\x00" * rng.randint(1, 100),
            b'{"events": [] } trailing',
            b"",
            b'{"events": [{"id": "\\ud800"}]',
        ]
        return self._post("malformed_json", rng.choice(choices))

    def wrong_types(self) -> Probe:
        rng = self.rng
        field = rng.choice(["id", "type", "timestamp", "install_id", "app", "properties",
                            "duration_ms", "success", "schema", "session_id"])  # fmt: skip
        value = rng.choice([None, 1, -1, "x", [], {}, True, 1.5, ["a"], {"a": {"b": 1}}])
        envelopes: list[Any] = [
            {"events": rng.choice(["x", 1, None, {}, True])},
            {"events": [rng.choice([1, "a", None, [], True])]},
            {"events": [_event(**{field: value})]},
            {"events": [_event(properties={"k": rng.choice([[1], {"a": 1}, [None]])})]},
            {"evnts": [_event()]},
            [_event()],
        ]
        envelope = rng.choice(envelopes)
        probe = self._post("wrong_types", _json(envelope))
        # A wrong type in one field can still be a valid event (e.g. session_id=None).
        if isinstance(envelope, dict) and isinstance(envelope.get("events"), list):
            ev = envelope["events"][0] if envelope["events"] else None
            if isinstance(ev, dict) and _is_valid(ev):
                probe.valid_ids = (ev["id"],)
        return probe

    def deep_nesting(self) -> Probe:
        depth = self.rng.choice([100, 1000, 10_000, 100_000])
        forms = [
            b"[" * depth + b"]" * depth,
            b'{"events": ' + b"[" * depth + b"]" * depth + b"}",
            b'{"events": [{"properties": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}]}",
            b'{"events": [' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}",
        ]
        return self._post("deep_nesting", self.rng.choice(forms))

    def huge_strings(self) -> Probe:
        size = self.rng.choice([1000, 20_000, 200_000, 900_000])
        text = "a" * size
        field = self.rng.choice(["type", "id", "install_id", "app", "app_version", "session_id"])
        forms = [
            {"events": [_event(**{field: text})]},
            {"events": [_event(properties={"k": text})]},
            {"events": [_event(properties={text[:5000]: 1})]},
            {"events": [_event(properties={f"k{i}": i for i in range(size // 1000)})]},
        ]
        envelope = self.rng.choice(forms)
        probe = self._post("huge_strings", _json(envelope))
        event = envelope["events"][0]
        if len(_json(event)) <= 16 * 1024 and _is_valid(event):
            probe.valid_ids = (event["id"],)
        return probe

    def huge_numbers(self) -> Probe:
        number = self.rng.choice(
            [
                b"1e999",
                b"-1e999",
                b"9" * 5000,
                b"-" + b"9" * 400,
                b"1e-999",
                b"18446744073709551616",
                b"-9223372036854775809",
                b"0.0000000000000000000000001",
                b"-0",
            ]
        )
        field = self.rng.choice([b"timestamp", b"duration_ms", b"schema"])
        event_id = new_event_id()
        raw_event = (
            b'{"id": "' + event_id.encode() + b'", "type": "' + VALID_TYPE.encode() + b'", '
            b'"install_id": "0123456789abcdef0123456789abcdef", "app": "hostileapp", '
            b'"timestamp": ' + str(int(time.time() * 1000)).encode() + b", "
            b'"' + field + b'": ' + number + b"}"
        )
        probe = self._post("huge_numbers", b'{"events": [' + raw_event + b"]}")
        try:
            decoded = msgspec.json.decode(raw_event, type=Event)
        except msgspec.DecodeError:
            return probe
        from telemetry_core.schema import validate_event

        if validate_event(decoded, now_ms=int(time.time() * 1000)) is None:
            probe.valid_ids = (event_id,)
        return probe

    def invalid_utf8(self) -> Probe:
        bad = self.rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        body = _json({"events": [_event(properties={"k": "VALUE"})]}).replace(b"VALUE", bad)
        return self._post("invalid_utf8", body)

    def gzip_bomb(self) -> Probe:
        choice = self.rng.randrange(4)
        if choice == 0:
            return self._post("gzip_bomb", self.bomb, **{"Content-Encoding": "gzip"})
        if choice == 1:
            return self._post("gzip_bomb", self.json_bomb, **{"Content-Encoding": "gzip"})
        if choice == 2:  # corrupt gzip
            body = bytearray(gzip.compress(_json({"events": [_event()]})))
            body[12] ^= 0xFF
            return self._post("gzip_bomb", bytes(body), **{"Content-Encoding": "gzip"})
        body = gzip.compress(_json({"events": [_event()]}))[:-6]  # truncated
        return self._post("gzip_bomb", body, **{"Content-Encoding": "gzip"})

    def over_limit(self) -> Probe:
        choice = self.rng.randrange(5)
        if choice == 0:  # compressed cap, declared
            return self._post("over_limit", b" " * (1024 * 1024 + 10))
        if choice == 1:  # too many events
            return self._post("over_limit", _json({"events": [{} for _ in range(1001)]}))
        if choice == 2:  # decompressed cap, honest gzip
            raw = b'{"events": [' + b" " * (5 * 1024 * 1024 + 10) + b"]}"
            return self._post("over_limit", gzip.compress(raw), **{"Content-Encoding": "gzip"})
        if choice == 3:  # one event over the event cap (rejected in a 200)
            return self._post(
                "over_limit", _json({"events": [_event(properties={"k": "x" * 17000})]})
            )
        # declared length larger than the cap, body never sent
        probe = self._post("over_limit", b"", **{"Content-Length": str(50 * 1024 * 1024)})
        probe.may_close = True
        return probe

    def slow_body(self) -> Probe:
        events = [_event()]
        probe = Probe(
            "slow_body",
            "POST",
            "/v1/submit",
            _submit_headers(),
            _json({"events": events}),
            valid_ids=(events[0]["id"],),
            slow=True,
        )
        return probe

    def wrong_method(self) -> Probe:
        method = self.rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"])
        path = self.rng.choice(["/v1/submit", "/v1/info", "/v1/stats", "/metrics", "/ping"])
        if method == "GET" and path != "/v1/submit":
            method = "DELETE"
        return Probe("wrong_method", method, path, _submit_headers(), b"{}")

    def wrong_path(self) -> Probe:
        rng = self.rng
        path = rng.choice(
            [
                "/v2/submit",
                "/v1/submit/",
                "/../../etc/passwd",
                "/%00",
                "/v1//submit",
                "/" + "a" * rng.randint(1, 4000),
                "/v1/submit%2f..",
                "/.env",
                "/admin",
                "/v1/info/../stats",
                "/%ff%fe",
            ]
        )
        method = rng.choice(["GET", "POST"])
        return Probe("wrong_path", method, path, _submit_headers(), b"{}")

    def wrong_content_type(self) -> Probe:
        rng = self.rng
        body = _json({"events": [_event()]})
        if rng.random() < 0.5:
            ctype = rng.choice(["text/plain", "application/x-www-form-urlencoded",
                                "multipart/form-data; boundary=x", "", "application/jsonx",
                                "application/json-seq", "*/*"])  # fmt: skip
            headers = {"X-API-Key": API_KEY}
            if ctype:
                headers["Content-Type"] = ctype
            return Probe("wrong_content_type", "POST", "/v1/submit", headers, body)
        encoding = rng.choice(["br", "deflate", "compress", "gzip, gzip", "x-gzip", "zstd"])
        return self._post("wrong_content_type", body, **{"Content-Encoding": encoding})

    def wrong_key(self) -> Probe:
        body = _json({"events": [_event()]})
        key = self.rng.choice([None, "", "wrong", API_KEY + "x", API_KEY[:-1], ADMIN_TOKEN,
                               "k" * 5000, API_KEY.upper(), f" {API_KEY}x"])  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["X-API-Key"] = key
        if self.rng.random() < 0.3:
            headers["Authorization"] = f"Bearer {API_KEY}"
        return Probe("wrong_key", "POST", "/v1/submit", headers, body)

    def admin_with_submission_key(self) -> Probe:
        path = self.rng.choice(["/v1/stats", "/metrics", "/", "/v1/stats?bucket=day"])
        auth = self.rng.choice(
            [
                {"X-API-Key": API_KEY},
                {"Authorization": f"Bearer {API_KEY}"},
                {"Authorization": f"Basic {API_KEY}"},
                {"Cookie": f"tc_admin={API_KEY}"},
                {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                {},
            ]
        )
        return Probe("admin_with_submission_key", "GET", path, auth, may_be_text=path == "/")

    def partial_batch(self) -> Probe:
        good = [_event() for _ in range(self.rng.randint(1, 5))]
        bad = [_event(type="Bad Type"), _event(properties={"email": "someone@example.com"}),
               _event(duration_ms=-1), _event(timestamp=2**62), {"id": "not-a-uuid"}]  # fmt: skip
        mixed: list[Any] = good + self.rng.sample(bad, self.rng.randint(1, len(bad)))
        self.rng.shuffle(mixed)
        return Probe(
            "partial_batch",
            "POST",
            "/v1/submit",
            _submit_headers(),
            _json({"events": mixed}),
            valid_ids=tuple(e["id"] for e in good),
        )

    def malformed_http(self) -> Probe:
        rng = self.rng
        raws = [
            bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),
            b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Content-Length: 5\r\n\r\n{}",
            b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /ping HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
            b"POST /v1/submit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]
        return Probe("malformed_http", "", "", raw=rng.choice(raws), may_close=True,
                     may_be_text=True)  # fmt: skip


def _is_valid(event: dict[str, Any]) -> bool:
    try:
        decoded = msgspec.convert(event, Event)
    except msgspec.ValidationError:
        return False
    from telemetry_core.schema import validate_event

    return validate_event(decoded, now_ms=int(time.time() * 1000)) is None


class Answer:
    """What came back: status, headers, body, or nothing (closed)."""

    def __init__(self, status: int | None, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _send(context: ssl.SSLContext, port: int, probe: Probe) -> Answer:
    raw = socket.create_connection(
        ("127.0.0.1", port), timeout=CLOSE_WAIT if probe.may_close else 20
    )
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        data = probe.bytes()
        try:
            if probe.slow:
                # Head first, then the body in small pieces (bounded: ~0.3 s).
                split = data.index(b"\r\n\r\n") + 4
                sock.sendall(data[:split])
                body = data[split:]
                step = max(1, len(body) // 6)
                for i in range(0, len(body), step):
                    time.sleep(0.05)
                    sock.sendall(body[i : i + step])
            else:
                sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server may answer (413) and close before reading it all
        response = http.client.HTTPResponse(sock, method=probe.method or "GET")
        try:
            response.begin()
            body = response.read(2 * 1024 * 1024)
        except (http.client.HTTPException, OSError):
            return Answer(None, {}, b"")
        finally:
            response.close()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


@pytest.fixture
def hostile_collector(
    tmp_path: Path, cert_dir: Path, collectors: list[Collector], log_vault: LogVault
) -> Iterator[Collector]:
    """A collector subprocess with a high rate limit (the limiter is tested elsewhere)."""
    collector = Collector(
        cert_dir,
        ["--db", str(tmp_path / "hostile.db")],
        extra_args=["--rate-limit", "100000000", "--rate-burst", "10000000"],
        vault=log_vault,
        name="collector-hostile",
    )
    collectors.append(collector)
    collector.start()
    yield collector


def _check(probe: Probe, answer: Answer, problems: list[str]) -> int:
    """Check one answer; return how many events it accepted."""
    label = f"{probe.kind} {probe.method} {probe.path[:60]!r}"
    if answer.status is None:
        if not probe.may_close:
            problems.append(f"{label}: connection closed without an answer")
        return 0
    if answer.status >= 500 or 300 <= answer.status < 400:
        problems.append(f"{label}: {answer.status} {answer.body[:200]!r}")
        return 0
    if answer.status >= 400:
        is_json = answer.headers.get("content-type", "").startswith("application/json")
        if not is_json:
            if not probe.may_be_text:
                problems.append(f"{label}: {answer.status} without a JSON body")
            return 0
        if probe.method == "HEAD":
            return 0
        try:
            error = json.loads(answer.body)["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            problems.append(
                f"{label}: {answer.status} with a malformed error {answer.body[:200]!r}"
            )
        return 0
    if probe.path != "/v1/submit":
        return 0
    result = json.loads(answer.body)
    accepted = int(result["accepted"]) + int(result["duplicates"])
    if probe.kind not in ("valid_resend",) and accepted != len(probe.valid_ids):
        problems.append(f"{label}: accepted {accepted}, expected {len(probe.valid_ids)}")
    return int(result["accepted"])


def test_hostile_requests_never_break_the_collector(
    hostile_collector: Collector, client_context: ssl.SSLContext, figures: Figures
) -> None:
    """``REQUESTS`` generated requests: no 5xx, JSON errors, bounded RSS, valid traffic counted."""
    collector = hostile_collector
    generator = Generator(seed=404)
    kinds = generator.kinds()
    names = sorted(kinds)
    rng = random.Random(405)
    # Warm up (imports, caches) before the memory baseline.
    for _ in range(20):
        _send(client_context, collector.port, generator.valid())
    rss_before, _ = collector.rss_kib()
    sent: Counter[str] = Counter()
    took: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    valid_ids: set[str] = {i for _, ids in generator.sent_batches for i in ids}
    started = time.monotonic()
    for index in range(REQUESTS):
        if index % 10 == 0:
            probe = generator.valid()
        else:
            kind = names[rng.randrange(len(names))]
            if kind == "slow_body" and sent["slow_body"] >= REQUESTS // 100:
                kind = "wrong_key"
            probe = kinds[kind]()
        t0 = time.monotonic()
        answer = _send(client_context, collector.port, probe)
        took[probe.kind] = max(took[probe.kind], time.monotonic() - t0)
        sent[probe.kind] += 1
        statuses[str(answer.status or "closed")] += 1
        _check(probe, answer, problems)
        valid_ids.update(probe.valid_ids)
        if not collector.alive():
            pytest.fail(f"the collector died after {probe.kind}:\n{collector.log_text[-3000:]}")
    seconds = time.monotonic() - started
    rss_after, rss_peak = collector.rss_kib()
    crashed = 0 if collector.alive() else 1
    # Read the totals with `telemetry-collector stats` after a graceful stop: the
    # refused admin attempts above may have throttled this address for a minute.
    collector.stop()
    result = subprocess.run(
        [*collector_command(), "stats", "--db", collector.store_args[1], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counted = json.loads(result.stdout)["totals"]["by_type"].get(VALID_TYPE, 0)
    five_xx = sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500)
    figures.record(
        "hostile_input",
        command="TELEMETRY_CHAOS_FULL=1 .venv/bin/pytest tests/chaos/test_hostile_input.py -v",
        requests=sum(sent.values()),
        requests_by_kind=dict(sorted(sent.items())),
        answers_by_status=dict(sorted(statuses.items())),
        responses_5xx=five_xx,
        collector_crashes=crashed,
        problems=len(problems),
        valid_events_sent=len(valid_ids),
        valid_events_counted=counted,
        rss_before_mib=round(rss_before / 1024, 1),
        rss_after_mib=round(rss_after / 1024, 1),
        rss_peak_mib=round(rss_peak / 1024, 1),
        seconds=round(seconds, 1),
        slowest_answer_s_by_kind={k: round(v, 2) for k, v in sorted(took.items())},
    )
    assert not problems, "\n".join(problems[:40])
    assert five_xx == 0
    assert counted == len(valid_ids), "interleaved valid events were not counted exactly"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB
    assert rss_peak < RSS_PEAK_LIMIT_KIB


@pytest.mark.parametrize("depth", [100, 1000, 100_000])
@pytest.mark.parametrize("form", ["top", "events", "event", "properties"])
def test_deeply_nested_json_is_refused_not_a_500(
    hostile_collector: Collector, client_context: ssl.SSLContext, form: str, depth: int
) -> None:
    """Regression: msgspec raised RecursionError past ~1000 levels and the collector
    answered 500 (fixed in collector/ingest.py: RecursionError is malformed input)."""
    nested = {
        "top": b"[" * depth + b"]" * depth,
        "events": b'{"events": ' + b"[" * depth + b"]" * depth + b"}",
        "event": b'{"events": [' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}",
        "properties": b'{"events": [{"properties": ' + b'{"a":' * depth + b"1" + b"}" * depth
        + b"}]}",
    }[form]  # fmt: skip
    probe = Probe("deep_nesting", "POST", "/v1/submit", _submit_headers(), nested)
    answer = _send(client_context, hostile_collector.port, probe)
    assert answer.status in (200, 400), answer.body[:300]
    if answer.status == 200:
        assert json.loads(answer.body)["rejected"] == 1
    else:
        assert json.loads(answer.body)["error"]["code"] == "malformed"
    assert hostile_collector.alive()
