"""Unit tests of the ``exponential-jitter`` backoff plugin."""

from __future__ import annotations

import math
import random

import pytest

from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import ConfigError
from telemetry_core.protocols import Backoff
from telemetry_core_plugins import exponential_jitter
from telemetry_core_plugins.exponential_jitter import (
    DEFAULT_MAX_DELAY,
    DEFAULT_MAX_RETRY_AFTER,
    ExponentialJitterBackoff,
)


class FixedRandom(random.Random):
    """A Random whose ``random()`` always returns ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def make(value: float = 0.5, now: float = 1000.0, **kwargs: float) -> ExponentialJitterBackoff:
    return ExponentialJitterBackoff(rng=FixedRandom(value), clock=lambda: now, **kwargs)  # type: ignore[arg-type]


def test_is_a_backoff() -> None:
    assert isinstance(make(), Backoff)


@pytest.mark.parametrize(("retry_count", "nominal"), [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0)])
def test_delay_doubles_without_jitter(retry_count: int, nominal: float) -> None:
    assert make(0.5).next_retry_delay(retry_count) == nominal


@pytest.mark.parametrize(("retry_count", "low", "high"), [(0, 0.75, 1.25), (1, 1.5, 2.5)])
def test_jitter_spans_25_percent(retry_count: int, low: float, high: float) -> None:
    assert make(0.0).next_retry_delay(retry_count) == pytest.approx(low)
    assert make(1.0).next_retry_delay(retry_count) == pytest.approx(high)


def test_jitter_is_drawn_from_the_rng() -> None:
    backoff = ExponentialJitterBackoff(rng=random.Random(42), clock=lambda: 0.0)
    delays = {backoff.next_retry_delay(3) for _ in range(20)}
    assert len(delays) > 1
    assert all(6.0 <= d <= 10.0 for d in delays)


def test_cap_applies_after_jitter() -> None:
    backoff = make(1.0, max_delay=10.0)
    assert backoff.next_retry_delay(3) == 10.0  # 8 * 1.25 = 10, exactly the cap
    assert backoff.next_retry_delay(4) == 10.0
    assert make(0.0, max_delay=10.0).next_retry_delay(3) == 6.0


@pytest.mark.parametrize("retry_count", [13, 64, 1023, 1024, 10**6, 10**100, 2**4096])
def test_huge_retry_counts_saturate(retry_count: int) -> None:
    assert make(0.0).next_retry_delay(retry_count) == DEFAULT_MAX_DELAY
    assert make(1.0).next_retry_delay(retry_count) == DEFAULT_MAX_DELAY


def test_huge_base_delay_does_not_overflow() -> None:
    backoff = make(0.5, base_delay=1e300, max_delay=1e308)
    assert backoff.next_retry_delay(2000) == 1e308


@pytest.mark.parametrize("retry_count", [-1, -(10**100)])
def test_negative_retry_count_counts_as_zero(retry_count: int) -> None:
    assert make(0.5).next_retry_delay(retry_count) == 1.0


def test_retry_after_wins_and_is_clamped() -> None:
    backoff = make(0.5, max_retry_after=60.0)
    assert backoff.next_retry_delay(0, retry_after=30.0) == 30.0
    assert backoff.next_retry_delay(10, retry_after=0.0) == 0.0
    assert backoff.next_retry_delay(0, retry_after=-5.0) == 0.0
    assert backoff.next_retry_delay(0, retry_after=1e9) == 60.0
    assert backoff.next_retry_delay(0, retry_after=math.inf) == 60.0
    assert backoff.next_retry_delay(0, retry_after=math.nan) == 1.0


def test_default_retry_after_cap_is_one_hour() -> None:
    assert DEFAULT_MAX_RETRY_AFTER == 3600.0
    assert make().next_retry_delay(0, retry_after=86400.0) == 3600.0


def test_should_retry_below_max() -> None:
    backoff = make(max_retries=5)
    assert [backoff.should_retry(n) for n in range(7)] == [True] * 5 + [False] * 2
    assert not make(max_retries=0).should_retry(0)
    assert backoff.should_retry(-1)
    assert not backoff.should_retry(10**100)


def test_next_retry_timestamp_adds_the_delay_to_the_clock() -> None:
    backoff = make(0.5, now=1_700_000_000.0)
    assert backoff.next_retry_timestamp(2) == 1_700_000_004.0
    assert backoff.next_retry_timestamp(2, retry_after=7.0) == 1_700_000_007.0


@pytest.mark.parametrize(
    ("setting", "kwargs"),
    [
        ("base_delay", {"base_delay": 0.0}),
        ("base_delay", {"base_delay": math.nan}),
        ("max_delay", {"max_delay": -1.0}),
        ("max_delay", {"max_delay": math.inf}),
        ("max_retry_after", {"max_retry_after": -1.0}),
        ("max_retries", {"max_retries": -1}),
    ],
)
def test_rejects_bad_parameters(setting: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError) as info:
        make(**kwargs)
    assert info.value.setting == setting


def test_repr_names_parameters() -> None:
    assert "max_delay=3600.0" in repr(make())


def test_hook_make_backoff_uses_config(tmp_path: object) -> None:
    config = TelemetryConfig(
        app="demo",
        db_path=f"{tmp_path}/t.db",
        base_delay=2.0,
        max_delay=50.0,
        max_retries=3,
        max_retry_after=9.0,
    )
    backoff = exponential_jitter.telemetry_make_backoff(
        name="exponential-jitter", config=config, rng=FixedRandom(0.5), clock=lambda: 10.0
    )
    assert backoff is not None
    assert backoff.next_retry_delay(1) == 4.0
    assert backoff.next_retry_delay(10) == 50.0
    assert backoff.next_retry_delay(0, retry_after=100.0) == 9.0
    assert backoff.should_retry(2) and not backoff.should_retry(3)
    assert backoff.next_retry_timestamp(0) == 12.0


def test_hook_make_backoff_ignores_other_names(tmp_path: object) -> None:
    config = TelemetryConfig(app="demo", db_path=f"{tmp_path}/t.db")
    made = exponential_jitter.telemetry_make_backoff(
        name="linear", config=config, rng=random.Random(0), clock=lambda: 0.0
    )
    assert made is None


def test_hook_list_providers() -> None:
    (info,) = exponential_jitter.telemetry_list_providers()
    assert (info.kind, info.name) == ("backoff", "exponential-jitter")
