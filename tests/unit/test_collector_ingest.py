"""The submit pipeline without HTTP: the PII re-check and the in-flight byte budget."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from telemetry_core.collector.ingest import InFlightBudget, IngestError, check_events, read_body
from telemetry_core.schema import new_event_id

NOW_MS = 1_800_000_000_000


def _event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": NOW_MS - 1000,
        "install_id": "install-a",
        "app": "demo",
        "schema": 1,
    }
    base.update(fields)
    return base


def _codes(**fields: Any) -> list[str]:
    raw = msgspec.Raw(json.dumps(_event(**fields)).encode())
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
    body = json.dumps({"events": [_event()]}).encode() * 10
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
