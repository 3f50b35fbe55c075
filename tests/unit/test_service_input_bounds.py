"""track()'s input bounds and privacy at the edges (DESIGN §4, §8).

Oversized values are refused before any scrubbing pattern runs; property keys that
hold personal data are never recorded; DO_NOT_TRACK and consent-off reads write
nothing and never migrate a foreign file; str subclasses and NaN are handled as
values, not as storage failures. (How these were found: docs/reliability.md.)
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from telemetry_core import (
    EventRejected,
    TelemetryConfig,
    TelemetryService,
    hookimpl,
)
from telemetry_core.config import read_stored_config
from telemetry_core.pii import find_pii
from telemetry_core.schema import MAX_PROPERTY_VALUE_LENGTH, MAX_SHORT_STRING_LENGTH, Event


def _config(tmp_path: Path, **changes: Any) -> TelemetryConfig:
    values: dict[str, Any] = {
        "app": "review",
        "db_path": tmp_path / "telemetry.db",
        "enabled": True,
        "do_not_track": False,
    }
    values.update(changes)
    return TelemetryConfig(**values)


class _Recorder:
    """Observer plugin: what the scrub hook was given and which events were recorded."""

    def __init__(self) -> None:
        self.scrubbed_lengths: list[int] = []
        self.recorded: list[Event] = []

    @hookimpl
    def telemetry_scrub_event(self, event_type: str, properties: dict[str, Any]) -> None:
        self.scrubbed_lengths.extend(len(v) for v in properties.values() if isinstance(v, str))

    @hookimpl
    def telemetry_event_recorded(self, event: Event) -> None:
        self.recorded.append(event)


def test_oversized_values_are_rejected_before_scrubbing(tmp_path: Path) -> None:
    """Scrubbing (quadratic regexes, ~0.4 s at 10k chars, ~17 s at 80k) runs on
    values of any length before the length check rejects them, so one long
    string blocks track() for seconds to hours. Bounds must be checked first."""
    recorder = _Recorder()
    too_long = "x" * (MAX_PROPERTY_VALUE_LENGTH * 5)
    with TelemetryService(_config(tmp_path), plugins=[recorder]) as telemetry:
        assert telemetry.track("long_value", {"a": too_long}) is None
    assert max(recorder.scrubbed_lengths, default=0) <= MAX_PROPERTY_VALUE_LENGTH


def test_oversized_session_id_is_not_searched_for_pii(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find_pii runs on a session_id of any length before its 128-char bound."""
    import telemetry_core.recorder as recorder_module

    seen: list[int] = []
    real = recorder_module.find_pii

    def spy(value: str) -> str | None:
        seen.append(len(value))
        return real(value)

    monkeypatch.setattr(recorder_module, "find_pii", spy)
    with TelemetryService(_config(tmp_path)) as telemetry:
        assert telemetry.track("s", session_id="x" * 5000) is None
    assert max(seen, default=0) <= MAX_SHORT_STRING_LENGTH


@pytest.mark.parametrize(
    "key",
    ["a:10.1.2.3", "ghp_abcdefghijklmnopqrstuvwxyz012345", "sk_live_abcdefghijklmnop1234"],
)
def test_property_keys_with_personal_data_never_recorded(tmp_path: Path, key: str) -> None:
    """Only values are scrubbed/checked; a key holding an IP or a token is stored,
    sent, and then rejected by the real collector (ingest checks keys with find_pii)."""
    recorder = _Recorder()
    with TelemetryService(_config(tmp_path), plugins=[recorder]) as telemetry:
        telemetry.track("pii_key", {key: 1})
    leaked = [k for e in recorder.recorded for k in e.properties if find_pii(k) is not None]
    assert leaked == []


def test_do_not_track_reads_write_nothing(tmp_path: Path) -> None:
    """With DO_NOT_TRACK, get_submission_stats() (used by `telemetry stats`) opens
    the store read-write and runs the retention cleanup, which writes."""
    config = _config(tmp_path)
    with TelemetryService(config) as telemetry:
        assert telemetry.track("before_dnt") is not None
    before = read_stored_config(config.db_path)
    later = time.time() + 2 * 24 * 3600.0  # past the daily cleanup interval
    dnt = config.evolve(do_not_track=True)
    telemetry = TelemetryService(dnt, clock=lambda: later)
    try:
        telemetry.get_submission_stats()
    finally:
        telemetry.close()
    assert read_stored_config(config.db_path) == before


def test_consent_off_read_does_not_migrate_a_foreign_database(tmp_path: Path) -> None:
    """`telemetry --db other.sqlite queue` (consent off) adds telemetry tables to
    any existing SQLite file and switches it to WAL."""
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    telemetry = TelemetryService(_config(tmp_path, db_path=path, enabled=False))
    try:
        telemetry.queue_stats()
    finally:
        telemetry.close()
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    assert (tables, mode) == ({"mine"}, "delete")


class _Text(str):
    """A str subclass, as apps pass (wrapper types, lazy strings)."""


def test_str_subclass_value_is_recorded_or_rejected_not_a_storage_failure(
    tmp_path: Path,
) -> None:
    """A str subclass passes the type check, then msgspec refuses to encode it:
    counted as failed:TypeError, and strict mode raises StorageError."""
    with TelemetryService(_config(tmp_path, strict=True)) as telemetry:
        try:
            result = telemetry.track("sub", {"a": _Text("ok")})
        except EventRejected:
            return
    assert isinstance(result, str)


def test_nan_value_is_not_counted_as_scrubbed(tmp_path: Path) -> None:
    """NaN != NaN, so _count_scrubbed counts a NaN property as scrubbed:identifier."""
    with TelemetryService(_config(tmp_path)) as telemetry:
        assert telemetry.track("nan", {"a": float("nan")}) is None
        counters = telemetry.counters()
    assert not [name for name in counters if name.startswith("scrubbed:")]
