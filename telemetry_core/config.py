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
    "SETTINGS",
    "STORED_KEYS",
    "Setting",
    "TelemetryConfig",
    "check_api_key",
    "complete_endpoint",
    "default_db_path",
    "do_not_track",
    "env_prefix",
    "is_loopback_host",
    "option_name",
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
    exit_flush: float = attrs.field(
        default=0.25,
        validator=[_positive("exit_flush", allow_zero=True), _at_most("exit_flush", 60.0)],
    )
    transport: str = "https"
    storage: str = "sqlite"
    backoff: str = "exponential-jitter"
    limiter: str = "token-bucket"
    strict: bool = False
    write_behind: bool = True
    options: Mapping[str, str] = attrs.field(factory=dict)
    do_not_track: bool = attrs.field(factory=do_not_track)
    #: Environment or stored values that were ignored (reported once), for ``status``.
    problems: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False)

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
        # A third-party transport reads its endpoint (or its own options) itself.
        if self.transport == "https":
            _validate_endpoint(value)

    @api_key.validator
    def _check_api_key(self, _attribute: Any, value: str | None) -> None:
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError("api_key", f"expected a string, got {type(value).__name__}")
            check_api_key(value)

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
        """True when recorded events may be sent: consent, and an endpoint for
        the https transport (a third-party transport's options decide its target)."""
        if not (self.recording and self.remote_enabled):
            return False
        return self.endpoint is not None or self.transport != "https"

    def plugin_option(self, plugin: str, option: str, default: str | None = None) -> str | None:
        """A third-party plugin's option from :attr:`options`: ``plugin_option("file-drop",
        "path")`` finds ``file_drop.path`` set in code, ``<APP>_TELEMETRY_FILE_DROP_PATH``
        in the environment or ``telemetry config set file-drop.path …``."""
        wanted = option_name(f"{plugin}_{option}")
        for key, value in self.options.items():
            if option_name(key) == wanted:
                return value
        return default

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
        database at ``db_path`` if it exists (it is never created here).

        A bad explicit keyword raises :class:`ConfigError`. A bad environment or
        stored value never raises (DESIGN §4): it is logged once per process as a
        ``telemetry_core`` warning naming the variable or key and its unit, kept
        in :attr:`problems` (``telemetry status`` shows them), and the next
        layer's value (or the default) is used. With ``strict=True`` it raises.
        Unknown ``<APP>_TELEMETRY_*`` variables and dotted stored keys
        (``file-drop.path``) become plugin :attr:`options`.
        """
        env = os.environ if environ is None else environ
        if not isinstance(app, str) or not _APP_PATTERN.match(app):
            raise ConfigError(
                "app", f"expected a short lowercase name like 'automatosx', got {app!r}"
            )
        strict = bool(explicit.get("strict", False))
        path = Path(db_path).expanduser() if db_path is not None else default_db_path(app)
        # (field, value, source) per layer, lowest first: later ones win.
        layers: list[tuple[str, Any, str]] = []
        options: dict[str, str] = {}
        problems: list[str] = []

        def take(setting: Setting, raw: str, source: str) -> None:
            try:
                layers.append((setting.field, setting.parse(raw, source), source))
            except ConfigError as exc:
                if strict:
                    raise
                problems.append(f"{exc}; using the default or a lower layer instead")

        for key, value in read_stored_config(path).items():
            if key in SETTINGS_BY_KEY:
                take(SETTINGS_BY_KEY[key], value, f"stored config {key!r}")
            elif "." in key:
                options[option_name(key)] = value
        prefix = env_prefix(app)
        for name, raw in env.items():
            if not name.startswith(prefix) or raw == "":
                continue
            suffix = name[len(prefix) :]
            if suffix in SETTINGS_BY_ENV:
                take(SETTINGS_BY_ENV[suffix], raw, name)
            elif suffix:
                options[option_name(suffix)] = raw
        if options:
            options.update(explicit.get("options") or {})
            explicit = {**explicit, "options": options}
        explicit["do_not_track"] = bool(explicit.get("do_not_track")) or do_not_track(env)
        return cls._assemble(
            app, path, layers=layers, explicit=explicit, problems=problems, strict=strict
        )

    @classmethod
    def _assemble(
        cls,
        app: str,
        path: Path,
        *,
        layers: list[tuple[str, Any, str]],
        explicit: dict[str, Any],
        problems: list[str],
        strict: bool,
    ) -> TelemetryConfig:
        """Build from the layers; a layer value that fails a whole-config check
        (an endpoint, a bound) is dropped and reported, unless ``strict``."""
        for _attempt in range(len(layers) + 1):
            values: dict[str, Any] = {}
            sources: dict[str, str] = {}
            for field, value, source in layers:
                values[field], sources[field] = value, source
            values.update(explicit)
            for field in explicit:
                sources.pop(field, None)
            try:
                config = cls(app=app, db_path=path, problems=tuple(problems), **values)
            except ConfigError as exc:
                if exc.setting not in sources:
                    raise
                source = sources[exc.setting]
                error = ConfigError(source, exc.reason)
                if strict:
                    raise error from None
                problems.append(f"{error}; using the default or a lower layer instead")
                layers = [layer for layer in layers if layer[2] != source]
                continue
            for problem in problems:
                _report(problem)
            return config
        raise AssertionError("unreachable: every layer value was dropped")  # pragma: no cover


@attrs.frozen(kw_only=True)
class Setting:
    """One user-facing setting: the single home of its name, type, unit and bounds.

    ``TelemetryConfig.from_env``, the CLI's ``config set/get/list`` and the
    configuration table in ``docs/operations.md`` all read :data:`SETTINGS`.
    Text values (environment variables, stored config) are in ``unit``; the
    config field holds ``text / scale`` (the interval is milliseconds in text,
    seconds in the field). ``minimum`` and ``maximum`` bound the text value.
    """

    field: str
    kind: type
    help: str
    env: str | None = None
    key: str | None = None
    unit: str = ""
    example: str = ""
    scale: float = 1.0
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False

    def env_name(self, app: str) -> str | None:
        """``<APP>_TELEMETRY_<SUFFIX>``, or None when the environment cannot set it."""
        return None if self.env is None else env_prefix(app) + self.env

    def expected(self) -> str:
        """What a valid text looks like, with the unit: ``a number of
        milliseconds, e.g. 300000 (at least 100)``."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return f"a {self.unit or 'text'}" + (f", e.g. {self.example}" if self.example else "")
        noun = "a whole number" if self.kind is int else "a number"
        text = f"{noun} of {self.unit}" if self.unit else noun
        bounds = []
        if self.minimum is not None:
            bounds.append(f"at least {_number(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"at most {_number(self.maximum)}")
        text += f", e.g. {self.example}" if self.example else ""
        return text + (f" ({', '.join(bounds)})" if bounds else "")

    def parse(self, raw: str, source: str) -> Any:
        """The config-field value of text ``raw``; :class:`ConfigError` naming
        ``source`` (the variable or stored key) and the expected unit otherwise."""
        text = raw.strip()
        shown = "<hidden>" if self.secret else repr(raw)
        try:
            if self.kind is bool:
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError(text)
            if self.kind is str:
                if self.field == "api_key":
                    check_api_key(text, source)
                return text
            number = int(text) if self.kind is int else float(text)
            if not math.isfinite(number):
                raise ValueError(text)
        except ValueError:
            raise ConfigError(source, f"expected {self.expected()}; got {shown}") from None
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise ConfigError(source, f"expected {self.expected()}; got {shown}")
        return number / self.scale if self.scale != 1 else number

    def to_text(self, value: Any) -> str:
        """A field value in this setting's text unit (for display and storing)."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            scaled = value * self.scale
            return str(int(scaled)) if float(scaled).is_integer() else f"{scaled:g}"
        return str(value)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


_MS = "milliseconds"
#: Every setting an environment variable or ``telemetry config set`` can change.
SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(field="enabled", kind=bool, env="ENABLED", key="enabled",
            help="consent to record events locally"),
    Setting(field="remote_enabled", kind=bool, env="REMOTE_ENABLED", key="remote-enabled",
            help="consent to send recorded events"),
    Setting(field="endpoint", kind=str, env="ENDPOINT", key="remote-endpoint", unit="URL",
            example="https://collector.example/v1/submit",
            help="the transport's URL (https: an empty path means /v1/submit)"),
    Setting(field="api_key", kind=str, env="API_KEY", key="remote-api-key", unit="key",
            secret=True, help="submission key sent as X-API-Key"),
    Setting(field="ca_bundle", kind=str, env="CA_BUNDLE", key="ca-bundle", unit="file path",
            example="~/ca.pem", help="PEM file of CAs to trust instead of the system's"),
    Setting(field="submission_interval", kind=float, env="INTERVAL", key="submission-interval",
            unit=_MS, example="300000", scale=1000.0, minimum=MIN_SUBMISSION_INTERVAL * 1000,
            help="pause between background submissions"),
    Setting(field="submission_batch_size", kind=int, env="BATCH_SIZE",
            key="submission-batch-size", unit="events", example="100", minimum=1,
            maximum=MAX_BATCH_EVENTS, help="events per request"),
    Setting(field="submission_rate_limit", kind=int, env="RATE_LIMIT",
            key="submission-rate-limit", unit="events per minute", example="1000", minimum=1,
            maximum=MAX_RATE_LIMIT, help="client rate limit, kept across processes"),
    Setting(field="max_queue_size", kind=int, env="MAX_QUEUE_SIZE", key="max-queue-size",
            unit="events", example="10000", minimum=1, help="queue bound; warned at 80 %"),
    Setting(field="retention_days", kind=float, env="RETENTION_DAYS", key="retention-days",
            unit="days", example="30", help="local events older than this are removed"),
    Setting(field="timeout", kind=float, env="TIMEOUT", key="timeout", unit="seconds",
            example="30", help="network timeout of one request"),
    Setting(field="exit_flush", kind=float, env="EXIT_FLUSH", key="exit-flush", unit=_MS,
            example="250", scale=1000.0, minimum=0, maximum=60_000,
            help="time a short-lived process may spend sending at exit (0: never)"),
    Setting(field="transport", kind=str, env="TRANSPORT", key="transport",
            unit="plugin name", example="https", help="transport provider"),
    Setting(field="storage", kind=str, env="STORAGE", key="storage", unit="plugin name",
            example="sqlite", help="storage provider"),
    Setting(field="backoff", kind=str, env="BACKOFF", key="backoff", unit="plugin name",
            example="exponential-jitter", help="backoff provider"),
    Setting(field="limiter", kind=str, env="LIMITER", key="limiter", unit="plugin name",
            example="token-bucket", help="limiter provider"),
)  # fmt: skip
#: The settings by config field, by stored key and by environment suffix.
SETTINGS_BY_FIELD: Final = {s.field: s for s in SETTINGS}
SETTINGS_BY_KEY: Final = {s.key: s for s in SETTINGS if s.key is not None}
SETTINGS_BY_ENV: Final = {s.env: s for s in SETTINGS if s.env is not None}

#: ``<APP>_TELEMETRY_<SUFFIX>`` -> (field, type, divisor), derived from :data:`SETTINGS`.
ENV_KEYS: Final[Mapping[str, tuple[str, type, float]]] = {
    s.env: (s.field, s.kind, s.scale) for s in SETTINGS if s.env is not None
}
#: ``telemetry config set KEY VALUE`` keys -> (field, type, divisor), from :data:`SETTINGS`.
STORED_KEYS: Final[Mapping[str, tuple[str, type, float]]] = {
    s.key: (s.field, s.kind, s.scale) for s in SETTINGS if s.key is not None
}


def check_api_key(key: str, setting: str = "api_key") -> None:
    """Refuse a key that cannot travel in an HTTP header (CR/LF, other control
    characters, anything outside latin-1). The message never quotes the key."""
    for index, char in enumerate(key):
        if char in "\r\n" or not char.isprintable() or ord(char) > 0xFF:
            what = "a line break" if char in "\r\n" else f"the character U+{ord(char):04X}"
            raise ConfigError(
                setting,
                f"the API key contains {what} at position {index}, which cannot be sent in "
                "an HTTP header; copy the key again",
            )


def option_name(name: str) -> str:
    """Normalise a plugin option name: ``file-drop.path``, ``FILE_DROP_PATH`` and
    ``file_drop.path`` are one option (``file_drop_path``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def complete_endpoint(endpoint: str) -> str:
    """The https submit URL of ``endpoint``: an empty path becomes ``/v1/submit``
    (``https://host:8787`` -> ``https://host:8787/v1/submit``)."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/") and not parts.query:
        return parts._replace(path="/v1/submit").geturl()
    return endpoint


#: Problems already logged by this process (each is reported once).
_reported: set[str] = set()


def _report(problem: str) -> None:
    if problem not in _reported:
        _reported.add(problem)
        import logging  # here: a process whose configuration is fine never logs

        logging.getLogger("telemetry_core").warning("telemetry-core: %s", problem)


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


def settings_markdown(app: str = "myapp") -> str:
    """The client settings as a Markdown table (``docs/client.md`` holds this
    text; a test keeps the two equal)."""
    rows = [
        "| `config set` key | environment variable | field | value | default |",
        "|---|---|---|---|---|",
    ]
    defaults = TelemetryConfig(app=app, db_path=Path("unused.db"), do_not_track=False)
    for s in SETTINGS:
        default = getattr(defaults, s.field)
        shown = "-" if default is None else s.to_text(default)
        value = s.expected() + (" (secret, masked)" if s.secret else "")
        rows.append(
            f"| `{s.key}` | `{s.env_name(app)}` | `{s.field}` | {value}: {s.help} | `{shown}` |"
        )
    return "\n".join(rows) + "\n"
