"""The collector's options: one table, read from the command line, the
environment and a TOML file, turned into :class:`ServeSettings`.

Every ``telemetry-collector serve`` flag is an option here: ``--rate-burst``
is the key ``rate_burst`` in a config file and ``TELEMETRY_COLLECTOR_RATE_BURST``
in the environment. A value given on the command line wins over the
environment, which wins over the file, which wins over the default. Submission
keys are the exception: those of every source are used together. Secrets can
be read from files (``api_keys_file``, ``admin_token_file``) so they need
not appear in a process listing or in the config file itself.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "Option",
    "OptionError",
    "ServeSettings",
    "StoreSettings",
    "collector_settings",
    "env_values",
    "file_values",
    "load_values",
    "read_secret_file",
]

#: Environment variables of the options are this prefix plus the key in capitals.
ENV_PREFIX = "TELEMETRY_COLLECTOR_"

_LOG_LEVELS = ("debug", "info", "warning", "error")


class OptionError(ConfigError):
    """The options do not fit together or cannot be read (a usage error)."""


@attrs.frozen
class Option:
    """One collector option: its key, type (``str``, ``int``, ``float``,
    ``bool`` or ``list``) and default; ``secret`` ones are never printed."""

    key: str
    kind: type
    default: Any = None
    secret: bool = False
    #: A file path: relative in a config file means relative to that file.
    path: bool = False

    @property
    def env(self) -> str:
        """The option's environment variable."""
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        """The option's command-line flag."""
        return "--" + self.key.replace("_", "-")

    def convert(self, value: object) -> Any:
        """``value`` (from TOML, the environment or click) as this option's type."""
        try:
            return _convert(self.kind, value)
        except (TypeError, ValueError):
            raise OptionError(self.key, f"expected {self.kind.__name__}, got {value!r}") from None


def _convert(kind: type, value: object) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(text)
    if kind is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
        raise TypeError(value)
    if kind is int and isinstance(value, bool | float):
        raise TypeError(value)
    if kind is str and not isinstance(value, str):
        raise TypeError(value)
    return kind(value)


_D = CollectorSettings(api_keys=())

#: Every option of ``telemetry-collector serve``, keyed by name.
OPTIONS: Mapping[str, Option] = {
    o.key: o
    for o in (
        Option("db", str, path=True),
        Option("database_url", str, secret=True),
        Option("host", str, "127.0.0.1"),
        Option("port", int, 8787),
        Option("api_keys", list, [], secret=True),
        Option("api_keys_file", str, path=True),
        Option("admin_token", str, secret=True),
        Option("admin_token_file", str, path=True),
        Option("tls_cert", str, path=True),
        Option("tls_key", str, path=True),
        Option("retention_days", int, _D.retention_days),
        Option("rate_limit", int, _D.rate_limit_per_minute),
        Option("rate_burst", int, _D.rate_limit_burst),
        Option("max_pending_events", int, _D.max_pending_events),
        Option("max_inflight_mb", int),
        Option("body_timeout", float, _D.body_timeout_s),
        Option("max_connections", int, _D.max_concurrent_requests),
        Option("keep_alive_timeout", int, 5),
        Option("secure_cookies", bool, False),
        Option("pool_max", int),
        Option("log_level", str, "info"),
        Option("database_url_file", str, path=True),
        Option("metrics_token", str, secret=True),
        Option("metrics_token_file", str, path=True),
        Option("metrics_port", int),
        Option("identity_secret", str, secret=True),
        Option("identity_secret_file", str, path=True),
        Option("workers", int, 1),
    )
}

#: The option behind each CollectorSettings field whose name differs.
_OPTION_OF_FIELD: Final = {
    "rate_limit_per_minute": "rate_limit",
    "rate_limit_burst": "rate_burst",
    "body_timeout_s": "body_timeout",
    "max_inflight_bytes": "max_inflight_mb",
    "max_concurrent_requests": "max_connections",
}


def read_secret_file(path: str) -> list[str]:
    """The non-empty, non-comment lines of ``path``, stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise OptionError(path, f"cannot read {path}: {exc.strerror}") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The options set in ``environ`` (``TELEMETRY_COLLECTOR_<KEY>``), converted."""
    return {
        key: option.convert(environ[option.env])
        for key, option in OPTIONS.items()
        if environ.get(option.env, "") != ""
    }


