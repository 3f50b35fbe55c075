"""Backoff plugin ``exponential-jitter``: the seed's RetryManager.

The delay before attempt ``retry_count + 1`` is ``base_delay * 2**retry_count``,
spread by ±25 % jitter (1 s ± 250 ms, 2 s ± 500 ms, ...) so that many clients
failing together do not come back together, then capped at ``max_delay``. A
``Retry-After`` from the server wins over the computed delay, clamped to
``[0, max_retry_after]``. Every retry count is valid: negative counts count as 0
and huge ones saturate at the cap without computing a huge power.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Final

from telemetry_core.errors import ConfigError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock

__all__ = [
    "DEFAULT_BASE_DELAY",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_AFTER",
    "JITTER",
    "NAME",
    "ExponentialJitterBackoff",
]

#: The name configuration selects this provider by (``backoff = "exponential-jitter"``).
NAME: Final = "exponential-jitter"
#: Seconds before the first retry, before jitter.
DEFAULT_BASE_DELAY: Final = 1.0
#: No computed delay exceeds this many seconds (one hour), jitter included.
DEFAULT_MAX_DELAY: Final = 3600.0
#: A batch is attempted at most this many times after its first failure.
DEFAULT_MAX_RETRIES: Final = 5
#: A server's ``Retry-After`` is honoured up to this many seconds (one hour), so a
#: misconfigured or hostile collector cannot park a client for days.
DEFAULT_MAX_RETRY_AFTER: Final = 3600.0
#: Relative jitter: the delay is drawn uniformly from ``[d * (1 - J), d * (1 + J)]``.
JITTER: Final = 0.25
# 2.0**1023 is the largest power of two a float holds; past it ``2.0**n`` raises
# OverflowError, so exponents are clamped here (stamina guards the same way).
_MAX_EXPONENT: Final = 1023


class ExponentialJitterBackoff:
    """Exponential backoff with ±25 % jitter, a cap, and ``Retry-After`` precedence.

    :param base_delay: seconds before the first retry, before jitter (> 0).
    :param max_delay: cap in seconds applied after jitter (> 0).
    :param max_retries: how many retries a batch gets; ``should_retry(n)`` is
        ``n < max_retries`` (>= 0).
    :param max_retry_after: cap in seconds on a server's ``Retry-After`` (>= 0).
    :param rng: the source of jitter; tests pass a seeded ``random.Random``.
    :param clock: wall clock in seconds, used by :meth:`next_retry_timestamp`.
    """

    __slots__ = ("_clock", "_rng", "base_delay", "max_delay", "max_retries", "max_retry_after")

    def __init__(
        self,
        *,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        rng: random.Random,
        clock: Clock,
    ) -> None:
        for label, value in (("base_delay", base_delay), ("max_delay", max_delay)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(label, f"must be a finite number > 0, got {value!r}")
        if not (math.isfinite(max_retry_after) and max_retry_after >= 0):
            raise ConfigError("max_retry_after", f"must be finite, >= 0: {max_retry_after!r}")
        if max_retries < 0:
            raise ConfigError("max_retries", f"must be >= 0, got {max_retries!r}")
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.max_retries = int(max_retries)
        self.max_retry_after = float(max_retry_after)
        self._rng = rng
        self._clock = clock

    def __repr__(self) -> str:
        return (
            f"ExponentialJitterBackoff(base_delay={self.base_delay}, max_delay={self.max_delay}, "
            f"max_retries={self.max_retries}, max_retry_after={self.max_retry_after})"
        )

    def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``retry_count + 1``.

        :param retry_count: failed attempts so far; negative counts as 0, any
            size is accepted.
        :param retry_after: the server's ``Retry-After`` in seconds, if it sent
            one; it replaces the computed delay, clamped to ``[0, max_retry_after]``
            (NaN is ignored).
        :return: a finite number of seconds in ``[0, max(max_delay, max_retry_after)]``.
        """
        if retry_after is not None and not math.isnan(retry_after):
            return min(max(retry_after, 0.0), self.max_retry_after)
        exponent = min(max(retry_count, 0), _MAX_EXPONENT)
        nominal = self.base_delay * 2.0**exponent  # may be inf: the cap check below catches it
        if nominal * (1.0 - JITTER) >= self.max_delay:
            return self.max_delay  # even the lowest jitter lands above the cap
        delay = nominal * (1.0 + JITTER * (2.0 * self._rng.random() - 1.0))
        return min(delay, self.max_delay)

    def should_retry(self, retry_count: int) -> bool:
        """True while ``retry_count`` is below ``max_retries``."""
        return retry_count < self.max_retries

    def next_retry_timestamp(self, retry_count: int, retry_after: float | None = None) -> float:
        """Wall-clock seconds at which attempt ``retry_count + 1`` is due:
        ``clock() + next_retry_delay(retry_count, retry_after)``."""
        return self._clock() + self.next_retry_delay(retry_count, retry_after)


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """Offer the ``exponential-jitter`` backoff."""
    return [
        ProviderInfo(
            kind="backoff",
            name=NAME,
            description="base * 2^n seconds with ±25% jitter, capped; honours Retry-After",
        )
    ]


@hookimpl
def telemetry_make_backoff(
    name: str, config: TelemetryConfig, rng: random.Random, clock: Clock
) -> ExponentialJitterBackoff | None:
    """Build the backoff from ``config.base_delay``, ``max_delay``, ``max_retries``
    and ``max_retry_after`` when ``name`` is ``exponential-jitter``."""
    if name != NAME:
        return None
    return ExponentialJitterBackoff(
        base_delay=config.base_delay,
        max_delay=config.max_delay,
        max_retries=config.max_retries,
        max_retry_after=config.max_retry_after,
        rng=rng,
        clock=clock,
    )
