"""Shared fixtures of the whole test suite (keep this small; others may append)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from telemetry_core.schema import Event, PropertyValue, new_event_id

# Timing never decides a test (it belongs in bench/): on a loaded machine
# hypothesis's per-example deadline would fail correct code.
settings.register_profile("telemetry-core", deadline=None)
settings.load_profile("telemetry-core")

#: The install id of events built by :func:`make_event`.
TEST_INSTALL_ID = "0123456789abcdef0123456789abcdef"


def build_event(
    event_type: str = "command_executed",
    properties: dict[str, PropertyValue] | None = None,
    **fields: Any,
) -> Event:
    """A valid schema-1 event with a fresh UUIDv7 id; ``fields`` override any field."""
    values: dict[str, Any] = {
        "id": new_event_id(),
        "type": event_type,
        "timestamp": 1_700_000_000_000,
        "install_id": TEST_INSTALL_ID,
        "app": "testapp",
        "properties": {} if properties is None else properties,
    }
    values.update(fields)
    return Event(**values)


#: "Now" of the collector tests (ms since epoch); :func:`wire_event` stamps a second before it.
COLLECTOR_NOW_MS = 1_800_000_000_000


def wire_event(**fields: Any) -> dict[str, Any]:
    """A valid schema-1 event as the JSON object a client sends; ``fields`` override or add."""
    base: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": COLLECTOR_NOW_MS - 1000,
        "install_id": "install-a",
        "app": "demo",
        "schema": 1,
    }
    base.update(fields)
    return base


@pytest.fixture
def make_event() -> Callable[..., Event]:
    """Factory of valid events: ``make_event("type", {"k": 1}, success=True)``."""
    return build_event


@pytest.fixture
def tmp_db_path(tmp_path: Path) -> Path:
    """A path for a fresh SQLite database under a directory that does not exist yet."""
    return tmp_path / "data" / "telemetry.db"


#: The property key pattern of schema 1 (schema.validate_event's).
_KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")


def assert_normalised(translation: Any) -> None:
    """What check_built(normalised=True) takes on trust, of a translation's events:
    canonical UUIDs, types in the type pattern and keys in the key pattern (at most
    64 characters)."""
    from telemetry_core.collector.translation import CANONICAL_UUID
    from telemetry_core.schema import EVENT_TYPE_PATTERN

    for event in translation.events:
        assert CANONICAL_UUID.fullmatch(event.id), event.id
        assert EVENT_TYPE_PATTERN.match(event.type), event.type
        for key in event.properties:
            assert _KEY_PATTERN.fullmatch(key) and len(key) <= 64, key
