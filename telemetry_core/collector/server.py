"""Running the collector: open its store, build the app, serve it with uvicorn
until SIGINT/SIGTERM. ``telemetry-collector serve`` is a thin shell over
:func:`serve`."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from telemetry_core.collector.options import ServeSettings, StoreSettings
from telemetry_core.collector.store import CollectorStore

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
    return SQLiteStore(location.db, **options)


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
    from telemetry_core.collector.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    log_summary(settings)
    app_settings = settings.collector
    store = open_store(settings.store, max_pending_events=app_settings.max_pending_events)
    app = create_app(app_settings, store)
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server = start_metrics_server(app.state.collector.metrics, settings.metrics_port)
    try:
        return _serve_until_signal(_uvicorn_config(settings, app))
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


def _serve_until_signal(config: uvicorn.Config) -> int:
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
    server.run()
    if server.force_exit:
        log.warning("collector forced to exit before in-flight requests finished")
        return 1
    return 0
