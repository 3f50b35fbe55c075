"""``trim_free_heap``: gives free heap back to the OS where glibc allows, never raises."""

from __future__ import annotations

import ctypes
import sys

import pytest

from telemetry_core import _memory


@pytest.fixture(autouse=True)
def _fresh_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_trim", None)
    monkeypatch.setattr(_memory, "_looked_up", False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_on_glibc_a_freed_block_is_given_back() -> None:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_trim"):
        pytest.skip("not glibc")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # Many small blocks below the mmap threshold land on the heap; freed,
    # they are free heap pages that only a trim returns.
    blocks = [libc.malloc(64 * 1024) for _ in range(200)]
    for block in blocks:
        libc.free(block)
    assert _memory.trim_free_heap() is True
    assert _memory._trim is not None


def test_elsewhere_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _memory.trim_free_heap() is False
    assert _memory._looked_up and _memory._trim is None


def test_a_failing_trim_is_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(pad: int) -> int:
        raise OSError(f"cannot trim {pad}")

    monkeypatch.setattr(_memory, "_trim", broken)
    monkeypatch.setattr(_memory, "_looked_up", True)
    assert _memory.trim_free_heap() is False
