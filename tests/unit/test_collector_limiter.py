"""Unit tests of the collector's per-key rate limiter (injected clock)."""

from __future__ import annotations

from telemetry_core.collector.limiter import MAX_BUCKETS, PRUNE_EVERY, KeyedRateLimiter


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_distinct_keys_that_succeed_stay_under_the_cap() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(per_minute=60, burst=10, clock=clock)
    for i in range(30_000):
        assert limiter.acquire(f"key-{i}", 1) == 0
    assert len(limiter._buckets) <= MAX_BUCKETS


def test_idle_full_buckets_are_swept_on_the_success_path() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(per_minute=60, burst=10, clock=clock)
    for i in range(500):
        assert limiter.acquire(f"old-{i}", 1) == 0
    clock.now += 10.0  # one whole refill period: every old bucket is full again
    for i in range(PRUNE_EVERY):
        assert limiter.acquire(f"new-{i}", 1) == 0
    assert not any(key.startswith("old-") for key in limiter._buckets)


def test_a_recently_used_key_keeps_its_debt() -> None:
    clock = FakeClock()
    limiter = KeyedRateLimiter(per_minute=60, burst=2, clock=clock, max_buckets=3)
    assert limiter.acquire("hot", 2) == 0
    for i in range(2):
        assert limiter.acquire(f"other-{i}", 1) == 0
    assert limiter.acquire("hot", 1) == 1  # still empty: it was not evicted
    for i in range(2, 6):
        assert limiter.acquire(f"other-{i}", 1) == 0
    assert len(limiter._buckets) == 3
    assert "hot" not in limiter._buckets  # least recently used went first
