"""The delivery policy (DESIGN §7): which failures are transient, which are final.

One table, used by every bundled transport (and offered to third-party ones),
so that "retry" and "dead letter" mean the same thing whatever carries the
events:

* **Transient** (:data:`TRANSIENT_STATUSES`, every 5xx, and every failure
  without an answer: refused or reset connections, timeouts, TLS handshakes):
  the batch is retried with backoff for as long as its events are within the
  client's retention. It never becomes a dead letter.
* **Permanent** (:data:`PERMANENT_STATUSES`): the collector will refuse the same
  batch again, so it becomes a dead letter, kept locally and revived
  automatically once the settings it died under change (endpoint, API key, CA
  bundle, transport, library version).
* **413** is neither: the worker splits the batch; a single event that is still
  too large is permanent.

A status in neither set (a 3xx that was not followed, 409, 418, ...) is treated
as transient: losing events to an answer nobody planned for is the worse error,
and a bounded retry costs little.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from telemetry_core.errors import TransportError

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig

__all__ = [
    "PERMANENT_STATUSES",
    "TRANSIENT_STATUSES",
    "delivery_context",
    "is_transient_status",
    "status_error",
]

#: Answers after which the same batch is sent again later (besides every 5xx).
TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
#: Answers that refuse the batch for good: it becomes a dead letter.
PERMANENT_STATUSES: Final = frozenset({400, 401, 403, 404, 405, 410, 415, 422})


def is_transient_status(status: int) -> bool:
    """True when a batch answered with ``status`` should be sent again later: every
    answer but a permanent refusal and 413 (so :data:`TRANSIENT_STATUSES` and every
    5xx, and any status nobody planned for)."""
    return status != 413 and status not in PERMANENT_STATUSES


def status_error(message: str, status: int, retry_after: float | None = None) -> TransportError:
    """The :class:`TransportError` for a non-2xx answer, classified by this policy.

    ``retry_after`` (already parsed and clamped) is kept only for transient answers.
    """
    if status == 413:
        return TransportError(message, retryable=False, status=status, too_large=True)
    if is_transient_status(status):
        return TransportError(message, retryable=True, retry_after=retry_after, status=status)
    return TransportError(message, retryable=False, status=status)


def delivery_context(config: TelemetryConfig) -> str:
    """A fingerprint of the settings a batch is delivered under.

    Dead letters carry the fingerprint in force when they died; a service whose
    fingerprint differs revives them. It covers the transport, the endpoint, a
    hash of the API key, the CA bundle (path, size and modification time, so a
    replaced bundle counts as a change) and the library version. The key itself
    is never stored.
    """
    import hashlib  # here: a process that only records never needs it

    from telemetry_core._version import __version__

    ca = config.ca_bundle or ""
    ca_state = ""
    if ca:
        try:
            st = os.stat(ca)
            ca_state = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            ca_state = "missing"
    key_hash = hashlib.sha256((config.api_key or "").encode("utf-8", "replace")).hexdigest()
    parts = (config.transport, config.endpoint or "", key_hash, ca, ca_state, __version__)
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()[:32]
