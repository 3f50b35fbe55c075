"""Thin adapters from the benchmarks to telemetry-core's documented API.

Every telemetry-core subject is built here, through the public names of
DESIGN.md (``TelemetryService``, ``TelemetryConfig``, the plugin host's typed
facade). A piece that is not importable yet raises :class:`Unavailable`, so a
benchmark still measures its baselines and reports ``n/a`` for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench._harness import Unavailable

#: The event every benchmark records: a typical CLI command event.
EVENT_TYPE = "command_executed"
EVENT_PROPERTIES: dict[str, Any] = {"command": "run", "exit_code": 0, "interactive": False}
EVENT_DURATION_MS = 12.5


def config(db_path: Path, **changes: Any) -> Any:
    """A consenting configuration on ``db_path``; remote submission off unless changed."""
    try:
        from telemetry_core import TelemetryConfig
    except ImportError as exc:
        raise Unavailable(f"telemetry_core: {exc}") from exc
    values: dict[str, Any] = {
        "app": "bench",
        "db_path": db_path,
        "enabled": True,
        "remote_enabled": False,
        "do_not_track": False,
        "submission_rate_limit": 10**9,
        "rate_limit_burst": 10**9,
        "max_queue_size": 10**8,
    }
    values.update(changes)
    return TelemetryConfig(**values)


def service(db_path: Path, **changes: Any) -> Any:
    """An opened ``TelemetryService`` (the caller closes it)."""
    try:
        from telemetry_core import TelemetryService
    except ImportError as exc:
        raise Unavailable(f"TelemetryService: {exc}") from exc
    if not hasattr(TelemetryService, "track"):
        raise Unavailable("TelemetryService.track not on main yet")
    try:
        svc = TelemetryService(config(db_path, **changes))
    except ImportError as exc:
        raise Unavailable(f"TelemetryService: {exc}") from exc
    enter = getattr(svc, "__enter__", None)
    if enter is not None:
        svc = enter()
    return svc


def close_service(svc: Any) -> None:
    """Close a service opened by :func:`service`."""
    exit_ = getattr(svc, "__exit__", None)
    if exit_ is not None:
        exit_(None, None, None)
    else:
        svc.close()


def track(svc: Any) -> object:
    """Record the benchmark event through the app-facing API."""
    return svc.track(EVENT_TYPE, EVENT_PROPERTIES, duration_ms=EVENT_DURATION_MS, success=True)


def plugin_host() -> Any:
    """A fresh :class:`PluginHost` with the bundled defaults registered."""
    try:
        from telemetry_core.plugin_host import PluginHost

        return PluginHost()
    except ImportError as exc:
        raise Unavailable(f"plugin host: {exc}") from exc


class Queue:
    """The ``sqlite`` storage plugin on its own, built through the plugin host."""

    def __init__(self, db_path: Path, **changes: Any) -> None:
        try:
            from telemetry_core.local_store import LocalStore
        except ImportError as exc:
            raise Unavailable(f"client queue: {exc}") from exc
        self.config = config(db_path, **changes)
        self.host = plugin_host()
        self.store = _open_local_store(LocalStore, self.config)
        self.backoff = self.host.make_backoff(self.config, random.Random(1), time.time)
        self.storage = self.host.make_storage(self.config, self.store, self.backoff, time.time)

    def record(self, n: int, chunk: int = 10_000) -> None:
        """Record and enqueue ``n`` fresh events, ``chunk`` per transaction (a fast fill:
        ``record`` joins the enclosing transaction of the local store)."""
        done = 0
        while done < n:
            step = min(chunk, n - done)
            with self.store.transaction():
                for _ in range(step):
                    self.storage.record(make_event(), enqueue=True)
            done += step

    def close(self) -> None:
        """Close the storage and the store."""
        self.storage.close()
        with contextlib.suppress(AttributeError):
            self.store.close()


def _open_local_store(cls: Any, cfg: Any) -> Any:
    for factory in ("open", "from_config"):
        if hasattr(cls, factory):
            try:
                return getattr(cls, factory)(cfg.db_path)
            except TypeError:
                return getattr(cls, factory)(cfg)
    return cls(cfg.db_path)


def make_event(install_id: str = "0" * 32) -> Any:
    """A valid schema-1 event with a fresh UUIDv7 id."""
    try:
        from telemetry_core.schema import Event, new_event_id
    except ImportError as exc:
        raise Unavailable(f"schema: {exc}") from exc
    return Event(
        id=new_event_id(),
        type=EVENT_TYPE,
        timestamp=int(time.time() * 1000),
        install_id=install_id,
        app="bench",
        duration_ms=EVENT_DURATION_MS,
        success=True,
        properties=dict(EVENT_PROPERTIES),
    )


def event_dicts(n: int) -> list[dict[str, Any]]:
    """``n`` fresh events as plain wire dictionaries."""
    import msgspec

    return [msgspec.to_builtins(make_event()) for _ in range(n)]


def time_ordered_id() -> str:
    """A UUIDv7-shaped id from the stdlib (ms timestamp, then random bits).

    The raw baselines key rows by it, as ours does with UUIDv7: a random UUIDv4 key
    would make the floor slower at depth than the thing it bounds.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | (((rand >> 62) & 0xFFF) << 64) | (0b10 << 62)
    return str(uuid.UUID(int=value | (rand & ((1 << 62) - 1))))


