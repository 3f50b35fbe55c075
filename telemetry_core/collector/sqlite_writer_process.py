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
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import msgspec

from telemetry_core.errors import StorageError
from telemetry_core.schema import Event

if TYPE_CHECKING:
    from telemetry_core.collector.sqlite_writer import Group

__all__ = ["WriterFailed", "WriterProcess"]

#: How long close() waits for the child to commit and exit before killing it (s).
CLOSE_WAIT: Final = 10.0


class WriterFailed(Exception):
    """A call the writer process could not carry out (its transaction was not
    committed, or, when the process died, may not have been). ``internal`` when
    the cause is not SQLite's (the message then holds the child's traceback)."""

    def __init__(self, message: str, *, internal: bool = False) -> None:
        super().__init__(message)
        self.internal = internal


class _Commit(msgspec.Struct, tag="commit", array_like=True):
    batches: list[tuple[list[Event], int]]
    counters: list[tuple[int, str, int]]


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


def _write_frame(out: IO[bytes], payload: bytes) -> None:
    out.write(len(payload).to_bytes(4, "big") + payload)
    out.flush()


def _read_frame(source: IO[bytes]) -> bytes | None:
    """One frame, or None at the end of the stream (a cut frame counts as the end)."""
    head = source.read(4)
    if len(head) < 4:
        return None
    size = int.from_bytes(head, "big")
    payload = source.read(size)
    return payload if len(payload) == size else None


class WriterProcess:
    """:class:`~telemetry_core.collector.sqlite_writer.SQLiteWriter` in a child process.

    Starting waits until the child has opened the file and set up the schema;
    :class:`StorageError` when it cannot."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self._args = [str(Path(path)), synchronous]
        self._proc: subprocess.Popen[bytes] | None = None
        self._start()

    @property
    def pid(self) -> int | None:
        """The child's process id (None between a death and the next call)."""
        return None if self._proc is None else self._proc.pid

    def commit(
        self, batches: Group, counters: Mapping[tuple[int, str], int]
    ) -> list[tuple[bool, ...]]:
        """See :meth:`SQLiteWriter.commit`."""
        reply = self._call(
            _Commit(
                [(list(events), received) for events, received in batches],
                [(hour, name, n) for (hour, name), n in counters.items()],
            )
        )
        return [tuple(flags) for flags in reply.inserted]

    def delete_before(self, before_ms: int, limit: int) -> int:
        """See :meth:`SQLiteWriter.delete_before`."""
        return self._call(_Delete(before_ms, limit)).deleted

    def close(self) -> None:
        """Let the child finish and exit (killed after :data:`CLOSE_WAIT` seconds)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            _write_frame(proc.stdin, _encode(_Stop()))
            proc.stdin.close()
            proc.wait(CLOSE_WAIT)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    # -- internals ----------------------------------------------------------------

    def _start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__, *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert proc.stdout is not None
        self._proc = proc
        first = _read_frame(proc.stdout)
        reply = None if first is None else _decode_reply(first)
        if not isinstance(reply, _Done):
            self._forget()
            message = reply.message if isinstance(reply, _Failed) else "the writer process ended"
            raise StorageError(message)

    def _call(self, request: _Commit | _Delete) -> _Done:
        if self._proc is None or self._proc.poll() is not None:
            self._forget()
            try:
                self._start()
            except (StorageError, OSError) as exc:
                raise WriterFailed(f"cannot start the writer process: {exc}") from exc
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            _write_frame(proc.stdin, _encode(request))
            frame = _read_frame(proc.stdout)
        except OSError:
            frame = None
        if frame is None:
            self._forget()
            raise WriterFailed("the writer process ended")
        reply: _Done | _Failed = _decode_reply(frame)
        if isinstance(reply, _Failed):
            raise WriterFailed(reply.message, internal=reply.kind == "internal")
        return reply

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


def _serve(path: str, synchronous: str, source: IO[bytes], out: IO[bytes]) -> int:
    """The child: open the file, answer requests until stdin ends or a stop."""
    from telemetry_core.collector.sqlite_writer import SQLiteWriter

    decode = msgspec.msgpack.Decoder(_Request).decode
    try:
        writer = SQLiteWriter(path, synchronous=synchronous)
    except StorageError as exc:
        _write_frame(out, _encode(_Failed("open", str(exc))))
        return 1
    _write_frame(out, _encode(_Done()))
    try:
        while (frame := _read_frame(source)) is not None:
            request = decode(frame)
            if isinstance(request, _Stop):
                break
            reply: _Done | _Failed
            try:
                if isinstance(request, _Commit):
                    counters = {(hour, name): n for hour, name, n in request.counters}
                    flags = writer.commit(request.batches, counters)
                    reply = _Done(inserted=[list(f) for f in flags])
                else:
                    reply = _Done(deleted=writer.delete_before(request.before_ms, request.limit))
            except sqlite3.Error as exc:
                reply = _Failed("sqlite", str(exc))
            except Exception:
                reply = _Failed("internal", traceback.format_exc())
            _write_frame(out, _encode(reply))
    finally:
        writer.close()
    return 0


def main(argv: list[str]) -> int:
    """``python -m telemetry_core.collector.sqlite_writer_process PATH SYNCHRONOUS``."""
    # The replies own the real stdout; anything printed goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    with out, os.fdopen(os.dup(0), "rb") as source:
        return _serve(argv[0], argv[1], source, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
