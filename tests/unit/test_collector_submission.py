"""The shared submission pipeline: what a refused submission leaves in the log."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from telemetry_core.collector.auth import key_id
from telemetry_core.collector.submission import fingerprint
from tests.unit.test_collector_app import KEY, FakeClock, event, make_client, submit


def test_a_refused_submission_logs_the_client_and_a_key_fingerprint_never_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-key-4f1c9e"
    caplog.set_level(logging.INFO, logger="telemetry_core.collector")
    with make_client(tmp_path, FakeClock()) as c:
        assert submit(c, {"events": [event()]}, **{"X-API-Key": wrong}).status_code == 401
        assert submit(c, b"not json", **{"Content-Type": "text/plain"}).status_code == 415
        assert submit(c, {"events": [event()]}, **{"X-API-Key": ""}).status_code == 401
    refused = [r.getMessage() for r in caplog.records if "submit refused" in r.getMessage()]
    assert refused == [
        f"submit refused status=401 code=unauthorized client=testclient key={fingerprint(wrong)}",
        "submit refused status=415 code=unsupported_media_type "
        f"client=testclient key={key_id(KEY)}",
        "submit refused status=401 code=unauthorized client=testclient key=none",
    ]
    assert wrong not in caplog.text and KEY not in caplog.text


def test_the_fingerprint_of_a_configured_key_is_its_key_id() -> None:
    assert fingerprint(KEY) == key_id(KEY)
    assert fingerprint("\ud800 odd") == hashlib.sha256(b"\xed\xa0\x80 odd").hexdigest()[:8]
