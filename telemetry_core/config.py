"""Configuration: one frozen value, and how it is assembled.

Precedence (DESIGN §6): explicit keyword arguments > ``<APP>_TELEMETRY_*``
environment variables > stored configuration (the ``telemetry_config`` table of
the local database, written by ``telemetry config set`` and by
``telemetry enable/disable``) > defaults. ``DO_NOT_TRACK=1`` switches
everything off, whatever else says.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from telemetry_core.errors import ConfigError
from telemetry_core.schema import MAX_BATCH_EVENTS

__all__ = [
    "ENV_KEYS",
    "MAX_RATE_LIMIT",
    "MIN_SUBMISSION_INTERVAL",
    "STORED_KEYS",
    "TelemetryConfig",
    "default_db_path",
    "do_not_track",
    "env_prefix",
    "is_loopback_host",
    "read_stored_config",
    "validate_endpoint",
]

_APP_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def do_not_track(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``DO_NOT_TRACK`` is set to a true value (https://consoledonottrack.com)."""
    value = (os.environ if environ is None else environ).get("DO_NOT_TRACK", "")
    return value.strip().lower() in _TRUE


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    import ipaddress  # only when an endpoint is checked: a CLI start may not need it

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_db_path(app: str) -> Path:
    """The platform's per-user data directory for ``app``, file ``telemetry.db``."""
    import platformdirs

    return Path(platformdirs.user_data_dir(app, appauthor=False)) / "telemetry.db"


def env_prefix(app: str) -> str:
    """``automatosx`` -> ``AUTOMATOSX_TELEMETRY_``."""
    return re.sub(r"[^A-Z0-9]", "_", app.upper()) + "_TELEMETRY_"


def _validate_endpoint(endpoint: str | None) -> None:
    if endpoint is None:
        return
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        raise ConfigError("endpoint", f"{exc} in {endpoint!r}") from None
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would end up in reprs and logs; keys go in api_key.
        raise ConfigError("endpoint", "must not contain credentials; set api_key instead")
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError("endpoint", f"expected an https:// URL with a host, got {endpoint!r}")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            "endpoint",
            f"plain http is only allowed to loopback addresses, use https for {host!r}",
        )


def validate_endpoint(endpoint: str | None) -> None:
    """Raise :class:`ConfigError` (setting ``endpoint``) unless ``endpoint`` is
    None or a submit URL the configuration accepts: ``https://`` (``http://``
    only to loopback) with a host and no credentials."""
    _validate_endpoint(endpoint)


