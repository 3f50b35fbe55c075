"""The local SQLite database: connections, the core's tables and their migrations.

:class:`LocalStore` owns one SQLite file in WAL mode. It hands out one
connection per thread, drops inherited connections in a forked child, migrates
the core's schema forward (one transaction per step, safe when several
processes open a new file at once), and offers the small tables the rest of the
client needs: stored configuration, the anonymous install id, the submission log
and named counters.

A storage plugin gets the store as its
:class:`~telemetry_core.protocols.SQLiteDatabase` handle through the
``telemetry_make_storage`` hook and may keep tables of its own in the file,
versioned with :meth:`LocalStore.migrate_part`: the event table and the queue
are the ``sqlite`` storage plugin's (``telemetry_core_plugins.sqlite_storage``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from telemetry_core._write_behind import remove_spill_files
from telemetry_core.errors import StorageError
from telemetry_core.models import Clock

__all__ = [
    "CACHE_SIZE_KIB",
    "DEFAULT_BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SUBMISSION_LOG_LIMIT",
    "LocalStore",
    "foreign_reason",
    "purge_files",
]

#: How long a connection waits for another writer before failing, in milliseconds.
DEFAULT_BUSY_TIMEOUT_MS: Final = 5000
#: SQLite page cache per connection, in KiB (SQLite's default is 2000 KiB). Each
#: thread has its own connection and the queue's hot pages (the b-tree roots and
#: the newest leaves) are few; the OS page cache holds the rest of the file.
CACHE_SIZE_KIB: Final = 256
#: The submission log keeps at most this many rows (the newest).
SUBMISSION_LOG_LIMIT: Final = 10_000
#: Config key of the anonymous install id.
_INSTALL_ID_KEY: Final = "install-id"
#: The tables that tell a telemetry database (at ``user_version`` 1 or more):
#: the configuration (migration 2), or the event table of a version-1 file.
_OUR_TABLES: Final = frozenset({"telemetry_config", "telemetry_events"})

#: Forward-only schema migrations of the core's own tables; migration ``n``
#: (1-based) brings the file to ``PRAGMA user_version = n``. Never edit a
#: released step, append a new one. Up to version 6 the same numbering also made
#: the event and queue tables; they now belong to the ``sqlite`` storage plugin,
#: which keeps its own version (:meth:`LocalStore.migrate_part`), so steps 1, 5
#: and 6 are empty here and step 3 makes only the counters.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: (the event table: now the sqlite storage plugin's step 1).
    (),
    # 2: stored configuration (read by config.read_stored_config).
    (
        """CREATE TABLE telemetry_config (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
    ),
    # 3: named counters (the queue made by the same step before is now the
    # sqlite storage plugin's step 2; that plugin keeps ``queue.holes`` here).
    (
        """CREATE TABLE telemetry_counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    # 4: the submission log.
    (
        """CREATE TABLE telemetry_submissions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at REAL NOT NULL,
            latency_ms REAL NOT NULL,
            batch_size INTEGER NOT NULL,
            accepted INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0,
            duplicates INTEGER NOT NULL DEFAULT 0,
            status INTEGER,
            error TEXT,
            retry INTEGER NOT NULL DEFAULT 0,
            network_error INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    # 5, 6: (the queue's delivery-policy columns and one write per event: now
    # the sqlite storage plugin's steps 3 and 4).
    (),
    (),
)

#: The schema version this code writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

_INCREMENT_SQL: Final = (
    "INSERT INTO telemetry_counters(name, value) VALUES (?, ?) "
    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
)
#: The schema version of each part (a storage plugin) that keeps tables in
#: this file. It is made by the first part that records a version, not by a
#: core migration, so the core stays at version 6 and a file this code opened
#: still opens with the release before it (which ignores this table). A file
#: made before it holds the sqlite storage's tables with no version recorded;
#: that plugin tells its version from the tables (``adopt``).
_PART_VERSIONS_TABLE: Final = """CREATE TABLE IF NOT EXISTS telemetry_part_versions (
    part TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID"""
