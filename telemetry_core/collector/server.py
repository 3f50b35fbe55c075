"""Running the collector: open its store, build the app, serve it with uvicorn
until SIGINT/SIGTERM. ``telemetry-collector serve`` is a thin shell over
:func:`serve`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from telemetry_core.collector.options import ServeSettings, StoreSettings
from telemetry_core.collector.store import CollectorStore
from telemetry_core.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    import uvicorn

    from telemetry_core.collector.metrics import CollectorMetrics

__all__ = [
    "LOG_FORMAT",
    "METRICS_ADDRESS",
    "connection_backstop",
    "log_summary",
    "open_store",
    "serve",
    "start_metrics_server",
]

log = logging.getLogger("telemetry_core.collector")

#: The only address the credential-free metrics port listens on.
METRICS_ADDRESS = "127.0.0.1"

#: The collector's log lines: logfmt-like, one line per record.
LOG_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"


def open_store(location: StoreSettings, **options: Any) -> CollectorStore:
    """Open the store ``location`` names (``options`` go to its constructor)."""
    if location.database_url is not None:
        from telemetry_core.collector.postgres_store import PostgresStore

        if location.pool_max is not None:
            options["pool_max"] = location.pool_max
        return PostgresStore(location.database_url, **options)
    from telemetry_core.collector.sqlite_store import SQLiteStore

    assert location.db is not None
    # The server's store writes in a process of its own (see sqlite_store); its
    # pipe is waited on with select(), which takes pipes on POSIX only.
    return SQLiteStore(location.db, writer_process=os.name == "posix", **options)


def connection_backstop(max_connections: int) -> int:
    """uvicorn's hard cap on open connections, above the app's cap on requests.

    Idle keep-alive connections count towards it, so it leaves room for them
    above ``--max-connections``.
    """
    return 2 * max_connections + 64


def serve(settings: ServeSettings) -> int:
    """Open the store, serve the app until SIGINT/SIGTERM; return the exit status.

    Raises :class:`~telemetry_core.errors.StorageError` when the store cannot be opened.
    """
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    log_summary(settings)
    if settings.workers > 1:
        return _serve_workers(settings)
    return _serve_one(settings)


def _serve_one(settings: ServeSettings, sock: socket.socket | None = None) -> int:
    """Serve in this process (on ``sock`` when a supervisor bound it)."""
    from telemetry_core.collector.app import create_app

    app_settings = settings.collector
    store = open_store(settings.store, max_pending_events=app_settings.max_pending_events)
    if app_settings.identity_secret is None:
        from telemetry_core.collector.identity import persisted_secret

        secret = persisted_secret(
            db_path=settings.store.db, database_url=settings.store.database_url
        )
        app_settings = attrs.evolve(app_settings, identity_secret=secret)
    app = create_app(app_settings, store)
    metrics_server = None
    if settings.metrics_port is not None:
        try:
            metrics_server = start_metrics_server(
                app.state.collector.metrics, settings.metrics_port
            )
        except OSError as exc:
            asyncio.run(store.close())
            raise ConfigError(
                "metrics_port",
                f"cannot listen on {METRICS_ADDRESS}:{settings.metrics_port}: {exc.strerror}",
            ) from None
    try:
        return _serve_until_signal(_uvicorn_config(settings, app), sock)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


def log_summary(settings: ServeSettings) -> None:
    """Log what the collector runs with in one line (secrets masked), and warn
    when no admin token is set (stats, dashboard and /metrics then refuse all)."""
    log.info("collector configuration %s", settings.summary())
    if settings.collector.admin_token is None:
        log.warning(
            "no admin token is set: /v1/stats, the dashboard and /metrics refuse every request "
            "(set --admin-token-file or TELEMETRY_COLLECTOR_ADMIN_TOKEN)"
        )


def start_metrics_server(metrics: CollectorMetrics, port: int) -> WSGIServer:
    """Serve ``metrics`` without credentials on 127.0.0.1:``port`` (0 picks a
    free port), on a daemon thread; loopback only, for a local scraper."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=METRICS_ADDRESS, registry=metrics.registry)
    bound = server.server_address[1]
    log.info("metrics served without credentials on http://%s:%d/metrics", METRICS_ADDRESS, bound)
    return server


