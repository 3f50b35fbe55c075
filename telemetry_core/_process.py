"""Process lifecycle: what every live service needs at interpreter exit and after fork().

The service registers itself here (:func:`register`); the process-wide hooks
are installed once, on the first registration, never at import:

* at exit, every service first sends what is due within ``config.exit_flush``
  (short-lived processes), then every worker is told to stop and each is joined
  within what is left of the largest ``exit_timeout``; a service whose worker
  ended has its counts flushed and its connections closed, one whose worker is
  still inside a call keeps them open (nothing is finalized under a thread);
* around ``os.fork()``, the fork guard keeps the fork out of SQLite calls, and
  in the child every service forgets its parent's thread, connections and
  locks (:data:`inherited` keeps those objects alive, never closed: closing an
  inherited SQLite connection can disturb the parent's locks and WAL).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from telemetry_core._forksafe import fork_guard
from telemetry_core._log import logger

__all__ = ["ProcessBound", "inherited", "register"]


class ProcessBound(Protocol):
    """What the process hooks call on a service."""

    @property
    def exit_flush(self) -> float:
        """Seconds this service may spend sending at exit."""
        ...

    @property
    def exit_timeout(self) -> float:
        """Seconds this service's worker may take to stop at exit."""
        ...

    def _flush_at_exit(self, deadline: float) -> None: ...

    def _signal_stop(self) -> None: ...

    def _finish_at_exit(self, timeout: float) -> None: ...

    def _reset_after_fork(self) -> None: ...


_services: weakref.WeakSet[ProcessBound] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()
#: Objects a forked child inherited from its parent (connections, transports).
inherited: list[object] = []
#: The interpreter is exiting (the exit hook runs): start no new thread.
exiting = False


def register(service: ProcessBound) -> None:
    """Include ``service`` in the exit and fork handling (installs the hooks once)."""
    _install_hooks()
    _services.add(service)


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        atexit.register(_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=fork_guard.before_fork,
                after_in_parent=fork_guard.after_fork_in_parent,
                after_in_child=_after_fork_in_child,
            )
        _hooks_installed = True


def _at_exit() -> None:
    global exiting
    exiting = True
    services = list(_services)
    if not services:
        return
    # The flush's time comes out of the stop's budget, so exit waits at most
    # max(exit_flush, exit_timeout) (plus the native-call grace of the worker).
    started = time.monotonic()
    flush_deadline = started + max(s.exit_flush for s in services)
    for service in services:
        _never_raise(service._flush_at_exit, flush_deadline)
    budget = max(max(s.exit_timeout for s in services) - (time.monotonic() - started), 0)
    deadline = time.monotonic() + budget
    for service in services:
        _never_raise(service._signal_stop)
    for service in services:
        _never_raise(service._finish_at_exit, max(deadline - time.monotonic(), 0.0))


def _never_raise(step: Callable[..., object], *args: object) -> None:
    """One service's exit step; a failure is logged and the others still run."""
    try:
        step(*args)
    except Exception as exc:
        logger.debug("telemetry-core: exit step %s failed: %r", step, exc)


def _after_fork_in_child() -> None:
    fork_guard.after_fork_in_child()
    for service in list(_services):
        service._reset_after_fork()
