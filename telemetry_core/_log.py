"""The ``telemetry_core`` logger, with :mod:`logging` imported on first use.

A process that records an event and exits normally logs nothing, and
importing :mod:`logging` (with ``traceback``, ``string`` and ``weakref``)
costs a few milliseconds of every such process's start-up. The modules on the
recording path use :data:`logger` from here: each attribute access
(``logger.warning``, ``logger.debug``...) is forwarded to
``logging.getLogger("telemetry_core")``, imported then, so handlers, levels,
filters and ``caplog`` see the same logger as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

__all__ = ["LOGGER_NAME", "logger"]

#: The one logger name telemetry-core logs under.
LOGGER_NAME: Final = "telemetry_core"


class _LazyLogger:
    """Forwards every attribute to the real logger, imported on first use."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger(LOGGER_NAME), name)

    def __repr__(self) -> str:
        return f"<lazy logger {LOGGER_NAME!r}>"


if TYPE_CHECKING:
    import logging

    logger: logging.Logger
else:
    logger = _LazyLogger()
