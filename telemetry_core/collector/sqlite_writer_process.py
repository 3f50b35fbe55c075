"""The collector's SQLite writer in a process of its own, behind a pipe.

:class:`WriterProcess` starts ``python -m telemetry_core.collector.sqlite_writer_process``
and offers :class:`~telemetry_core.collector.sqlite_writer.SQLiteWriter`'s methods; each
call is one request on the child's stdin and one reply on its stdout (a 4-byte length,
then msgpack). The child holds the only write connection to the file (SQLite stays
one writer) and does the transaction's whole work, aggregation included, on its own
interpreter lock, so it runs beside the event loop on another core.

Failures keep the store's promises:

- a SQLite or internal error in the child rolls its transaction back and comes back as
  :class:`WriterFailed`; the child goes on serving;
- a child that died (killed, out of memory) is a :class:`WriterFailed` for the call in
  flight, whose batches then get a retryable error (whether their commit happened is
  unknown, and the ids make a resend harmless); the next call starts a new child;
- the child exits when its stdin closes, so it never outlives the collector.

Only the store's writer thread calls a :class:`WriterProcess`, one call at a time.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec

from telemetry_core.collector.sqlite_writer import LAST_COMMIT, Group
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event

__all__ = ["WriterFailed", "WriterProcess"]

#: How long close() waits for the child to commit and exit before killing it (s).
CLOSE_WAIT: Final = 10.0
#: How long one call (start-up included) waits for the child's answer before the
#: child is taken for hung, killed and replaced (s): well past SQLite's own 30 s
#: wait for a lock, so a slow commit is never cut short.
CALL_WAIT: Final = 60.0


class WriterFailed(Exception):
    """A call the writer process could not carry out. ``internal`` when the cause
    is not SQLite's (the message then holds the child's traceback). ``committed``
    when the process died (or hung) after the call's transaction committed: its
    batches still get an error (their answers were lost with the process; the
    ids make a resend harmless), but what else it wrote, the outcome counters,
    must not be written again."""

    def __init__(self, message: str, *, internal: bool = False, committed: bool = False) -> None:
        super().__init__(message)
        self.internal = internal
        self.committed = committed


class _Commit(msgspec.Struct, tag="commit", array_like=True):
    batches: list[tuple[list[Event], int]]
    counters: list[tuple[int, str, int]]
    sequence: int


class _Delete(msgspec.Struct, tag="delete", array_like=True):
    before_ms: int
    limit: int


class _Stop(msgspec.Struct, tag="stop", array_like=True):
    pass


class _Done(msgspec.Struct, tag="done", array_like=True):
    inserted: list[list[bool]] = []
    deleted: int = 0


class _Failed(msgspec.Struct, tag="failed", array_like=True):
    kind: str  # "sqlite", "internal" or "open"
    message: str


_Request = _Commit | _Delete | _Stop
_Reply = _Done | _Failed

_encode = msgspec.msgpack.Encoder().encode
_decode_reply = msgspec.msgpack.Decoder(_Reply).decode


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (None: no deadline); TimeoutError past it."""
    if deadline is None:
        return None
    wait = deadline - time.monotonic()
    if wait <= 0:
        raise TimeoutError
    return wait


def _send(fd: int, payload: bytes, deadline: float | None = None) -> None:
    """Write one frame (a 4-byte length, then ``payload``) to ``fd`` by ``deadline``."""
    view = memoryview(len(payload).to_bytes(4, "big") + payload)
    while view:
        if select.select([], [fd], [], _remaining(deadline))[1]:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue


def _receive(fd: int, deadline: float | None = None) -> bytes | None:
    """Read one frame from ``fd`` by ``deadline``; None at the end of the stream
    (a cut frame counts as the end)."""
    size = -1
    data = bytearray()
    while size < 0 or len(data) < 4 + size:
        if not select.select([fd], [], [], _remaining(deadline))[0]:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        data += chunk
        if size < 0 and len(data) >= 4:
            size = int.from_bytes(data[:4], "big")
    return bytes(data[4:])


