"""Unit tests of the ``token-bucket`` limiter plugin."""

from __future__ import annotations

import math
import threading

import pytest

from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import ConfigError
from telemetry_core.protocols import Limiter
from telemetry_core_plugins import token_bucket
from telemetry_core_plugins.token_bucket import TokenBucket


class FakeClock:
    """A monotonic clock tests move by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_is_a_limiter() -> None:
    assert isinstance(TokenBucket(60, 10, FakeClock()), Limiter)


def test_starts_full_and_drains() -> None:
    bucket = TokenBucket(60, 3, FakeClock())
    assert [bucket.consume(1) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens == 0


def test_refills_at_rate_per_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(120, 10, clock)  # 2 tokens per second
    assert bucket.consume(10)
    clock.advance(1.5)
    assert bucket.tokens == pytest.approx(3.0)
    assert bucket.consume(3)
    assert not bucket.consume(1)


def test_refill_never_exceeds_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(6000, 5, clock)
    clock.advance(3600)
    assert bucket.tokens == 5
    assert bucket.consume(5)
    assert not bucket.can_submit(1)


def test_consume_is_all_or_nothing() -> None:
    bucket = TokenBucket(60, 5, FakeClock())
    assert bucket.consume(3)
    assert not bucket.consume(3)
    assert bucket.tokens == pytest.approx(2.0)


def test_more_than_burst_never_succeeds() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, 5, clock)
    clock.advance(10**6)
    assert not bucket.can_submit(6)
    assert not bucket.consume(6)
    assert bucket.wait_time(6) == math.inf
    assert bucket.tokens == 5


def test_can_submit_consumes_nothing() -> None:
    bucket = TokenBucket(60, 2, FakeClock())
    assert bucket.can_submit(2)
    assert bucket.can_submit(2)
    assert bucket.consume(2)
    assert not bucket.can_submit(1)


def test_wait_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, 10, clock)  # 1 token per second
    assert bucket.wait_time() == 0.0
    assert bucket.consume(10)
    assert bucket.wait_time() == pytest.approx(1.0)
    assert bucket.wait_time(4) == pytest.approx(4.0)
    clock.advance(bucket.wait_time(4))
    assert bucket.consume(4)


def test_clock_going_backwards_adds_nothing() -> None:
    clock = FakeClock(1000.0)
    bucket = TokenBucket(60, 10, clock)
    assert bucket.consume(10)
    clock.now = 500.0
    assert bucket.tokens == 0
    assert not bucket.consume(1)
    clock.advance(2.0)  # refill resumes from the new reading
    assert bucket.tokens == pytest.approx(2.0)


def test_tokens_stay_within_bounds_with_fractional_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(7, 3, clock)
    for _ in range(1000):
        clock.advance(0.37)
        bucket.consume(1)
        assert 0.0 <= bucket.tokens <= 3.0


@pytest.mark.parametrize(
    ("rate", "burst", "setting"),
    [
        (0, 1, "submission_rate_limit"),
        (-5, 1, "submission_rate_limit"),
        (math.inf, 1, "submission_rate_limit"),
        (math.nan, 1, "submission_rate_limit"),
        (60, 0, "rate_limit_burst"),
        (60, math.inf, "rate_limit_burst"),
    ],
)
def test_rejects_bad_parameters(rate: float, burst: float, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        TokenBucket(rate, burst, FakeClock())
    assert info.value.setting == setting


def test_threads_never_oversubscribe() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, 1000, clock)  # clock frozen: exactly 1000 tokens
    taken = [0] * 8
    start = threading.Barrier(8, timeout=10)

    def worker(index: int) -> None:
        start.wait()
        for _ in range(500):
            if bucket.consume(1):
                taken[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(taken) == 1000


def test_repr() -> None:
    assert repr(TokenBucket(1000, 50, FakeClock())) == "TokenBucket(rate_per_minute=1000, burst=50)"


def test_hook_make_limiter_uses_config(tmp_path: object) -> None:
    clock = FakeClock()
    config = TelemetryConfig(
        app="demo", db_path=f"{tmp_path}/t.db", submission_rate_limit=120, rate_limit_burst=4
    )
    limiter = token_bucket.telemetry_make_limiter(name="token-bucket", config=config, clock=clock)
    assert isinstance(limiter, TokenBucket)
    assert limiter.consume(4)
    assert not limiter.consume(1)
    assert limiter.wait_time() == pytest.approx(0.5)
    assert limiter.wait_time(5) == math.inf


def test_hook_make_limiter_burst_defaults_to_rate(tmp_path: object) -> None:
    config = TelemetryConfig(app="demo", db_path=f"{tmp_path}/t.db", submission_rate_limit=1000)
    limiter = token_bucket.telemetry_make_limiter(
        name="token-bucket", config=config, clock=FakeClock()
    )
    assert limiter is not None
    assert limiter.burst == 1000


def test_hook_make_limiter_ignores_other_names(tmp_path: object) -> None:
    config = TelemetryConfig(app="demo", db_path=f"{tmp_path}/t.db")
    assert (
        token_bucket.telemetry_make_limiter(name="leaky", config=config, clock=FakeClock()) is None
    )


def test_hook_list_providers() -> None:
    (info,) = token_bucket.telemetry_list_providers()
    assert (info.kind, info.name) == ("limiter", "token-bucket")
