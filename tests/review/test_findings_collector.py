"""Reproductions of the collector review's findings (tests/review/FINDINGS-collector.md).

Each test states the behaviour the collector should have. They were written as
``xfail(strict=True)`` reproductions while the defects stood; the marks are gone
now that the findings are fixed.

Findings 1-9 and 11-14 are fixed; their regression tests now live with the
collector's own tests (tests/unit/test_collector_app.py, test_collector_ingest.py,
test_collector_sqlite_store.py, test_collector_cli.py,
tests/integration/test_collector_postgres.py and test_collector_protocol.py).
Finding 10 belongs to ``telemetry_core.privacy`` (the client side).
"""

from __future__ import annotations

import json

from telemetry_core.collector.ingest import check_events
from tests.conftest import COLLECTOR_NOW_MS, wire_event

NOW_MS = COLLECTOR_NOW_MS


# -- finding 10 -----------------------------------------------------------------


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
