"""The worker's retry state: the one home of the rules about pausing after a failure.

:class:`RetryState` holds what the submission worker carries from one batch to
the next: consecutive failures, the backoff exponent, the pause that follows a
transient failure (the backoff's delay or the collector's ``Retry-After``) and
whether the collector looks unreachable (offline). The rules (DESIGN §7):

* a transient failure counts and pauses sending: for the server's
  ``Retry-After`` (at most ``max_retry_after``; it does not grow the exponent),
  else for the backoff's next delay (the exponent grows by one);
* a failure without an HTTP status (the network, TLS) also marks the worker
  offline, until ``transport.ping()`` succeeds;
* once the backoff's ``should_retry`` turns false the batch is *parked*: said
  once per run of failures, still retried at the backoff's cap;
* a delivered batch resets everything.

Pauses run on the monotonic clock, so a wall-clock step never stretches or
skips one; wall-clock ends are computed when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from telemetry_core.errors import TransportError
    from telemetry_core.models import Clock
    from telemetry_core.protocols import Backoff

__all__ = ["RetryState"]


class RetryState:
    """Where one worker stands between batches (see the module docstring).

    :param backoff: the delays after failures without ``Retry-After``, and
        when to park.
    :param monotonic: the monotonic clock the pause runs on (seconds).
    """

    def __init__(self, backoff: Backoff, monotonic: Clock) -> None:
        self._backoff = backoff
        self._monotonic = monotonic
        #: Failed attempts since the last delivered batch.
        self.failures = 0
        # The backoff exponent: grows only with failures the backoff timed.
        self._step = 0
        # Monotonic end of the pause (0: not paused), and whether the
        # collector asked for it (Retry-After).
        self._deadline = 0.0
        self._server = False
        #: True after a network error, until a ping succeeds.
        self.offline = False
        # The parked warning was given in this run of failures.
        self._parked_said = False

    def left(self) -> float:
        """Seconds of the pause still to wait (0 when not paused)."""
        left = self._deadline - self._monotonic()
        return left if self._deadline and left > 0 else 0.0

    def holds(self, *, honour_backoff: bool) -> float:
        """Seconds a cycle must still wait: the pause left, unless it is the
        client's own backoff and ``honour_backoff`` is off (a server's pause
        always holds); 0 when nothing holds."""
        return self.left() if honour_backoff or self._server else 0.0

    def pause_until(self, now: float) -> float:
        """Wall-clock end of the pause (``now`` is the wall clock), else 0."""
        left = self.left()
        return now + left if left > 0 else 0.0

    def server_pause_until(self, now: float) -> float:
        """Wall-clock end of a pause the collector asked for, else 0."""
        return self.pause_until(now) if self._server else 0.0

    def clear_pause(self) -> None:
        """Forget every pause, the server's included, and the offline flag."""
        self._deadline = 0.0
        self._server = False
        self.offline = False

    def delivered(self) -> None:
        """A batch was delivered: no failures, no pause, online."""
        self.clear_pause()
        self.failures = 0
        self._step = 0
        self._parked_said = False

    def failed(self, error: TransportError, max_retry_after: float) -> float:
        """Count a transient failure and start its pause; return the pause (seconds)."""
        self.failures += 1
        if error.retry_after is not None:
            delay = min(error.retry_after, max_retry_after)
            self._server = True
        else:
            delay = self._backoff.next_retry_delay(self._step)
            self._step += 1
            self._server = False
        self._deadline = self._monotonic() + max(delay, 0.0)
        if error.status is None:
            self.offline = True
        return delay

    def newly_parked(self) -> bool:
        """True the first time in a run of failures that the backoff gives up
        retrying (the batch is parked: say so once)."""
        if self._backoff.should_retry(self.failures) or self._parked_said:
            return False
        self._parked_said = True
        return True
