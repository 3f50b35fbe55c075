"""Token-bucket check-and-consume against pyrate-limiter, limits and an inline floor.

Every subject gets a fresh limiter each round (not timed) whose capacity holds
the whole round, so each timed call is a successful check-and-consume of one
token: the path the worker takes before every batch. The inline floor is the
smallest correct thread-safe token bucket (a lock, a refill from a monotonic
clock, a compare).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bench import _ours
from bench._harness import Context, Report, Round, Unavailable, interleave

NAME = "limiter"
OURS = "telemetry-core token-bucket consume(1)"
PYRATE = "pyrate-limiter try_acquire"
LIMITS = "limits moving-window hit"
INLINE = "inline token bucket"


class InlineBucket:
    """The floor: a minimal thread-safe token bucket."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def consume(self, n: int) -> bool:
        """Take ``n`` tokens if there are."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= n:
                self.tokens -= n
                return True
            return False


def _loop(fn: Callable[[], object], n: int) -> Round:
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        fn()
    return Round(clock() - t0, n)


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    n = ctx.pick(2000, 5000)
    rounds = ctx.pick(7, 31)
    per_minute = n * 10
    report = Report(NAME, "token bucket: check and consume one token (time per call)")
    report.params = {"calls_per_round": n, "rounds": rounds, "capacity": per_minute}
    cleanups: list[Callable[[], object]] = []

    def ours() -> Callable[[], Round]:
        host = _ours.plugin_host()
        cfg = _ours.config(
            ctx.workdir / "unused.db", submission_rate_limit=per_minute, rate_limit_burst=per_minute
        )
        try:
            host.make_limiter(cfg, time.monotonic)
        except Exception as exc:
            raise Unavailable(f"token-bucket limiter: {exc}") from exc

        def one_round() -> Round:
            limiter = host.make_limiter(cfg, time.monotonic)
            return _loop(lambda: limiter.consume(1), n)

        return one_round

    def pyrate() -> Callable[[], Round]:
        from pyrate_limiter import Duration, Limiter, Rate

        def one_round() -> Round:
            limiter = Limiter(Rate(per_minute, Duration.MINUTE))
            try:
                return _loop(lambda: limiter.try_acquire("k", 1, blocking=False), n)
            finally:
                close = getattr(limiter, "close", None)
                if close is not None:
                    close()

        return one_round

    def limits_() -> Callable[[], Round]:
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        item = RateLimitItemPerMinute(per_minute)

        def one_round() -> Round:
            storage = MemoryStorage()
            limiter = MovingWindowRateLimiter(storage)
            try:
                return _loop(lambda: limiter.hit(item, "k"), n)
            finally:
                timer = getattr(storage, "timer", None)
                if timer is not None:
                    timer.cancel()

        return one_round

    def inline() -> Callable[[], Round]:
        def one_round() -> Round:
            bucket = InlineBucket(per_minute / 60.0, per_minute)
            return _loop(lambda: bucket.consume(1), n)

        return one_round

    try:
        report.rows = interleave(
            {OURS: ours, PYRATE: pyrate, LIMITS: limits_, INLINE: inline},
            rounds=rounds,
            unit="call",
        )
    finally:
        for cleanup in cleanups:
            cleanup()
    report.check_ratio(OURS, PYRATE, at_least=3)
    report.check_ratio(OURS, LIMITS, at_least=3)
    # "<= 2x the inline floor" in time is a throughput ratio of at least 0.5.
    report.check_ratio(OURS, INLINE, at_least=0.5)
    return report