def raw_event_json() -> tuple[str, str]:
    """An (id, JSON payload) pair the raw baselines store, built with the stdlib only."""
    event_id = time_ordered_id()
    payload = json.dumps(
        {
            "id": event_id,
            "type": EVENT_TYPE,
            "timestamp": int(time.time() * 1000),
            "install_id": "0" * 32,
            "app": "bench",
            "duration_ms": EVENT_DURATION_MS,
            "success": True,
            "properties": EVENT_PROPERTIES,
        }
    )
    return event_id, payload


#: The benchmarks' PostgreSQL server (trust authentication, as in CI).
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


def pg_url(database: str) -> str:
    """The URL of ``database`` on the benchmarks' PostgreSQL server."""
    return f"{PG_SERVER}/{database}"


def create_pg_database(name: str, *, keep: bool = False) -> bool:
    """Create database ``name`` on the benchmarks' server, dropping an earlier one
    first unless ``keep``; True when ``keep`` found one (and left it as it was)."""
    import psycopg

    with psycopg.connect(pg_url("postgres"), autocommit=True, connect_timeout=2) as conn:
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        if keep and conn.execute(query, (name,)).fetchone():
            return True
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return False


def fresh_pg_database(name: str) -> str | None:
    """The URL of a new, empty database ``name``; None when no server answers."""
    try:
        create_pg_database(name)
    except Exception:
        return None
    return pg_url(name)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port() -> int:
    """A free loopback port for a server to listen on."""
    return closed_port()


@contextlib.contextmanager
def collector(
    workdir: Path,
    *,
    cert: Path,
    key: Path,
    api_key: str,
    database_url: str | None = None,
    timeout: float = 30.0,
    extra: Sequence[str] = (),
    module: str = "telemetry_core.collector",
    env_extra: Mapping[str, str] | None = None,
    pids: list[int] | None = None,
) -> Iterator[str]:
    """Run ``telemetry-collector serve`` on loopback with TLS; yield its base URL.

    ``extra`` adds arguments (``--workers 2``); ``module`` runs another entry
    point (bench/_http_stack.py picks the HTTP stack); ``pids`` receives the
    process id."""
    try:
        import telemetry_core.collector.cli  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"telemetry-collector: {exc}") from exc
    port = free_port()
    store = ["--database-url", database_url] if database_url else ["--db", str(workdir / "c.db")]
    env = dict(os.environ, TELEMETRY_COLLECTOR_ADMIN_TOKEN="bench-admin-token", **(env_extra or {}))
    cmd = [
        sys.executable,
        "-m",
        module,
        "serve",
        *store,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        api_key,
        "--admin-token",
        "bench-admin-token",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        # The benchmark measures throughput, not the per-key throttle.
        "--rate-limit",
        str(10**9),
        "--rate-burst",
        str(10**9),
        "--max-pending-events",
        str(10**6),
        "--log-level",
        "warning",
        *extra,
    ]
    log = (workdir / f"collector-{port}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if pids is not None:
        pids.append(proc.pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise Unavailable(f"collector exited with {proc.returncode}; see {log.name}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise Unavailable("collector did not start in time")
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def post_batches(
    pools: Sequence[Any],
    work: Sequence[Sequence[bytes]],
    headers: Mapping[str, str],
    timeout: float,
) -> tuple[int, list[str]]:
    """POST each pool's bodies to ``/v1/submit``, one thread per pool (a client with
    its own keep-alive connection), one request after the other's answer; return
    the nanoseconds until every thread ended and the answers that were not 200."""
    errors: list[str] = []

    def client(pool: Any, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            r = pool.request("POST", "/v1/submit", body=body, headers=headers)
            if r.status != 200:
                errors.append(f"{r.status} {r.data[:200]!r}")
                return

    threads = [
        threading.Thread(target=client, args=(p, w)) for p, w in zip(pools, work, strict=True)
    ]
    t0 = time.perf_counter_ns()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return time.perf_counter_ns() - t0, errors