_HAS_PART_VERSIONS_SQL: Final = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'telemetry_part_versions'"
)
_PART_VERSION_SQL: Final = "SELECT version FROM telemetry_part_versions WHERE part = ?"
_SET_PART_VERSION_SQL: Final = (
    "INSERT INTO telemetry_part_versions(part, version) VALUES (?, ?)"
    " ON CONFLICT(part) DO UPDATE SET version = excluded.version"
)
_LOG_SQL: Final = (
    "INSERT INTO telemetry_submissions(started_at, latency_ms, batch_size, accepted, rejected,"
    " duplicates, status, error, retry, network_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_live_stores: weakref.WeakSet[LocalStore] = weakref.WeakSet()
# Connections inherited over fork() are never closed in the child: closing
# could checkpoint or unlink the parent's WAL. They are parked here instead.
_inherited: list[object] = []


def _after_fork_in_child() -> None:
    for store in list(_live_stores):
        store._forget_connections()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Holder:
    """A weak-referenceable box for one thread's connection (sqlite3.Connection
    is not), so that a dead thread's connection is freed with its locals."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class _Transaction:
    """The context manager behind :meth:`LocalStore.transaction` (a plain class:
    it sits on every record's path, where a generator-based one costs more)."""

    __slots__ = ("conn", "outer", "store")

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        conn = self.conn = self.store.connection()
        if conn.in_transaction:
            return conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"telemetry database {self.store.path}: {exc}") from exc
        self.outer = True
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.outer:
            return
        conn = self.conn
        if exc is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"telemetry database {self.store.path}: {exc}") from exc
            return
        try:
            conn.commit()
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            raise StorageError(f"telemetry database {self.store.path}: {error}") from error


