"""The collector's PII re-check refuses secrets in property values, such as URLs
with a user and password (DESIGN §8)."""

from __future__ import annotations

import json

from telemetry_core.collector.ingest import check_events
from tests.conftest import COLLECTOR_NOW_MS, wire_event

NOW_MS = COLLECTOR_NOW_MS


def test_url_with_credentials_is_rejected_as_pii() -> None:
    """A property value holding a URL with a user and password is a secret, but
    the collector stores it (e-mail, IP, home path, token shapes are all caught;
    ``postgresql://app:s3cret@db/prod`` and ``redis://:p4ssw0rd@cache:6379/0`` are not)."""
    import msgspec

    raw = json.dumps(wire_event(properties={"db": "postgresql://app:s3cret@db/prod"}))
    checked = check_events(
        [msgspec.Raw(raw.encode())],
        now_ms=NOW_MS,
        max_event_bytes=16384,
        max_future_skew_ms=86_400_000,
    )
    assert [e.code for e in checked.errors] == ["pii"]
