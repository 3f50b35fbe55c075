"""Tests of the bounded verdict memories (telemetry_core._memo)."""

from __future__ import annotations

from telemetry_core._memo import BoundedMap, BoundedSet


def test_a_bounded_set_keeps_short_strings_and_drops_all_when_full() -> None:
    memo = BoundedSet(size=3, max_length=5)
    items = memo.items
    for text in ("a", "bb", "ccc"):
        memo.remember(text)
    memo.remember("toolong")  # over max_length: never kept
    assert items == {"a", "bb", "ccc"}
    memo.remember("d")  # full: everything goes, then "d" is kept
    assert memo.items is items and items == {"d"}


def test_a_bounded_map_drops_all_when_the_room_asked_for_is_missing() -> None:
    memo: BoundedMap[str, int] = BoundedMap(size=3)
    memo.remember("a", 1)
    memo.remember("b", 2)
    assert memo.items == {"a": 1, "b": 2}
    memo.remember("c", 3, room=2)  # two places wanted, one left: cleared first
    assert memo.items == {"c": 3}
    memo.remember("c", 4)
    assert memo.items.get("c") == 4
