"""Giving freed heap back to the operating system while a process waits.

After the https transport drops its connection pool and TLS context before a
long idle wait, the C heap may hold free pages that glibc keeps for later
use. :func:`trim_free_heap` asks glibc to return them (``malloc_trim(0)``).
Elsewhere (musl, macOS, Windows, no ``ctypes``) it does nothing. It never
raises: it runs on the worker thread between cycles.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["trim_free_heap"]

#: The C function, looked up on the first call (None: this platform has none).
_trim: Callable[[int], int] | None = None
_looked_up = False


def _lookup() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None).malloc_trim  # glibc only; musl lacks it
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


def trim_free_heap() -> bool:
    """Return free heap pages to the OS where glibc allows it; True when it did
    release memory, False when it released none or cannot on this platform."""
    global _trim, _looked_up
    try:
        if not _looked_up:
            _trim, _looked_up = _lookup(), True
        return _trim is not None and bool(_trim(0))
    except Exception:
        return False
