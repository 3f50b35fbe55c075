"""Bounded memories of verdicts: the one cache policy of the hot paths.

Apps send the same few keys and values again and again, so the checks on the
recording and ingest paths remember what they found (a string is well-formed,
holds no personal data, scrubs to this). Every such memory follows one policy:
only items up to ``max_length`` characters are kept, and the whole memory is
dropped when it reaches ``size`` entries (no per-entry bookkeeping on the hot
path; a dropped verdict costs one recheck). Sharing one between threads is
safe: set and dict operations are atomic, and a lost entry only costs a check.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["BoundedMap", "BoundedSet"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedSet:
    """Strings found to pass a check. Look up with ``text in memo.items`` (a plain
    set, kept as the same object for the memory's life), add with :meth:`remember`."""

    __slots__ = ("items", "max_length", "size")

    def __init__(self, *, size: int, max_length: int) -> None:
        self.items: set[str] = set()
        self.size = size
        self.max_length = max_length

    def remember(self, text: str) -> None:
        """Keep ``text`` unless it is longer than ``max_length``; drop all when full."""
        if len(text) <= self.max_length:
            items = self.items
            if len(items) >= self.size:
                items.clear()
            items.add(text)


class BoundedMap(Generic[K, V]):
    """Verdicts by key. Look up with ``memo.items.get(key)`` (a plain dict, kept as
    the same object), add with :meth:`remember`; dropped all at once when full."""

    __slots__ = ("items", "size")

    def __init__(self, *, size: int) -> None:
        self.items: dict[K, V] = {}
        self.size = size

    def remember(self, key: K, value: V, *, room: int = 1) -> None:
        """Keep ``key``; first drop everything when fewer than ``room`` places are left."""
        items = self.items
        if len(items) + room > self.size:
            items.clear()
        items[key] = value