class LocalStore:
    """The client's SQLite database at ``path``.

    Opening creates the file (and its parent directories, mode 0700), switches
    it to WAL mode and applies pending migrations; any failure (not a database,
    corrupt, unwritable, written by a newer version) raises
    :class:`~telemetry_core.errors.StorageError` naming the file. ``clock`` dates
    config updates and log rows. ``busy_timeout_ms`` is how long a statement
    waits for another writer.

    Each thread gets its own connection (:meth:`connection`); after
    ``os.fork()`` the child opens fresh ones. :meth:`close` closes every
    connection of this process; the store reopens lazily if used again.
    :meth:`purge` deletes the files and ends the store.

    With ``read_only`` the file must already exist: it is opened with SQLite's
    ``mode=ro`` and never created, migrated or switched to WAL; a file whose
    schema version is not :data:`SCHEMA_VERSION` (not a telemetry database,
    or one of another version) raises :class:`~telemetry_core.errors.StorageError`.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        clock: Clock = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self.clock = clock
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._purged = False
        try:
            if read_only:
                if not self.path.is_file():
                    raise FileNotFoundError(f"no such file: {self.path}")
            else:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not read_only and not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise StorageError(f"cannot create telemetry database {self.path}: {exc}") from exc
        _live_stores.add(self)
        try:
            if read_only:
                self._check_version()
            else:
                self._migrate()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"

    # -- connections -------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (autocommit mode:
        use :meth:`transaction` to group statements)."""
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is not None:
            return holder.conn
        if self._purged:
            raise StorageError(f"telemetry database {self.path} was purged")
        target: str | Path = self.path
        if self.read_only:
            target = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(
                target,
                uri=self.read_only,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open telemetry database {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = {-CACHE_SIZE_KIB}")
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot open telemetry database {self.path}: {exc}") from exc
        holder = _Holder(conn)
        self._local.holder = holder
        with self._lock:
            self._holders.add(holder)
        return conn

    def transaction(self) -> _Transaction:
        """Run the block in one write transaction (``BEGIN IMMEDIATE``).

        Commits on success, rolls back on any exception. Nested use joins the
        outer transaction. SQLite errors surface as
        :class:`~telemetry_core.errors.StorageError`.
        """
        return _Transaction(self)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one read transaction, so that several queries see
        the same state without taking the write lock."""
        conn = self.connection()
        if conn.in_transaction:
            yield conn
            return
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.commit()
        except sqlite3.Error as exc:
            raise StorageError(f"telemetry database {self.path}: {exc}") from exc

    def read(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        """The rows of one statement on this thread's connection (SQLite errors
        raised as :class:`StorageError`)."""
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"telemetry database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close every connection this process opened on the file."""
        with self._lock:
            holders = list(self._holders)
            self._holders = weakref.WeakSet()
            self._local = threading.local()
        for holder in holders:
            with contextlib.suppress(sqlite3.Error):
                holder.conn.close()

    def purge(self) -> None:
        """Close the store and delete the database with its ``-wal``, ``-shm`` and
        ``-journal`` files and its write-behind spill files. The store cannot be used afterwards."""
        self._purged = True
        self.close()
        purge_files(self.path)

    def _forget_connections(self) -> None:
        """In a forked child: park the parent's connections and start afresh."""
        _inherited.append(list(self._holders))
        self._lock = threading.Lock()
        self._local = threading.local()
        self._holders = weakref.WeakSet()

    # -- migrations --------------------------------------------------------

    def _migrate(self) -> None:
        conn = self.connection()
        try:
            # Before anything writes (even the switch to WAL): a file that is
            # not ours is refused, never migrated, purged or changed.
            self._check_ours(conn)
            self._enable_wal(conn)
            what = f"telemetry database {self.path}"
            _step_forward(conn, MIGRATIONS, _user_version, _set_user_version, what=what)
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot use telemetry database {self.path} ({exc}); "
                "if the file is corrupt, delete it or run `telemetry disable --purge`"
            ) from exc

    def migrate_part(
        self,
        part: str,
        steps: Sequence[Sequence[str]],
        adopt: Callable[[sqlite3.Connection], int] | None = None,
    ) -> int:
        """Bring the tables a plugin keeps in this file to version ``len(steps)``
        (see :meth:`telemetry_core.protocols.SQLiteDatabase.migrate_part`): the
        same machinery as the core's own migrations, with the version recorded
        under ``part`` in ``telemetry_part_versions``. A read-only store returns
        the version it finds and changes nothing."""

        def recorded(conn: sqlite3.Connection) -> int | None:
            if conn.execute(_HAS_PART_VERSIONS_SQL).fetchone() is None:
                return None
            row = conn.execute(_PART_VERSION_SQL, (part,)).fetchone()
            return None if row is None else int(row[0])

        def record(conn: sqlite3.Connection, version: int) -> None:
            conn.execute(_PART_VERSIONS_TABLE)
            conn.execute(_SET_PART_VERSION_SQL, (part, version))

        what = f"the {part} tables of telemetry database {self.path}"
        try:
            conn = self.connection()
            if self.read_only:
                found = recorded(conn)
                return found if found is not None else adopt(conn) if adopt else 0
            _step_forward(conn, steps, recorded, record, what=what, adopt=adopt)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot use {what}: {exc}") from exc
        return len(steps)

    def _check_ours(self, conn: sqlite3.Connection) -> None:
        """Refuse a file another program made (see :func:`foreign_reason`)."""
        reason = _foreign_reason(self.path, conn)
        if reason is not None:
            raise StorageError(reason)

    def _check_version(self) -> None:
        """For a read-only store: refuse a file this code would have to migrate."""
        try:
            conn = self.connection()
            version = _user_version(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read telemetry database {self.path}: {exc}") from exc
        if version == 0:
            raise StorageError(f"{self.path} is not a telemetry database; it was left unchanged")
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"telemetry database {self.path} has schema version {version}, this "
                f"telemetry-core reads version {SCHEMA_VERSION}; it was left unchanged"
            )

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a brand-new file to WAL needs an exclusive lock; while
        # another process is doing the same, SQLite may answer "locked" or keep
        # the old mode without consulting the busy handler, so retry, bounded.
        deadline = time.monotonic() + max(self.busy_timeout_ms / 1000, 1.0)
        for attempt in range(1, 1000):
            try:
                row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                row = None
            if row is not None and str(row[0]).lower() == "wal":
                return
            if time.monotonic() > deadline:
                break
            time.sleep(min(0.005 * attempt, 0.1))
        raise StorageError(f"telemetry database {self.path}: cannot switch to WAL mode")

    def schema_version(self) -> int:
        """The file's ``PRAGMA user_version``."""
        return int(self.read("PRAGMA user_version")[0][0])

    # -- configuration -----------------------------------------------------

    def get_config(self, key: str) -> str | None:
        """The stored value of ``key``, or ``None``."""
        rows = self.read("SELECT value FROM telemetry_config WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_config(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any previous value)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO telemetry_config(key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (key, value, int(self.clock() * 1000)),
            )

    def delete_config(self, key: str) -> None:
        """Remove ``key`` from the stored configuration (no error if absent)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM telemetry_config WHERE key = ?", (key,))

    def list_config(self) -> dict[str, str]:
        """Every stored key and value."""
        rows = self.read("SELECT key, value FROM telemetry_config ORDER BY key")
        return {str(k): str(v) for k, v in rows}

    def install_id(self) -> str:
        """The anonymous install id: 32 random hex digits, created once per
        database (never derived from the machine) and stable afterwards."""
        existing = self.get_config(_INSTALL_ID_KEY)
        if existing:
            return existing
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO telemetry_config(key, value, updated_at) VALUES (?, ?, ?)",
                (_INSTALL_ID_KEY, uuid.uuid4().hex, int(self.clock() * 1000)),
            )
            row = conn.execute(
                "SELECT value FROM telemetry_config WHERE key = ?", (_INSTALL_ID_KEY,)
            ).fetchone()
        return str(row[0])

    # -- counters ----------------------------------------------------------

    def increment_counter(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (created at zero); joins the
        current transaction if there is one. Counters named ``dropped.<reason>``
        show up in the queue's ``QueueStats.dropped`` under ``<reason>``."""
        if n == 0:
            return
        with self.transaction() as conn:
            conn.execute(_INCREMENT_SQL, (name, n))

    def counters(self) -> dict[str, int]:
        """Every counter by name (``queue.holes``, ``dropped.queue_full``, ...)."""
        rows = self.read("SELECT name, value FROM telemetry_counters ORDER BY name")
        return {str(k): int(v) for k, v in rows}

    # -- submission log ----------------------------------------------------

    def log_submission(
        self,
        *,
        started_at: float,
        latency_ms: float,
        batch_size: int,
        accepted: int = 0,
        rejected: int = 0,
        duplicates: int = 0,
        status: int | None = None,
        error: str | None = None,
        retry: bool = False,
        network_error: bool = False,
    ) -> None:
        """Append one submission attempt to the log (keeping the newest
        :data:`SUBMISSION_LOG_LIMIT` rows) and add it to the lifetime totals.

        A request counts as successful when ``status`` is 2xx. ``retry`` marks
        a batch that was tried before; ``network_error`` one that got no answer.
        """
        ok = status is not None and 200 <= status < 300
        totals = (
            ("submissions.total", 1),
            ("submissions.successful", int(ok)),
            ("submissions.failed", int(not ok)),
            ("submissions.retries", int(retry)),
            ("submissions.network_errors", int(network_error)),
            ("events.sent", batch_size),
            ("events.accepted", accepted),
            ("events.rejected", rejected),
            ("events.duplicate", duplicates),
        )
        with self.transaction() as conn:
            cursor = conn.execute(
                _LOG_SQL,
                (
                    started_at,
                    latency_ms,
                    batch_size,
                    accepted,
                    rejected,
                    duplicates,
                    status,
                    error,
                    int(retry),
                    int(network_error),
                ),
            )
            last = cursor.lastrowid or 0
            conn.execute(
                "DELETE FROM telemetry_submissions WHERE id <= ?", (last - SUBMISSION_LOG_LIMIT,)
            )
            conn.executemany(_INCREMENT_SQL, [t for t in totals if t[1]])


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _set_user_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(f"PRAGMA user_version = {int(version)}")