def file_values(path: str | Path) -> dict[str, Any]:
    """The options of the TOML file ``path``, converted; unknown keys are refused.
    A relative file path in it is relative to the file's directory."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise OptionError("config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise OptionError("config", f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(document) - set(OPTIONS))
    if unknown:
        raise OptionError("config", f"{path}: unknown key(s) {', '.join(unknown)}")
    values = {key: OPTIONS[key].convert(value) for key, value in document.items()}
    here = Path(path).parent
    for key, value in values.items():
        if OPTIONS[key].path and value:
            values[key] = str(here / Path(value).expanduser())
    return values


@attrs.frozen(kw_only=True)
class StoreSettings:
    """Where the collector keeps its data: a SQLite file (``db``) or a
    PostgreSQL database (``database_url``, never shown in ``repr``)."""

    db: str | None = None
    database_url: str | None = attrs.field(default=None, repr=False)
    pool_max: int | None = None

    def __attrs_post_init__(self) -> None:
        if (self.db is None) == (self.database_url is None):
            raise OptionError("store", "give exactly one of --db PATH or --database-url URL")
        if self.pool_max is not None:
            if self.database_url is None:
                raise OptionError(
                    "pool_max", "--pool-max applies to --database-url (PostgreSQL) only"
                )
            if self.pool_max < 1:
                raise OptionError("pool_max", "must be positive")

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "sqlite" if self.db is not None else "postgresql"


@attrs.frozen(kw_only=True)
class ServeSettings:
    """Everything ``telemetry-collector serve`` runs with: the app's
    :class:`CollectorSettings`, the store, and how the server listens."""

    collector: CollectorSettings
    store: StoreSettings
    host: str = "127.0.0.1"
    port: int = 8787
    tls_cert: str | None = None
    tls_key: str | None = None
    keep_alive_timeout: int = 5
    log_level: str = "info"
    #: A port on 127.0.0.1 serving the metrics without credentials (None: none).
    metrics_port: int | None = None
    #: Server processes sharing the listening socket (PostgreSQL only).
    workers: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Settings from ``TELEMETRY_COLLECTOR_*`` variables alone."""
        return cls.load(environ=environ)

    @classmethod
    def from_file(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Settings from the TOML file ``path``, under the environment's."""
        return cls.load(config_file=path, environ=environ)

    @classmethod
    def load(
        cls,
        *,
        given: Mapping[str, Any] | None = None,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ServeSettings:
        """Settings from the command line's ``given`` options over the
        environment over ``config_file`` over the defaults."""
        return cls.from_values(load_values(given=given, config_file=config_file, environ=environ))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ServeSettings:
        """Settings from one value per option key (secret files read here)."""
        if (values["tls_cert"] is None) != (values["tls_key"] is None):
            raise OptionError("tls", "--tls-cert and --tls-key go together")
        if values["log_level"] not in _LOG_LEVELS:
            raise OptionError("log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
        if not 0 <= values["port"] <= 65535:
            raise OptionError("port", "must be between 0 and 65535")
        collector = collector_settings(values)
        if values["metrics_port"] is not None and not 0 <= values["metrics_port"] <= 65535:
            raise OptionError("metrics_port", "must be between 0 and 65535")
        _check_workers(values)
        store = StoreSettings(
            db=values["db"],
            database_url=_secret(values, "database_url"),
            pool_max=values["pool_max"],
        )
        return cls(
            collector=collector,
            store=store,
            host=values["host"],
            port=values["port"],
            tls_cert=values["tls_cert"],
            tls_key=values["tls_key"],
            keep_alive_timeout=values["keep_alive_timeout"],
            log_level=values["log_level"],
            metrics_port=values["metrics_port"],
            workers=values["workers"],
        )

    def summary(self) -> str:
        """One line saying what the collector runs with, secrets masked: the
        store (and its masked URL), keys, TLS, retention, limits and which
        credentials are set."""
        app = self.collector
        if self.store.database_url is not None:
            from telemetry_core.collector.postgres_store import redact_url

            store = f"store=postgresql url={redact_url(self.store.database_url)!r}"
        else:
            store = f"store=sqlite path={self.store.db!r}"
        metrics = "admin-token"
        if app.metrics_token:
            metrics += "+metrics-token"
        if self.metrics_port is not None:
            metrics += f"+port:127.0.0.1:{self.metrics_port}"
        return (
            f"{store} keys={len(app.api_keys)} tls={'on' if self.tls_cert else 'off'} "
            f"listen={self.host}:{self.port} workers={self.workers} "
            f"retention_days={app.retention_days} "
            f"rate_limit={app.rate_limit_per_minute}/min rate_burst={app.rate_limit_burst} "
            f"max_events_per_batch={app.max_events_per_batch} "
            f"max_body_bytes={app.max_body_bytes} max_pending_events={app.max_pending_events} "
            f"max_connections={app.max_concurrent_requests} "
            f"admin_token={'set' if app.admin_token else 'unset'} metrics={metrics}"
        )


def _check_workers(values: Mapping[str, Any]) -> None:
    workers = values["workers"]
    if workers < 1:
        raise OptionError("workers", "must be at least 1")
    if workers == 1:
        return
    if values["database_url"] is None and values["database_url_file"] is None:
        raise OptionError(
            "workers",
            "--workers applies to --database-url (PostgreSQL) only: a SQLite file has one "
            "writer, so run one process (it commits many requests per transaction)",
        )
    if values["metrics_port"] is not None:
        raise OptionError(
            "workers",
            "--metrics-port serves one process's metrics: use --metrics-token with --workers",
        )


def load_values(
    *,
    given: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One value per option: the command line's ``given`` over the environment
    (``os.environ`` by default) over ``config_file`` over the defaults."""
    env = env_values(os.environ if environ is None else environ)
    layers = [dict(given or {}), env, file_values(config_file) if config_file else {}]
    values = {key: option.default for key, option in OPTIONS.items()}
    for layer in reversed(layers):
        values.update(layer)
    # The store is named by the first layer that names one: an explicit
    # --db wins over a database URL in the environment.
    store_keys = ("db", "database_url", "database_url_file")
    for layer in layers:
        if any(layer.get(key) is not None for key in store_keys):
            for key in store_keys:
                values[key] = layer.get(key)
            break
    values["api_keys"] = [k for layer in layers for k in layer.get("api_keys", [])]
    return values


def collector_settings(values: Mapping[str, Any]) -> CollectorSettings:
    """The app's settings from one value per option (secret files read here)."""
    keys = list(values["api_keys"])
    if values["api_keys_file"]:
        keys += read_secret_file(values["api_keys_file"])
    if not keys:
        raise OptionError(
            "api_keys",
            "no submission keys: use --api-key, --api-keys-file or TELEMETRY_COLLECTOR_API_KEYS",
        )
    admin_token = values["admin_token"]
    if values["admin_token_file"]:
        lines = read_secret_file(values["admin_token_file"])
        if not lines:
            raise OptionError("admin_token_file", f"{values['admin_token_file']} holds no token")
        admin_token = lines[0]
    metrics_token = _secret(values, "metrics_token")
    inflight_mb = values["max_inflight_mb"]
    try:
        settings = _collector_settings(values, keys, admin_token, metrics_token, inflight_mb)
        return attrs.evolve(settings, identity_secret=_secret(values, "identity_secret"))
    except ConfigError as exc:
        key = _OPTION_OF_FIELD.get(exc.setting, exc.setting)
        if key not in OPTIONS:
            raise
        raise ConfigError(f"{key} ({OPTIONS[key].flag})", exc.reason) from None


def _secret(values: Mapping[str, Any], key: str) -> str | None:
    """The secret option ``key``, or the first line of the file ``<key>_file`` names."""
    path = values[f"{key}_file"]
    if not path:
        return values[key]  # type: ignore[no-any-return]
    lines = read_secret_file(path)
    if not lines:
        raise OptionError(f"{key}_file", f"{path} holds no {key.replace('_', ' ')}")
    return lines[0]


def _collector_settings(
    values: Mapping[str, Any],
    keys: list[str],
    admin_token: str | None,
    metrics_token: str | None,
    inflight_mb: int | None,
) -> CollectorSettings:
    return CollectorSettings(
        api_keys=tuple(dict.fromkeys(keys)),
        admin_token=admin_token,
        retention_days=values["retention_days"],
        rate_limit_per_minute=values["rate_limit"],
        rate_limit_burst=values["rate_burst"],
        max_pending_events=values["max_pending_events"],
        tls=values["tls_cert"] is not None,
        secure_cookies=values["secure_cookies"],
        body_timeout_s=values["body_timeout"],
        max_inflight_bytes=None if inflight_mb is None else inflight_mb * 1024 * 1024,
        max_concurrent_requests=values["max_connections"],
        metrics_token=metrics_token,
    )
