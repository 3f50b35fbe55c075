"""Secrets and event properties never reach the collector's output.

A real ``telemetry-collector serve`` process (SQLite, HTTPS, ``--log-level debug``)
is driven through every endpoint, successes and failures alike, with a
submission key, an admin token and events whose property values are distinctive
strings; then its whole stdout and stderr are searched for any of them.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trustme

from telemetry_core.collector.auth import key_id
from telemetry_core.schema import new_event_id

KEY_ENV = "logkey-env-5f0c1e9a2b7d"
KEY_ARG = "logkey-arg-93ab62d01c4e"
ADMIN = "admintok-7d41c2e8f90b3a65"
WRONG_KEY = "wrongkey-0b1c2d3e4f5a"
WRONG_TOKEN = "wrongtok-a5f4e3d2c1b0"
#: Property values (and one key) that must stay out of the logs.
SECRET_VALUES = [
    "propval-accepted-4c9d1e",
    "propval-rejected-8a2f7b",
    "propval-malformed-3e6d0c",
    "propval-throttled-b71f94",
    "propval-oversized-d05a3c",
    "leaky.person@example.org",
    "propkey-secret-2f8e61",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _event(value: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": int(time.time() * 1000),
        "install_id": "install-logs",
        "app": "logs-app",
        "duration_ms": 3.5,
        "success": True,
        "properties": {"note": value, "n": 7},
    }
    base.update(fields)
    return base


def test_no_key_token_or_property_value_in_collector_output(
    tmp_path: Path, tls_ca: trustme.CA
) -> None:
    cert = tls_ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    token_file = tmp_path / "admin-token"
    token_file.write_text(f"{ADMIN}\n")
    port = _free_port()
    env = {**os.environ, "TELEMETRY_COLLECTOR_API_KEYS": KEY_ENV}
    env.pop("TELEMETRY_COLLECTOR_ADMIN_TOKEN", None)
    stdout_path, stderr_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "telemetry_core.collector", "serve",
             "--db", str(tmp_path / "collector.db"), "--port", str(port),
             "--tls-cert", str(cert_path), "--tls-key", str(key_path),
             "--api-key", KEY_ARG, "--admin-token-file", str(token_file),
             "--rate-limit", "60", "--rate-burst", "1000", "--log-level", "debug"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
        )  # fmt: skip
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    base = f"https://127.0.0.1:{port}"
    statuses: dict[str, int] = {}
    try:
        with httpx.Client(base_url=base, verify=context, timeout=30) as client:
            deadline = time.monotonic() + 30
            for _ in range(600):
                assert proc.poll() is None, stderr_path.read_text()
                try:
                    if client.get("/ping").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, stderr_path.read_text()
                time.sleep(0.05)
            statuses.update(_drive(client))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=10)
    stdout, stderr = stdout_path.read_text(), stderr_path.read_text()
    assert code == 0, stderr
    assert statuses == {
        "accepted": 200,
        "partial": 200,
        "gzip": 200,
        "unknown key": 401,
        "no key": 401,
        "malformed": 400,
        "too many events": 413,
        "too large": 413,
        "media type": 415,
        "burst": 200,
        "throttled": 429,
        "stats": 200,
        "stats wrong token": 401,
        "stats as submitter": 401,
        "metrics": 200,
        "metrics wrong token": 401,
        "dashboard": 200,
        "dashboard cookie": 200,
        "dashboard no token": 401,
        "login": 303,
        "login wrong": 401,
    }
    # The output is real and detailed (so the search below means something) ...
    assert "submit ok" in stderr and "submit throttled" in stderr and "submit refused" in stderr
    assert f"key={key_id(KEY_ENV)}" in stderr and f"key={key_id(KEY_ARG)}" in stderr
    # ... and holds none of the secrets or property values.
    output = stdout + stderr
    for secret in [KEY_ENV, KEY_ARG, ADMIN, WRONG_KEY, WRONG_TOKEN, *SECRET_VALUES]:
        assert secret not in output, f"{secret!r} leaked into the collector's output"


def _drive(client: httpx.Client) -> dict[str, int]:
    """Every endpoint, with good and bad credentials and bodies; returns the statuses."""
    json_headers = {"Content-Type": "application/json"}
    good = {**json_headers, "X-API-Key": KEY_ENV}
    other = {**json_headers, "X-API-Key": KEY_ARG}
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    s: dict[str, int] = {}

    def post(name: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        response = client.post("/v1/submit", content=body, headers=headers)
        s[name] = response.status_code
        return response

    def encode(events: list[dict[str, Any]]) -> bytes:
        return json.dumps({"events": events}).encode()

    accepted = post("accepted", encode([_event(SECRET_VALUES[0])]), good)
    assert accepted.json()["accepted"] == 1
    partial = post(
        "partial",
        encode(
            [
                _event(SECRET_VALUES[1], type="Not A Type"),
                _event(SECRET_VALUES[5]),
                _event("ok", properties={SECRET_VALUES[6]: "x" * 2000}),
                _event("ok", timestamp=int(time.time() * 1000) + 10**10),
            ]
        ),
        other,
    )
    assert partial.json()["rejected"] == 4, partial.text
    post(
        "gzip",
        gzip.compress(encode([_event(SECRET_VALUES[0])])),
        {**good, "Content-Encoding": "gzip"},
    )
    post(
        "unknown key", encode([_event(SECRET_VALUES[0])]), {**json_headers, "X-API-Key": WRONG_KEY}
    )
    post("no key", encode([_event(SECRET_VALUES[0])]), json_headers)
    post("malformed", b'{"events": [{"properties": {"note": "' + SECRET_VALUES[2].encode(), good)
    post("too many events", encode([_event(SECRET_VALUES[4])] * 1001), good)
    post("too large", b'{"events": ["' + SECRET_VALUES[4].encode() * 80_000 + b'"]}', good)
    post("media type", encode([_event(SECRET_VALUES[0])]), {**good, "Content-Type": "text/plain"})
    # Two tokens of the key's 1000 (refilled at one a second) are spent: 990 more leave
    # too few for the next 50.
    assert post("burst", encode([_event("ok") for _ in range(990)]), good).status_code == 200
    throttled = post("throttled", encode([_event(SECRET_VALUES[3]) for _ in range(50)]), good)
    assert int(throttled.headers["Retry-After"]) >= 1

    def get(name: str, path: str, headers: dict[str, str]) -> httpx.Response:
        response = client.get(path, headers=headers)
        s[name] = response.status_code
        return response

    stats = get("stats", "/v1/stats?bucket=day&app=logs-app", bearer).json()
    assert stats["totals"]["count"] == 992
    get("stats wrong token", "/v1/stats", {"Authorization": f"Bearer {WRONG_TOKEN}"})
    get("stats as submitter", "/v1/stats", {"X-API-Key": KEY_ENV})
    get("metrics", "/metrics", bearer)
    get("metrics wrong token", "/metrics", {"Authorization": f"Bearer {WRONG_TOKEN}"})
    get("dashboard", "/?bucket=hour", bearer)
    get("dashboard no token", "/", {})
    wrong = client.post("/login", data={"token": WRONG_TOKEN})
    s["login wrong"] = wrong.status_code
    login = client.post("/login", data={"token": ADMIN})
    s["login"] = login.status_code
    assert login.cookies.get("telemetry_admin")
    s["dashboard cookie"] = client.get("/").status_code  # the session cookie, from the jar
    client.cookies.clear()
    return s
