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
from collections import OrderedDict
from typing import Final

from telemetry_core.models import Clock

__all__ = ["MAX_BUCKETS", "PRUNE_EVERY", "KeyedRateLimiter"]

#: Most per-key buckets kept; past it the least recently used is forgotten.
MAX_BUCKETS: Final = 10_000
#: Acquisitions between two sweeps of the buckets idle long enough to be full.
PRUNE_EVERY: Final = 1_000


class KeyedRateLimiter:
    """One token bucket per key; a token is one event.

    :meth:`acquire` takes ``count`` tokens from ``key``'s bucket, or takes
    nothing and returns the whole seconds to wait (for ``Retry-After``).
    Every ``PRUNE_EVERY`` acquisitions the buckets idle long enough to be full
    are forgotten (forgetting them changes nothing: a new bucket starts full).
    At most ``max_buckets`` are kept whatever the key churn: past it the least
    recently used bucket is forgotten, so that key starts again from a full
    bucket.
    """

    def __init__(
        self,
        *,
        per_minute: int,
        burst: int,
        clock: Clock = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._max_buckets = max_buckets
        # Least recently used first: sweeps and evictions start at the front.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._since_prune = 0
        self._lock = threading.Lock()

    def acquire(self, key: str, count: int) -> int:
        """Take ``count`` tokens; return 0 on success, else the integer seconds to wait."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
            granted = count <= tokens
            self._buckets[key] = (tokens - count if granted else tokens, now)
            self._buckets.move_to_end(key)
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._forget_full(now)
            while len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)
            if granted:
                return 0
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
        """Drop the buckets idle for a whole refill period, oldest first; stops at
        the first recent one, so a sweep costs the buckets it drops plus one."""
        full_after = self._burst / self._rate
        while self._buckets:
            _key, (_tokens, last) = next(iter(self._buckets.items()))
            if now - last < full_after:
                break
            self._buckets.popitem(last=False)
