"""``telemetry-collector``: run the collector (``serve``) or read its aggregates (``stats``).

Secrets can come from options, environment variables or files, so they need not
appear in process listings: ``TELEMETRY_COLLECTOR_API_KEYS`` (comma-separated) or
``--api-keys-file``; ``TELEMETRY_COLLECTOR_ADMIN_TOKEN`` or ``--admin-token-file``;
``TELEMETRY_COLLECTOR_DATABASE_URL``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from click.core import ParameterSource

from telemetry_core._version import __version__
from telemetry_core.collector.aggregation import format_significant
from telemetry_core.collector.options import OPTIONS, OptionError, ServeSettings, StoreSettings
from telemetry_core.errors import TelemetryError

__all__ = ["main"]

CONFIG_HELP = "TOML file of options (keys named like the flags: rate_burst = 20000)."


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


@click.group()
@click.version_option(__version__, prog_name="telemetry-collector")
def main() -> None:
    """The telemetry-core collector."""


def _default(key: str) -> Any:
    return OPTIONS[key].default


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite database file (embedded).")
@click.option("--database-url", help="PostgreSQL URL (scale-out).")
@click.option(
    "--database-url-file", type=click.Path(dir_okay=False), help="File with the PostgreSQL URL."
)
@click.option("--host", default=_default("host"), show_default=True, help="Address to listen on.")
@click.option("--port", default=_default("port"), show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", "api_keys", multiple=True, help="A submission key (repeatable).")
@click.option("--api-keys-file", type=click.Path(dir_okay=False), help="File of keys, one a line.")
@click.option("--admin-token", help="Admin token.")
@click.option("--admin-token-file", type=click.Path(dir_okay=False), help="File with the token.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option(
    "--retention-days",
    default=_default("retention_days"),
    show_default=True,
    type=click.IntRange(1),
)
@click.option(
    "--rate-limit",
    default=_default("rate_limit"),
    show_default=True,
    type=click.IntRange(1),
    help="Events per minute per key.",
)
@click.option(
    "--rate-burst", default=_default("rate_burst"), show_default=True, type=click.IntRange(1)
)
@click.option(
    "--max-pending-events",
    default=_default("max_pending_events"),
    show_default=True,
    type=click.IntRange(1),
)
@click.option(
    "--max-inflight-mb",
    type=click.IntRange(1),
    help="Request-body bytes (compressed + inflated) all requests may hold together, in MiB "
    "(default: max-pending-events x 16 KiB, at most 256 MiB).",
)
@click.option(
    "--body-timeout",
    default=_default("body_timeout"),
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to receive one request body (408 past it).",
)
@click.option(
    "--max-connections",
    default=_default("max_connections"),
    show_default=True,
    type=click.IntRange(1),
    help="Requests in progress; past it new ones get 503 overloaded with Retry-After "
    "(open connections are capped at twice this plus 64).",
)
@click.option(
    "--keep-alive-timeout",
    default=_default("keep_alive_timeout"),
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
@click.option("--metrics-token", help="A scrape credential of its own for /metrics (Bearer).")
@click.option(
    "--metrics-token-file", type=click.Path(dir_okay=False), help="File with the metrics token."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Also serve /metrics without credentials on 127.0.0.1 at this port.",
)
@click.option(
    "--workers",
    default=_default("workers"),
    show_default=True,
    type=click.IntRange(1),
    help="Server processes sharing the port (--database-url only).",
)
@click.option(
    "--identity-secret",
    help="Key of the hash that replaces PostHog/Segment user ids "
    "(default: generated once and kept in the database).",
)
@click.option("--identity-secret-file", type=click.Path(dir_okay=False), help="File with that key.")
@click.option(
    "--log-level",
    default=_default("log_level"),
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(config_file: str | None, **options: Any) -> None:
    """Run the collector until SIGINT/SIGTERM (in-flight batches finish and commit).

    Every option can also be set as TELEMETRY_COLLECTOR_<OPTION> (for example
    TELEMETRY_COLLECTOR_RATE_BURST) or as a key of the --config file
    (rate_burst = 20000); the command line wins over the environment, which
    wins over the file.
    """
    from telemetry_core.collector import server

    settings = _settings(config_file, options)
    try:
        status = server.serve(settings)
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


def _settings(config_file: str | None, options: Mapping[str, Any]) -> ServeSettings:
    """The serve settings from the options given on the command line, the
    environment and ``config_file``; usage errors exit 2, bad values 1."""
    context = click.get_current_context()
    given = {
        key: value
        for key, value in options.items()
        if context.get_parameter_source(key) is ParameterSource.COMMANDLINE
    }
    try:
        return ServeSettings.load(given=given, config_file=config_file)
    except OptionError as exc:
        raise click.UsageError(exc.reason) from exc
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("check-config")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), required=True, help=CONFIG_HELP
)
def check_config(config_file: str) -> None:
    """Check a --config file (with the TELEMETRY_COLLECTOR_* environment over it)
    without starting anything: print the settings summary, secrets masked, and
    exit 0; or say what is wrong and exit 2 (usage) or 1 (a bad value)."""
    settings = _settings(config_file, {})
    click.echo(f"{config_file}: ok")
    click.echo(settings.summary())
    if settings.collector.admin_token is None:
        click.echo("warning: no admin token: /v1/stats, the dashboard and /metrics refuse all")


def _format_ms(value: int) -> str:
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _num(value: float | None) -> str:
    return "-" if value is None else format_significant(value)


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
        location = StoreSettings(db=db, database_url=database_url)
    except OptionError as exc:
        raise click.UsageError(exc.reason) from exc
    try:
        # Reading opens the store read-only and creates nothing.
        if location.database_url is not None:
            from telemetry_core.collector.postgres_store import read_stats_database

            result = read_stats_database(location.database_url, query)
        else:
            from telemetry_core.collector.sqlite_store import read_stats_file

            assert location.db is not None
            result = read_stats_file(location.db, query)
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        click.echo(format_stats_table(result))


@main.command(name="dev-cert")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dev-cert"),
    show_default=True,
    help="Directory to write ca.pem, ca.key, server.pem and server.key into.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A name or address the server certificate is for (repeatable; "
    "default 127.0.0.1, localhost and ::1).",
)
@click.option("--force", is_flag=True, help="Replace existing files.")
def dev_cert(out: Path, hosts: tuple[str, ...], force: bool) -> None:
    """Write a local CA and a server certificate, for a collector on this machine.

    For development and tests only (uses the openssl command). The client
    trusts the CA with `telemetry config set ca-bundle OUT/ca.pem`.
    """
    from telemetry_core.collector.devcert import write_dev_certificates

    try:
        paths = write_dev_certificates(out, hosts or ("127.0.0.1", "localhost", "::1"), force=force)
    except TelemetryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Wrote {', '.join(str(p) for p in paths.values())}.")
    click.echo("Serve with:  telemetry-collector serve --tls-cert "
               f"{paths['server.pem']} --tls-key {paths['server.key']} ...")  # fmt: skip
    click.echo(f"Trust with:  telemetry config set ca-bundle {paths['ca.pem'].resolve()}")
