"""The collector's dedup window, as the client learns it (DESIGN §7).

The collector recognises a resent event for as long as it keeps raw events and
publishes that window in ``GET /v1/info`` (``dedup_window_days``). The worker
learns it once a day (:func:`learn`, remembered in the stored config) and warns
when the client keeps events longer, since a resend after the window would be
counted again; ``status()`` shows the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

from telemetry_core._log import logger

if TYPE_CHECKING:
    from telemetry_core.protocols import Transport

__all__ = ["DEDUP_CHECKED_KEY", "DEDUP_WINDOW_KEY", "SERVER_INFO_EVERY", "learn", "stored"]

#: Stored-config key of the collector's dedup window as last learned (days), and
#: of when it was learned; it is asked again at most every SERVER_INFO_EVERY.
DEDUP_WINDOW_KEY: Final = "server-dedup-window-days"
DEDUP_CHECKED_KEY: Final = "server-info-checked-at"
SERVER_INFO_EVERY: Final = 24 * 3600.0


class _Config(Protocol):
    def get_config(self, key: str) -> str | None: ...

    def set_config(self, key: str, value: str) -> None: ...


def stored(store: _Config) -> int | None:
    """The window (days) as last learned, None if unknown or unpublished."""
    text = store.get_config(DEDUP_WINDOW_KEY)
    return int(text) if text else None


def learn(store: _Config, transport: Transport, now: float) -> int | None:
    """The collector's dedup window in days (None when it publishes none, or
    when it cannot be learned now), from the stored config when learned within
    :data:`SERVER_INFO_EVERY`, else from ``transport.server_info()``."""
    try:
        checked = store.get_config(DEDUP_CHECKED_KEY)
        if checked is not None and 0 <= now - float(checked) < SERVER_INFO_EVERY:
            return stored(store)
        window = transport.server_info().dedup_window_days
        store.set_config(DEDUP_WINDOW_KEY, "" if window is None else str(window))
        store.set_config(DEDUP_CHECKED_KEY, repr(now))
    except Exception as exc:
        logger.debug("telemetry-core: could not learn the dedup window: %s", type(exc).__name__)
        return None
    return window