def _uvicorn_config(settings: ServeSettings, app: Any) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_level=settings.log_level,
        # uvloop when installed (uvicorn[standard]), else asyncio's own loop.
        loop="auto",
        # h11, not httptools: its bound on the request line and headers
        # (h11_max_incomplete_event_size below) is what docs/operations.md promises,
        # and uvicorn's httptools protocol has none. Measured (bench/collector_scale.py):
        # httptools saves about a tenth of the collector's CPU per event at batches
        # of 100; not worth unbounded header buffering (docs/performance.md).
        http="h11",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
        # The app answers past max_connections itself (JSON 503 + Retry-After);
        # uvicorn's own bare 503 is only a backstop on open connections.
        limit_concurrency=connection_backstop(settings.collector.max_concurrent_requests),
        timeout_keep_alive=settings.keep_alive_timeout,
        # A request line plus headers larger than this is refused (uvicorn's default).
        h11_max_incomplete_event_size=16 * 1024,
    )


def _serve_workers(settings: ServeSettings) -> int:
    """Serve with ``settings.workers`` processes sharing one listening socket.

    The store is opened once here first, so a database that cannot be used
    stops the start at once and the schema is created before the workers
    race for it. Each worker is a fresh interpreter (``spawn``) with its own
    store, pool, limiters and metrics. SIGINT/SIGTERM are passed on to every
    worker, which finishes its in-flight batches; a worker that ends on its own
    stops the others. The status is 0 when every worker stopped cleanly.
    """
    import multiprocessing

    asyncio.run(open_store(settings.store).close())
    sock = _bind(settings.host, settings.port)
    log.info(
        "collector supervisor pid=%d workers=%d listening on %s:%d",
        os.getpid(),
        settings.workers,
        settings.host,
        sock.getsockname()[1],
    )
    context = multiprocessing.get_context("spawn")
    workers = _Workers(
        [
            context.Process(target=_worker, args=(settings, sock), name=f"collector-worker-{n}")
            for n in range(settings.workers)
        ]
    )
    previous = {sig: signal.signal(sig, workers.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        workers.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    codes = [process.exitcode for process in workers.processes]
    log.info("collector workers stopped exit_codes=%s", codes)
    return 0 if not workers.failed and all(code == 0 for code in codes) else 1


class _Workers:
    """The worker processes of a supervisor: started together, stopped together."""

    def __init__(self, processes: list[Any]) -> None:
        self.processes = processes
        #: True once a worker ended without being asked to.
        self.failed = False
        self._stopping = False

    def stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        """Ask every running worker to finish (SIGTERM); a signal handler."""
        self._stopping = True
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> None:
        """Start the workers and wait until all have ended; the first to end
        unasked stops the others."""
        for process in self.processes:
            process.start()
        while any(process.is_alive() for process in self.processes):
            for process in self.processes:
                process.join(timeout=0.2)
                if process.exitcode is not None and not self._stopping:
                    log.error(
                        "collector worker %s ended on its own exit_code=%s; stopping the others",
                        process.name,
                        process.exitcode,
                    )
                    self.failed = True
                    self.stop()


def _worker(settings: ServeSettings, sock: socket.socket) -> None:
    """One worker process: serve on the supervisor's socket until SIGTERM."""
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    sys.exit(_serve_one(settings, sock))


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (IPv6 when ``host`` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve_until_signal(config: uvicorn.Config, sock: socket.socket | None = None) -> int:
    """Run uvicorn until SIGINT/SIGTERM; return 0 after a graceful shutdown.

    uvicorn's own signal handling re-raises the captured signal once shutdown is
    complete, so a clean stop would end with status 143 and process managers
    would report a failure. This server installs the same handlers and keeps the
    signal. A second SIGINT forces an exit without waiting (status 1): in-flight
    batches may then be cut off, and their clients resend them.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    server = _Server(config)
    server.run(sockets=None if sock is None else [sock])
    if server.force_exit:
        log.warning("collector forced to exit before in-flight requests finished")
        return 1
    return 0
