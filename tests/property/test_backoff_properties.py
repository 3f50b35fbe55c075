"""Properties of the ``exponential-jitter`` backoff for every retry count."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core_plugins.exponential_jitter import JITTER, ExponentialJitterBackoff

retry_counts = st.one_of(
    st.integers(min_value=-5, max_value=40),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([1022, 1023, 1024, 1075, 10**6, 2**63, 2**64, 10**400]),
)
base_delays = st.floats(min_value=1e-3, max_value=1e4)
max_delays = st.floats(min_value=1e-3, max_value=1e9)
seeds = st.integers(min_value=0, max_value=2**32)


def make(base: float, cap: float, seed: int, **kwargs: float) -> ExponentialJitterBackoff:
    return ExponentialJitterBackoff(
        base_delay=base,
        max_delay=cap,
        rng=random.Random(seed),
        clock=lambda: 1_000.0,
        **kwargs,  # type: ignore[arg-type]
    )


@settings(deadline=None)
@given(retry_counts, base_delays, max_delays, seeds)
def test_delay_is_finite_and_within_cap(retry: int, base: float, cap: float, seed: int) -> None:
    delay = make(base, cap, seed).next_retry_delay(retry)
    assert math.isfinite(delay)
    assert 0 < delay <= cap


@settings(deadline=None)
@given(st.integers(min_value=-3, max_value=60), base_delays, max_delays, seeds)
def test_jitter_band_below_the_cap(retry: int, base: float, cap: float, seed: int) -> None:
    nominal = base * 2.0 ** max(retry, 0)
    delay = make(base, cap, seed).next_retry_delay(retry)
    if nominal * (1 + JITTER) <= cap:
        assert nominal * (1 - JITTER) * (1 - 1e-12) <= delay <= nominal * (1 + JITTER) * (1 + 1e-12)
    else:
        assert min(nominal * (1 - JITTER), cap) * (1 - 1e-12) <= delay <= cap


class FixedRandom(random.Random):
    """A Random whose ``random()`` always returns ``value`` (the jitter extremes)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@settings(deadline=None)
@given(retry_counts, base_delays, max_delays)
def test_delays_never_decrease_with_retry_count(retry: int, base: float, cap: float) -> None:
    # Bands do not overlap: the longest delay of attempt n (1.25 * d) is shorter
    # than the shortest of attempt n + 1 (1.5 * d), and both saturate at the cap.
    longest = ExponentialJitterBackoff(
        base_delay=base, max_delay=cap, rng=FixedRandom(1.0), clock=lambda: 0.0
    )
    shortest = ExponentialJitterBackoff(
        base_delay=base, max_delay=cap, rng=FixedRandom(0.0), clock=lambda: 0.0
    )
    retry = max(retry, 0)  # negative counts all count as 0
    assert longest.next_retry_delay(retry) <= shortest.next_retry_delay(retry + 1)


@settings(deadline=None)
@given(
    retry_counts,
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e6),
    seeds,
)
def test_retry_after_wins_clamped(retry: int, retry_after: float, limit: float, seed: int) -> None:
    backoff = make(1.0, 3600.0, seed, max_retry_after=limit)
    delay = backoff.next_retry_delay(retry, retry_after)
    if math.isnan(retry_after):
        assert 0 < delay <= 3600.0
    else:
        assert delay == min(max(retry_after, 0.0), limit)


@settings(deadline=None)
@given(retry_counts, st.integers(min_value=0, max_value=50))
def test_should_retry_is_below_max(retry: int, max_retries: int) -> None:
    backoff = ExponentialJitterBackoff(
        max_retries=max_retries, rng=random.Random(0), clock=lambda: 0.0
    )
    assert backoff.should_retry(retry) is (retry < max_retries)


@settings(deadline=None)
@given(retry_counts, seeds, st.floats(min_value=0, max_value=4e9))
def test_timestamp_is_clock_plus_delay(retry: int, seed: int, now: float) -> None:
    a = ExponentialJitterBackoff(rng=random.Random(seed), clock=lambda: now)
    b = ExponentialJitterBackoff(rng=random.Random(seed), clock=lambda: now)
    assert a.next_retry_timestamp(retry) == now + b.next_retry_delay(retry)