class WriterProcess:
    """:class:`~telemetry_core.collector.sqlite_writer.SQLiteWriter` in a child process.

    Starting waits until the child has opened the file and set up the schema;
    :class:`StorageError` when it cannot. ``call_wait`` bounds each call: a child
    that does not answer within it is killed and the call fails (see
    :data:`CALL_WAIT`). Needs POSIX pipes that ``select`` can wait on."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", call_wait: float = CALL_WAIT
    ) -> None:
        self._path = Path(path)
        self._args = [str(self._path), synchronous]
        self._call_wait = call_wait
        self._proc: subprocess.Popen[bytes] | None = None
        # Commit numbers unique across restarts of the collector (see _committed).
        self._sequence = time.time_ns()
        self._start()

    @property
    def pid(self) -> int | None:
        """The child's process id (None between a death and the next call)."""
        return None if self._proc is None else self._proc.pid

    def commit(
        self, batches: Group, counters: Mapping[tuple[int, str], int]
    ) -> list[tuple[bool, ...]]:
        """See :meth:`SQLiteWriter.commit`."""
        self._sequence += 1
        reply = self._call(
            _Commit(
                [(list(events), received) for events, received in batches],
                [(hour, name, n) for (hour, name), n in counters.items()],
                self._sequence,
            )
        )
        return [tuple(flags) for flags in reply.inserted]

    def delete_before(self, before_ms: int, limit: int) -> int:
        """See :meth:`SQLiteWriter.delete_before`."""
        return self._call(_Delete(before_ms, limit)).deleted

    def close(self) -> None:
        """Let the child finish and exit (killed after :data:`CLOSE_WAIT` seconds)."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                assert proc.stdin is not None
                _send(proc.stdin.fileno(), _encode(_Stop()), time.monotonic() + CLOSE_WAIT)
                proc.stdin.close()
                proc.wait(CLOSE_WAIT)
        except (OSError, TimeoutError, subprocess.TimeoutExpired):
            pass
        finally:
            self._forget()

    # -- internals ----------------------------------------------------------------

    def _start(self) -> None:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, *self._args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
                # Its own session: a Ctrl-C or a stop signal meant for the collector's
                # group must not end the writer while the collector drains requests.
                start_new_session=True,
            )
        except OSError as exc:
            raise StorageError(f"cannot start the writer process: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        self._proc = proc
        try:
            first = _receive(proc.stdout.fileno(), time.monotonic() + self._call_wait)
            reply = None if first is None else _decode_reply(first)
        except (TimeoutError, OSError, msgspec.DecodeError):
            reply = None
        if not isinstance(reply, _Done):
            self._forget()
            message = reply.message if isinstance(reply, _Failed) else "the writer process ended"
            raise StorageError(message)

    def _call(self, request: _Commit | _Delete) -> _Done:
        if self._proc is None or self._proc.poll() is not None:
            self._forget()
            try:
                self._start()
            except StorageError as exc:
                raise WriterFailed(f"cannot start the writer process: {exc}") from exc
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + self._call_wait
        try:
            _send(proc.stdin.fileno(), _encode(request), deadline)
            frame = _receive(proc.stdout.fileno(), deadline)
            problem = "the writer process ended"
        except TimeoutError:
            frame, problem = None, f"the writer process did not answer within {self._call_wait:g} s"
        except OSError:
            frame, problem = None, "the writer process ended"
        if frame is None:
            self._forget()  # kills a hung child: its transaction ends with it
            committed = isinstance(request, _Commit) and self._committed(request.sequence)
            raise WriterFailed(problem, committed=committed)
        reply: _Done | _Failed = _decode_reply(frame)
        if isinstance(reply, _Failed):
            raise WriterFailed(reply.message, internal=reply.kind == "internal")
        return reply

    def _committed(self, sequence: int) -> bool:
        """Whether commit ``sequence`` reached the file before its child ended
        (each commit records its number in the same transaction)."""
        try:
            conn = sqlite3.connect(f"{self._path.absolute().as_uri()}?mode=ro", uri=True)
            try:
                row = conn.execute(LAST_COMMIT).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return False  # unknown: the counters are written again (at most twice)
        return row is not None and row[0] == sequence

    def _forget(self) -> None:
        """Reap a dead child and drop its pipes."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _serve(path: str, synchronous: str, source: int, out: int) -> int:
    """The child: open the file, answer requests until stdin ends or a stop."""
    from telemetry_core.collector.sqlite_writer import SQLiteWriter

    decode = msgspec.msgpack.Decoder(_Request).decode
    try:
        writer = SQLiteWriter(path, synchronous=synchronous)
    except StorageError as exc:
        _send(out, _encode(_Failed("open", str(exc))))
        return 1
    _send(out, _encode(_Done()))
    try:
        while (frame := _receive(source)) is not None:
            reply: _Done | _Failed
            try:
                request = decode(frame)
                if isinstance(request, _Stop):
                    break
                if isinstance(request, _Commit):
                    counters = {(hour, name): n for hour, name, n in request.counters}
                    flags = writer.commit(request.batches, counters, sequence=request.sequence)
                    reply = _Done(inserted=[list(f) for f in flags])
                else:
                    reply = _Done(deleted=writer.delete_before(request.before_ms, request.limit))
            except sqlite3.Error as exc:
                reply = _Failed("sqlite", str(exc))
            except Exception:
                reply = _Failed("internal", traceback.format_exc())
            _send(out, _encode(reply))
    finally:
        writer.close()
    return 0


def main(argv: list[str]) -> int:
    """``python -m telemetry_core.collector.sqlite_writer_process PATH SYNCHRONOUS``."""
    # The collector ends this process by closing its stdin (or with a stop), after
    # its last commit; signals meant for the collector are not for it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # The replies own the real stdout; anything printed goes to stderr instead.
    out = os.dup(1)
    os.dup2(2, 1)
    try:
        return _serve(argv[0], argv[1], 0, out)
    finally:
        os.close(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
