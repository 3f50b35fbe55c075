"""Local counters kept in memory first, and warnings given once per kind.

Failures are counted in memory (:meth:`Counters.count` with ``defer``) and
written to the store later (after the next successful record, by the worker, or
on close), so counting a failure never waits a second time on a store that has
just failed. What cannot be written stays in memory for the next flush.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from telemetry_core._log import logger

if TYPE_CHECKING:
    from telemetry_core.local_store import LocalStore

__all__ = ["Counters"]


class Counters:
    """Counts by name and once-per-kind warnings of one service.

    :param store: returns the open store to write counts to (None while closed).
    """

    def __init__(self, store: Callable[[], LocalStore | None]) -> None:
        self._store = store
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self.warned: set[str] = set()

    def warn_once(self, kind: str, message: str, *args: object) -> None:
        """Log ``message`` as a warning the first time ``kind`` happens."""
        if kind not in self.warned:
            self.warned.add(kind)
            logger.warning(message, *args)

    def count(self, name: str, n: int = 1, *, defer: bool = False) -> None:
        """Count ``name``: written at once, or (``defer``) at the next flush."""
        with self._lock:
            self._pending[name] = self._pending.get(name, 0) + n
        if not defer:
            self.flush()

    @property
    def waiting(self) -> bool:
        """True while counts wait in memory."""
        return bool(self._pending)

    def pending(self) -> dict[str, int]:
        """The counts not written to the store yet."""
        with self._lock:
            return dict(self._pending)

    def flush(self) -> None:
        """Write the counts kept in memory; what cannot be written stays there."""
        store = self._store()
        if store is None or not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        done: list[str] = []
        try:
            for name, n in pending.items():
                store.increment_counter(name, n)
                done.append(name)
        except Exception as exc:
            logger.debug("telemetry-core: could not write counters: %r", exc)
            with self._lock:
                for name, n in pending.items():
                    if name not in done:
                        self._pending[name] = self._pending.get(name, 0) + n

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may be held)."""
        self._lock = threading.Lock()
