"""Limiter plugin ``token-bucket``: the seed's RateLimiter.

A bucket holds at most ``burst`` tokens and refills continuously at
``rate_per_minute / 60`` tokens per second. Submitting ``n`` events takes ``n``
tokens. Refill is lazy (computed from the clock on each call), so an idle
bucket costs nothing. All state changes happen under one lock.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Final

from telemetry_core.errors import ConfigError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock

__all__ = ["NAME", "TokenBucket"]

#: The name configuration selects this provider by (``limiter = "token-bucket"``).
NAME: Final = "token-bucket"
# Tokens are floats: after waiting exactly wait_time(), rounding in
# ``elapsed * rate`` can leave 0.9999999999 of a token. This slack (a billionth
# of a token) makes that wait enough without ever letting the count go negative.
_EPSILON: Final = 1e-9


class TokenBucket:
    """A thread-safe token bucket with lazy refill.

    :param rate_per_minute: tokens added per minute (> 0).
    :param burst: capacity of the bucket, also its initial content (> 0).
    :param clock: a monotonic clock in seconds; ``time.monotonic`` by default.
        If it ever goes backwards, no tokens are added for the lost time and
        refill resumes from the new reading.
    """

    __slots__ = ("_clock", "_last", "_lock", "_tokens", "burst", "rate")

    def __init__(self, rate_per_minute: float, burst: float, clock: Clock = time.monotonic) -> None:
        if not (math.isfinite(rate_per_minute) and rate_per_minute > 0):
            raise ConfigError("submission_rate_limit", f"must be > 0, got {rate_per_minute!r}")
        if not (math.isfinite(burst) and burst > 0):
            raise ConfigError("rate_limit_burst", f"must be > 0, got {burst!r}")
        #: Tokens added per second.
        self.rate = rate_per_minute / 60.0
        #: Capacity of the bucket.
        self.burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_minute={self.rate * 60.0:g}, burst={self.burst:g})"

    def _refill(self) -> float:
        # Caller holds the lock. A clock that went backwards adds nothing
        # (elapsed <= 0) and re-anchors ``_last`` to the new reading.
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            tokens = self._tokens + elapsed * self.rate
            self._tokens = tokens if tokens < self.burst else self.burst
        return self._tokens

    @property
    def tokens(self) -> float:
        """Tokens available now, in ``[0, burst]``."""
        with self._lock:
            return self._refill()

    def can_submit(self, count: int = 1) -> bool:
        """Whether ``count`` tokens are available now; consumes nothing."""
        with self._lock:
            return self._refill() + _EPSILON >= count

    def consume(self, count: int = 1) -> bool:
        """Take ``count`` tokens if they are all available now; return whether taken.

        The check and the take are one atomic step, so concurrent callers never
        take more than the bucket holds. ``count > burst`` never succeeds.
        """
        # The refill is inlined: this is the limiter's hot path.
        with self._lock:
            now = self._clock()
            elapsed = now - self._last
            self._last = now
            tokens = self._tokens
            if elapsed > 0:
                tokens += elapsed * self.rate
                tokens = tokens if tokens < self.burst else self.burst
            if tokens + _EPSILON >= count:
                self._tokens = tokens - count if tokens > count else 0.0
                return True
            self._tokens = tokens
            return False

    def state(self) -> float:
        """The tokens available now (saved by the service between processes)."""
        return self.tokens

    def restore(self, tokens: float, idle: float) -> None:
        """Continue from ``tokens`` saved ``idle`` seconds ago, refilled for that
        time and capped at ``burst`` (a negative or odd input counts as none)."""
        if not (math.isfinite(tokens) and math.isfinite(idle)):
            return
        with self._lock:
            refilled = max(tokens, 0.0) + max(idle, 0.0) * self.rate
            self._tokens = min(refilled, self.burst)
            self._last = self._clock()

    def wait_time(self, count: int = 1) -> float:
        """Seconds until ``count`` tokens are available: 0 if they are now,
        ``math.inf`` if ``count > burst`` (never)."""
        if count > self.burst:
            return math.inf
        with self._lock:
            missing = count - self._refill()
        return missing / self.rate if missing > 0 else 0.0


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """Offer the ``token-bucket`` limiter."""
    return [
        ProviderInfo(
            kind="limiter",
            name=NAME,
            description="token bucket: submission-rate-limit events/minute, burst capacity",
        )
    ]


@hookimpl
def telemetry_make_limiter(name: str, config: TelemetryConfig, clock: Clock) -> TokenBucket | None:
    """Build the limiter from ``config.submission_rate_limit`` (events per minute)
    and ``config.burst`` when ``name`` is ``token-bucket``."""
    if name != NAME:
        return None
    return TokenBucket(config.submission_rate_limit, config.burst, clock)
