"""Helpers of tests that run code in other processes (fork, released subprocesses)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence

__all__ = ["LOCKER_SCRIPT", "in_forked_child", "run_released_together"]

#: ``python -c LOCKER_SCRIPT DB SECONDS``: another process that holds the database's
#: write lock (``BEGIN EXCLUSIVE``) for SECONDS, printing ``locked`` once it has it.
LOCKER_SCRIPT = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def in_forked_child(child: Callable[[], bytes]) -> bytes:
    """Run ``child`` in a forked process and return the bytes it returned.

    The child exits 0 after writing its answer to a pipe, 1 if ``child``
    raised; the caller's assertion on the exit status fails in that case.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, child())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


def run_released_together(commands: Sequence[Sequence[str]], timeout: float) -> list[str]:
    """Start every command, then release them at once and return their stdout.

    Each command must wait for one line on stdin before it does its work, so
    all interpreters are up when the race starts. Asserts each exited 0.
    """
    procs = [
        subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    return [out for out, _ in outputs]
