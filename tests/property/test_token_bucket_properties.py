"""Invariants of the ``token-bucket`` limiter under arbitrary clocks and calls."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core_plugins.token_bucket import TokenBucket

# Slack for float rounding (the bucket itself allows a billionth of a token).
EPS = 1e-6


class FakeClock:
    """A monotonic clock moved by the test; thread-safe."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


rates = st.one_of(
    st.integers(min_value=1, max_value=120), st.integers(min_value=1, max_value=100_000)
)
bursts = st.one_of(st.integers(min_value=1, max_value=10), st.integers(min_value=1, max_value=1000))
steps = st.lists(
    st.tuples(
        # Mostly forward, sometimes backwards (a clock that jumps back must not mint tokens).
        st.one_of(
            st.just(0.0),
            st.floats(min_value=0, max_value=1),
            st.floats(min_value=0, max_value=30),
            st.floats(min_value=-50, max_value=0),
        ),
        st.sampled_from(["consume", "can_submit", "wait_time"]),
        st.one_of(st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=1100)),
    ),
    max_size=60,
)


@settings(deadline=None)
@given(rates, bursts, steps)
def test_tokens_stay_within_zero_and_burst(rate: int, burst: int, ops: list) -> None:  # type: ignore[type-arg]
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    for dt, op, n in ops:
        clock.advance(dt)
        getattr(bucket, op)(n)
        assert 0.0 <= bucket.tokens <= burst


@settings(deadline=None)
@given(rates, bursts, steps)
def test_consumed_over_any_interval_is_bounded(rate: int, burst: int, ops: list) -> None:  # type: ignore[type-arg]
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    forward = [0.0]  # cumulative forward clock movement before each step
    taken = [0]  # cumulative tokens consumed after each step
    for dt, _, n in ops:
        clock.advance(dt)
        forward.append(forward[-1] + max(dt, 0.0))
        taken.append(taken[-1] + (n if bucket.consume(n) else 0))
    per_second = rate / 60.0
    for i in range(len(taken)):
        for j in range(i + 1, len(taken)):
            # Steps i+1..j happen within forward time forward[j] - forward[i].
            allowed = burst + per_second * (forward[j] - forward[i])
            assert taken[j] - taken[i] <= allowed + EPS * max(1.0, allowed)


@settings(deadline=None)
@given(rates, bursts, steps)
def test_consume_agrees_with_can_submit(rate: int, burst: int, ops: list) -> None:  # type: ignore[type-arg]
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    for dt, _, n in ops:
        clock.advance(dt)
        predicted = bucket.can_submit(n)
        assert bucket.consume(n) is predicted
        if n > burst:
            assert not predicted


@settings(deadline=None)
@given(rates, bursts, steps, st.integers(min_value=1, max_value=1000))
def test_after_wait_time_consume_succeeds(rate: int, burst: int, ops: list, want: int) -> None:  # type: ignore[type-arg]
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    for dt, _, n in ops:
        clock.advance(dt)
        bucket.consume(n)
    wait = bucket.wait_time(want)
    if want > burst:
        assert wait == float("inf")
        return
    assert wait >= 0.0
    clock.advance(wait)
    assert bucket.consume(want)
    assert bucket.wait_time(1) >= 0.0


@settings(max_examples=25, deadline=None)
@given(
    rates,
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=2, max_value=6),
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=4),
)
def test_concurrent_consumers_never_oversubscribe(
    rate: int, burst: int, threads: int, sizes: list[int]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    tick = 0.01
    rounds = 200
    taken = [0] * threads
    start = threading.Barrier(threads, timeout=10)

    def worker(index: int) -> None:
        start.wait()
        for k in range(rounds):
            n = sizes[(index + k) % len(sizes)]
            if bucket.consume(n):
                taken[index] += n
            if index == 0:
                clock.advance(tick)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(20)
    assert not any(t.is_alive() for t in pool)
    elapsed = rounds * tick
    assert sum(taken) <= burst + rate / 60.0 * elapsed + EPS
    assert 0.0 <= bucket.tokens <= burst
