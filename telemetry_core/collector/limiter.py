"""Per-key token buckets for ``POST /v1/submit``.

The same design as the client's ``token-bucket`` limiter (capacity ``burst``,
refilled continuously at ``rate`` tokens per second from an injectable monotonic
clock), kept local because the collector imports only the shared schema and
values from the core, never a client plugin.
"""

from __future__ import annotations

import math
import threading
import time

from telemetry_core.models import Clock

__all__ = ["KeyedRateLimiter"]


class KeyedRateLimiter:
    """One token bucket per key; a token is one event.

    :meth:`acquire` takes ``count`` tokens from ``key``'s bucket, or takes
    nothing and returns the whole seconds to wait (for ``Retry-After``).
    Buckets idle long enough to be full are forgotten, so memory stays bounded by
    the keys active within one refill period.
    """

    def __init__(self, *, per_minute: int, burst: int, clock: Clock = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, count: int) -> int:
        """Take ``count`` tokens; return 0 on success, else the integer seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
            if count <= tokens:
                self._buckets[key] = (tokens - count, now)
                return 0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 10_000:
                self._forget_full(now)
            needed = min(float(count), self._burst) - tokens
            return max(1, math.ceil(needed / self._rate))

    def wait_for(self, key: str, count: int = 1) -> int:
        """The whole seconds until ``count`` tokens are available (0: now); takes nothing."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        if count <= tokens:
            return 0
        return max(1, math.ceil((min(float(count), self._burst) - tokens) / self._rate))

    def _forget_full(self, now: float) -> None:
        full_after = self._burst / self._rate
        for key, (_tokens, last) in list(self._buckets.items()):
            if now - last >= full_after:
                del self._buckets[key]
