"""``telemetry-collector``: run the collector (``serve``) or read its aggregates (``stats``).

Secrets can come from options, environment variables or files, so they need not
appear in process listings: ``TELEMETRY_COLLECTOR_API_KEYS`` (comma-separated) or
``--api-keys-file``; ``TELEMETRY_COLLECTOR_ADMIN_TOKEN`` or ``--admin-token-file``;
``TELEMETRY_COLLECTOR_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
from click.core import ParameterSource

from telemetry_core._version import __version__
from telemetry_core.collector.store import CollectorStore
from telemetry_core.errors import TelemetryError

if TYPE_CHECKING:
    import uvicorn

__all__ = ["main"]

log = logging.getLogger("telemetry_core.collector")

_LOG_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"


def _read_secret_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.UsageError(f"cannot read {path}: {exc.strerror}") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _explicit_store(db: str | None, database_url: str | None) -> tuple[str | None, str | None]:
    """An explicit ``--db`` wins over ``TELEMETRY_COLLECTOR_DATABASE_URL`` in the environment."""
    context = click.get_current_context()
    from_env = context.get_parameter_source("database_url") is ParameterSource.ENVIRONMENT
    if db is not None and from_env:
        return db, None
    return db, database_url


def _store_options(command: Callable[..., None]) -> Callable[..., None]:
    """The ``--db PATH`` / ``--database-url URL`` pair that names a collector store."""
    command = click.option(
        "--database-url",
        envvar="TELEMETRY_COLLECTOR_DATABASE_URL",
        help="PostgreSQL URL (scale-out).",
    )(command)
    return click.option(
        "--db", type=click.Path(dir_okay=False), help="SQLite database file (embedded)."
    )(command)


def _open_store(db: str | None, database_url: str | None, **options: Any) -> CollectorStore:
    if (db is None) == (database_url is None):
        raise click.UsageError("give exactly one of --db PATH or --database-url URL")
    if database_url is not None:
        from telemetry_core.collector.postgres_store import PostgresStore

        return PostgresStore(database_url, **options)
    from telemetry_core.collector.sqlite_store import SQLiteStore

    assert db is not None
    return SQLiteStore(db, **options)


def _connection_backstop(max_connections: int) -> int:
    """uvicorn's hard cap on open connections, above the app's cap on requests.

    Idle keep-alive connections count towards it, so it leaves room for them
    above ``--max-connections``.
    """
    return 2 * max_connections + 64


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


@click.group()
@click.version_option(__version__, prog_name="telemetry-collector")
def main() -> None:
    """The telemetry-core collector."""


@main.command()
@_store_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", "api_keys", multiple=True, help="A submission key (repeatable).")
@click.option("--api-keys-file", type=click.Path(dir_okay=False), help="File of keys, one a line.")
@click.option("--admin-token", envvar="TELEMETRY_COLLECTOR_ADMIN_TOKEN", help="Admin token.")
@click.option("--admin-token-file", type=click.Path(dir_okay=False), help="File with the token.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option("--retention-days", default=90, show_default=True, type=click.IntRange(1))
@click.option(
    "--rate-limit",
    default=60_000,
    show_default=True,
    type=click.IntRange(1),
    help="Events per minute per key.",
)
@click.option("--rate-burst", default=10_000, show_default=True, type=click.IntRange(1))
@click.option("--max-pending-events", default=50_000, show_default=True, type=click.IntRange(1))
@click.option(
    "--max-inflight-mb",
    type=click.IntRange(1),
    help="Request-body bytes (compressed + inflated) all requests may hold together, in MiB "
    "(default: max-pending-events x 16 KiB, at most 256 MiB).",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to receive one request body (408 past it).",
)
@click.option(
    "--max-connections",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Requests in progress; past it new ones get 503 overloaded with Retry-After "
    "(open connections are capped at twice this plus 64).",
)
@click.option(
    "--keep-alive-timeout",
    default=5,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds an idle keep-alive connection stays open.",
)
@click.option(
    "--secure-cookies",
    is_flag=True,
    help="Mark the dashboard cookie Secure without --tls-cert (TLS ends at a proxy).",
)
@click.option(
    "--pool-max",
    type=click.IntRange(1),
    help="PostgreSQL connection pool size per process (default 10; --database-url only).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(  # noqa: PLR0917
    db: str | None,
    database_url: str | None,
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    api_keys_file: str | None,
    admin_token: str | None,
    admin_token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    retention_days: int,
    rate_limit: int,
    rate_burst: int,
    max_pending_events: int,
    max_inflight_mb: int | None,
    body_timeout: float,
    max_connections: int,
    keep_alive_timeout: int,
    secure_cookies: bool,
    pool_max: int | None,
    log_level: str,
) -> None:
    """Run the collector until SIGINT/SIGTERM (in-flight batches finish and commit)."""
    import os

    import uvicorn

    from telemetry_core.collector.app import create_app
    from telemetry_core.collector.settings import CollectorSettings

    keys = list(api_keys)
    env_keys = os.environ.get("TELEMETRY_COLLECTOR_API_KEYS", "")
    keys += [k.strip() for k in env_keys.split(",") if k.strip()]
    if api_keys_file:
        keys += _read_secret_file(api_keys_file)
    if not keys:
        raise click.UsageError(
            "no submission keys: use --api-key, --api-keys-file or TELEMETRY_COLLECTOR_API_KEYS"
        )
    db, database_url = _explicit_store(db, database_url)
    if admin_token_file:
        lines = _read_secret_file(admin_token_file)
        if not lines:
            raise click.UsageError(f"--admin-token-file {admin_token_file} holds no token")
        admin_token = lines[0]
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    store_options: dict[str, Any] = {"max_pending_events": max_pending_events}
    if pool_max is not None:
        if database_url is None:
            raise click.UsageError("--pool-max applies to --database-url (PostgreSQL) only")
        store_options["pool_max"] = pool_max
    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT, stream=sys.stderr)
    try:
        settings = CollectorSettings(
            api_keys=tuple(dict.fromkeys(keys)),
            admin_token=admin_token,
            retention_days=retention_days,
            rate_limit_per_minute=rate_limit,
            rate_limit_burst=rate_burst,
            max_pending_events=max_pending_events,
            tls=tls_cert is not None,
            secure_cookies=secure_cookies,
            body_timeout_s=body_timeout,
            max_inflight_bytes=None if max_inflight_mb is None else max_inflight_mb * 1024 * 1024,
            max_concurrent_requests=max_connections,
        )
        store = _open_store(db, database_url, **store_options)
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from exc
    app = create_app(settings, store)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
        # The app answers past max_connections itself (JSON 503 + Retry-After);
        # uvicorn's own bare 503 is only a backstop on open connections.
        limit_concurrency=_connection_backstop(max_connections),
        timeout_keep_alive=keep_alive_timeout,
        # A request line plus headers larger than this is refused (uvicorn's default).
        h11_max_incomplete_event_size=16 * 1024,
    )
    sys.exit(_serve_until_signal(config))


def _format_ms(value: int) -> str:
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_stats_table(stats: dict[str, Any]) -> str:
    """Render a stats document as a plain-text table with a totals footer."""
    header = (
        "bucket (UTC)",
        "app",
        "type",
        "count",
        "ok",
        "fail",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "installs",
    )
    rows = [header]
    for s in stats["series"]:
        rows.append(
            (
                _format_ms(s["bucket_start"]),
                s["app"],
                s["type"],
                str(s["count"]),
                str(s["success"]),
                str(s["failure"]),
                _num(s["p50_ms"]),
                _num(s["p95_ms"]),
                _num(s["p99_ms"]),
                str(s["installs"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    t = stats["totals"]
    by_code = ", ".join(f"{c}={n}" for c, n in t["rejected_by_code"].items())
    lines.append("")
    lines.append(
        f"total events {t['count']}  installs {t['installs']}  duplicates {t['duplicates']}  "
        f"rejected {t['rejected']}{f' ({by_code})' if by_code else ''}  throttled {t['throttled']}"
    )
    return "\n".join(lines)


@main.command()
@_store_options
@click.option("--from", "from_", help="Start (ms since epoch or ISO-8601; naive means UTC).")
@click.option("--to", help="End, exclusive (ms or ISO-8601).")
@click.option("--app", help="Only this app.")
@click.option("--type", "event_type", help="Only this event type.")
@click.option("--bucket", type=click.Choice(["hour", "day"]), default="hour", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the /v1/stats JSON document.")
def stats(  # noqa: PLR0917
    db: str | None,
    database_url: str | None,
    from_: str | None,
    to: str | None,
    app: str | None,
    event_type: str | None,
    bucket: str,
    as_json: bool,
) -> None:
    """Print the collector's aggregates, read directly from its store."""
    from telemetry_core.collector.ingest import IngestError
    from telemetry_core.collector.stats_query import parse_stats_query

    params = {
        "from": from_ or "",
        "to": to or "",
        "app": app or "",
        "type": event_type or "",
        "bucket": bucket,
    }
    try:
        query = parse_stats_query(params)
    except IngestError as exc:
        raise click.UsageError(exc.message) from exc
    db, database_url = _explicit_store(db, database_url)
    try:
        if db is not None and database_url is None:
            from telemetry_core.collector.sqlite_store import read_stats_file

            result = read_stats_file(db, query)
        else:
            store = _open_store(db, database_url)

            async def read() -> dict[str, Any]:
                try:
                    return await store.stats(query)
                finally:
                    await store.close()

            result = asyncio.run(read())
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        click.echo(format_stats_table(result))