def _positive(setting: str, *, allow_zero: bool = False) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ConfigError(setting, f"expected a number, got {value!r}")
        if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
            raise ConfigError(setting, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")

    return check


#: The shortest submission interval accepted (seconds): below it the worker
#: would poll SQLite in a busy loop.
MIN_SUBMISSION_INTERVAL: Final = 0.1
#: The highest rate limit accepted (events per minute): far above any real need
#: ("unlimited" in practice) while token arithmetic in floats stays exact.
MAX_RATE_LIMIT: Final = 10**12


def _at_most(setting: str, limit: float) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if value > limit:
            raise ConfigError(setting, f"must be at most {limit:g}, got {value!r}")

    return check


def _at_least(setting: str, limit: float, unit: str = "") -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if value < limit:
            raise ConfigError(setting, f"must be at least {limit:g}{unit}, got {value!r}{unit}")

    return check


def _to_path(value: str | os.PathLike[str]) -> Path:
    return Path(value).expanduser()


@attrs.frozen(kw_only=True)
class TelemetryConfig:
    """Everything the client library needs to know, validated on construction.

    Consent is opt-in: ``enabled`` (record locally) and ``remote_enabled`` (send
    to ``endpoint``) both default to False. ``submission_interval`` is in
    seconds, ``submission_rate_limit`` in events per minute. Provider names
    (``transport``, ``storage``, ``backoff``, ``limiter``) select plugins;
    ``options`` carries free-form settings for third-party plugins. With
    ``DO_NOT_TRACK=1`` in the environment at construction, ``enabled`` and
    ``remote_enabled`` are forced to False.
    """

    app: str = attrs.field()
    db_path: Path = attrs.field(converter=_to_path)
    enabled: bool = False
    remote_enabled: bool = False
    endpoint: str | None = attrs.field(default=None)
    api_key: str | None = attrs.field(default=None, repr=False)
    ca_bundle: str | None = None
    app_version: str | None = None
    submission_interval: float = attrs.field(
        default=300.0,
        validator=[
            _positive("submission_interval"),
            _at_least("submission_interval", MIN_SUBMISSION_INTERVAL, " s"),
        ],
    )
    submission_batch_size: int = attrs.field(
        default=100,
        validator=[
            _positive("submission_batch_size"),
            _at_most("submission_batch_size", MAX_BATCH_EVENTS),
        ],
    )
    submission_rate_limit: int = attrs.field(
        default=1000,
        validator=[
            _positive("submission_rate_limit"),
            _at_most("submission_rate_limit", MAX_RATE_LIMIT),
        ],
    )
    rate_limit_burst: int | None = attrs.field(default=None)
    max_queue_size: int = attrs.field(default=10_000, validator=_positive("max_queue_size"))
    retention_days: float = attrs.field(default=30, validator=_positive("retention_days"))
    timeout: float = attrs.field(default=30.0, validator=_positive("timeout"))
    lease_seconds: float | None = attrs.field(default=None)
    max_retries: int = attrs.field(default=5, validator=_positive("max_retries", allow_zero=True))
    base_delay: float = attrs.field(default=1.0, validator=_positive("base_delay"))
    max_delay: float = attrs.field(default=3600.0, validator=_positive("max_delay"))
    max_retry_after: float = attrs.field(default=3600.0, validator=_positive("max_retry_after"))
    gzip_threshold: int = attrs.field(
        default=1024, validator=_positive("gzip_threshold", allow_zero=True)
    )
    exit_timeout: float = attrs.field(
        default=0.1, validator=_positive("exit_timeout", allow_zero=True)
    )
    transport: str = "https"
    storage: str = "sqlite"
    backoff: str = "exponential-jitter"
    limiter: str = "token-bucket"
    strict: bool = False
    options: Mapping[str, str] = attrs.field(factory=dict)
    do_not_track: bool = attrs.field(factory=do_not_track)

    @app.validator
    def _check_app(self, _attribute: Any, value: str) -> None:
        if not isinstance(value, str) or not _APP_PATTERN.match(value):
            raise ConfigError(
                "app", f"expected a short lowercase name like 'automatosx', got {value!r}"
            )

    @db_path.default
    def _default_db_path(self) -> Path:
        return default_db_path(self.app)

    @endpoint.validator
    def _check_endpoint(self, _attribute: Any, value: str | None) -> None:
        _validate_endpoint(value)

    @rate_limit_burst.validator
    def _check_burst(self, _attribute: Any, value: int | None) -> None:
        if value is not None:
            _positive("rate_limit_burst")(self, _attribute, value)
            _at_most("rate_limit_burst", MAX_RATE_LIMIT)(self, _attribute, value)

    @lease_seconds.validator
    def _check_lease(self, _attribute: Any, value: float | None) -> None:
        if value is not None:
            _positive("lease_seconds")(self, _attribute, value)

    def __attrs_post_init__(self) -> None:
        if self.do_not_track:
            object.__setattr__(self, "enabled", False)
            object.__setattr__(self, "remote_enabled", False)

    @property
    def burst(self) -> int:
        """Token-bucket capacity: ``rate_limit_burst``, else the per-minute rate."""
        return self.rate_limit_burst or self.submission_rate_limit

    @property
    def lease(self) -> float:
        """How long a sender's claim on queued events lasts: timeout + 30 s by default."""
        return self.lease_seconds if self.lease_seconds is not None else self.timeout + 30.0

    @property
    def recording(self) -> bool:
        """True when events may be written to disk."""
        return self.enabled and not self.do_not_track

    @property
    def sending(self) -> bool:
        """True when recorded events may be sent to the endpoint."""
        return self.recording and self.remote_enabled and self.endpoint is not None

    def evolve(self, **changes: Any) -> TelemetryConfig:
        """Return a copy with ``changes`` applied (and validated)."""
        return attrs.evolve(self, **changes)

    @classmethod
    def from_env(
        cls,
        app: str,
        db_path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **explicit: Any,
    ) -> TelemetryConfig:
        """Assemble a configuration: ``explicit`` > environment > stored > defaults.

        ``environ`` defaults to ``os.environ``. Stored values are read from the
        database at ``db_path`` if it exists (it is never created here). A value
        that does not parse raises :class:`ConfigError` naming the variable or key.
        """
        env = os.environ if environ is None else environ
        if not isinstance(app, str) or not _APP_PATTERN.match(app):
            raise ConfigError(
                "app", f"expected a short lowercase name like 'automatosx', got {app!r}"
            )
        path = Path(db_path).expanduser() if db_path is not None else default_db_path(app)
        values: dict[str, Any] = {}
        # Where each value came from, so that a value that parses but fails
        # validation is reported under the name the user actually set.
        sources: dict[str, tuple[str, str]] = {}
        for key, value in read_stored_config(path).items():
            spec = STORED_KEYS.get(key)
            if spec is not None:
                source = f"stored config {key!r}"
                values[spec[0]] = _parse(source, value, spec[1], spec[2])
                sources[spec[0]] = (source, value)
        prefix = env_prefix(app)
        for suffix, (field, kind, scale) in ENV_KEYS.items():
            raw = env.get(prefix + suffix)
            if raw is not None and raw != "":
                values[field] = _parse(prefix + suffix, raw, kind, scale)
                sources[field] = (prefix + suffix, raw)
        values.update(explicit)
        for field in explicit:
            sources.pop(field, None)
        values["do_not_track"] = bool(explicit.get("do_not_track")) or do_not_track(env)
        try:
            return cls(app=app, db_path=path, **values)
        except ConfigError as exc:
            if exc.setting not in sources:
                raise
            source, raw = sources[exc.setting]
            raise ConfigError(source, f"{exc.reason} ({exc.setting} from {raw!r})") from None


def _parse(setting: str, raw: str, kind: type, scale: float) -> Any:
    text = raw.strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text) / scale
            if math.isnan(value):
                raise ValueError(text)
            return value
    except ValueError:
        raise ConfigError(setting, f"expected {kind.__name__}, got {raw!r}") from None
    return text


