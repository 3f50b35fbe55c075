"""Values passed between service, worker and plugins: derived properties, immutability."""

from __future__ import annotations

import attrs
import pytest

from telemetry_core.models import (
    ProviderInfo,
    QueuedEvent,
    QueueStats,
    SubmissionResult,
    SubmissionStats,
)
from telemetry_core.schema import EventError
from tests.conftest import build_event


def test_submission_result_success_means_nothing_rejected() -> None:
    assert SubmissionResult(accepted=3).success
    assert SubmissionResult(accepted=0, duplicates=3).success
    error = EventError(index=1, code="invalid_type", message="bad")
    failed = SubmissionResult(accepted=1, rejected=1, errors=(error,))
    assert not failed.success
    assert failed.errors[0].index == 1
    assert failed.status == 200


def test_queued_event_id_is_the_events_id() -> None:
    event = build_event()
    queued = QueuedEvent(event=event, retry_count=2, enqueued_at=1.5)
    assert queued.event_id == event.id
    assert queued.last_error is None


def test_stats_defaults() -> None:
    stats = QueueStats(pending=4)
    assert (stats.due, stats.leased, stats.dead, dict(stats.dropped)) == (0, 0, 0, {})
    assert stats.oldest_enqueued_at is None
    submission = SubmissionStats()
    assert submission.submissions == 0
    assert submission.success_rate == 0.0
    assert submission.latency_p95_ms is None


def test_values_are_frozen_keyword_only_and_comparable() -> None:
    info = ProviderInfo(kind="transport", name="https", description="HTTPS")
    assert info == ProviderInfo(kind="transport", name="https", description="HTTPS")
    assert "name='https'" in repr(info)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ProviderInfo("transport", "https")  # type: ignore[misc]
    assert attrs.evolve(SubmissionResult(accepted=1), rejected=2).success is False