def _step_forward(
    conn: sqlite3.Connection,
    steps: Sequence[Sequence[str]],
    read: Callable[[sqlite3.Connection], int | None],
    write: Callable[[sqlite3.Connection, int], None],
    *,
    what: str,
    adopt: Callable[[sqlite3.Connection], int] | None = None,
) -> None:
    """Apply the ``steps`` past the version ``read`` finds (None: none recorded,
    ``adopt`` tells it, else 0), one transaction per step that ``write``s the
    new version; safe when several processes open a new file at once."""
    target = len(steps)
    # The common case, a file already at this version, needs no write lock:
    # one read of the version.
    if read(conn) == target:
        return
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = read(conn)
            version = found if found is not None else adopt(conn) if adopt else 0
            if version > target:
                raise StorageError(
                    f"{what} has schema version {version}, newer than this "
                    f"telemetry-core ({target}); upgrade telemetry-core or use another file"
                )
            if version < target:
                for statement in steps[version]:
                    conn.execute(statement)
                version += 1
            if version != found:
                write(conn, version)
            conn.commit()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            raise
        if version == target:
            return


def _foreign_reason(path: Path, conn: sqlite3.Connection) -> str | None:
    try:
        names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        return (
            f"{path} is not a telemetry database ({exc}); it was left unchanged. "
            "Choose another file with --db, or delete this one if it is yours"
        )
    if names and not (version >= 1 and names & _OUR_TABLES):
        return (
            f"{path} is not a telemetry database (it holds other tables: "
            f"{', '.join(sorted(names)[:3])}); it was left unchanged"
        )
    return None


def foreign_reason(path: Path) -> str | None:
    """Why ``path`` is not a telemetry database, or None when it is one, is empty
    or does not exist. Reads only (SQLite ``mode=ro``): the file is never changed.

    A telemetry database holds the core's configuration table (migration 2) or,
    made by a version-1 release, the event table (``telemetry_events``), at
    ``user_version`` 1 or more; anything else (another program's tables, a file
    that is not SQLite) is refused by every command.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error as exc:
        return f"cannot read {path}: {exc}; it was left unchanged"
    try:
        return _foreign_reason(path, conn)
    finally:
        conn.close()


def purge_files(path: Path) -> None:
    """Delete a telemetry database, its ``-wal``, ``-shm`` and ``-journal`` files
    and its write-behind spill files."""
    remove_spill_files(path)
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}{suffix}: {exc}") from exc