#: ``<APP>_TELEMETRY_<SUFFIX>`` -> (field, type, divisor). ``INTERVAL`` is in
#: milliseconds (the seed's unit), the field in seconds.
ENV_KEYS: Final[Mapping[str, tuple[str, type, float]]] = {
    "ENABLED": ("enabled", bool, 1),
    "REMOTE_ENABLED": ("remote_enabled", bool, 1),
    "ENDPOINT": ("endpoint", str, 1),
    "API_KEY": ("api_key", str, 1),
    "CA_BUNDLE": ("ca_bundle", str, 1),
    "INTERVAL": ("submission_interval", float, 1000),
    "BATCH_SIZE": ("submission_batch_size", int, 1),
    "RATE_LIMIT": ("submission_rate_limit", int, 1),
    "MAX_QUEUE_SIZE": ("max_queue_size", int, 1),
    "RETENTION_DAYS": ("retention_days", float, 1),
    "TIMEOUT": ("timeout", float, 1),
    "TRANSPORT": ("transport", str, 1),
    "STORAGE": ("storage", str, 1),
    "BACKOFF": ("backoff", str, 1),
    "LIMITER": ("limiter", str, 1),
}

#: ``telemetry config set KEY VALUE`` keys -> (field, type, divisor); the
#: interval is stored in milliseconds like the environment variable.
STORED_KEYS: Final[Mapping[str, tuple[str, type, float]]] = {
    "enabled": ("enabled", bool, 1),
    "remote-enabled": ("remote_enabled", bool, 1),
    "remote-endpoint": ("endpoint", str, 1),
    "remote-api-key": ("api_key", str, 1),
    "ca-bundle": ("ca_bundle", str, 1),
    "submission-interval": ("submission_interval", float, 1000),
    "submission-batch-size": ("submission_batch_size", int, 1),
    "submission-rate-limit": ("submission_rate_limit", int, 1),
    "max-queue-size": ("max_queue_size", int, 1),
    "retention-days": ("retention_days", float, 1),
    "transport": ("transport", str, 1),
}


def read_stored_config(db_path: Path) -> dict[str, str]:
    """Read the ``telemetry_config`` table of an existing database, read-only.

    Returns an empty mapping when the file or table does not exist or cannot be
    read; this function never creates or modifies anything.
    """
    if not db_path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return {}
    try:
        rows = conn.execute("SELECT key, value FROM telemetry_config").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {str(k): str(v) for k, v in rows}
