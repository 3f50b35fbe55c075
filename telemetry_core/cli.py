"""The ``telemetry`` command line: consent, queue, submission, configuration, plugins.

Run as the console script ``telemetry`` or mount the group into an app's own click
CLI with its app name preset::

    from telemetry_core.cli import make_cli

    ax.add_command(make_cli("automatosx"), name="telemetry")   # -> ax telemetry status

Global options: ``--app NAME`` (default: the ``TELEMETRY_APP`` environment variable,
else ``automatosx``; a group made by :func:`make_cli` defaults to its own app) and
``--db PATH`` (default: the platform's user data directory for the app). Settings
follow the precedence of :meth:`TelemetryConfig.from_env
<telemetry_core.config.TelemetryConfig.from_env>`: environment > stored config
(``telemetry config set``) > defaults.

Every user error ends the command with a non-zero exit status and one line on
stderr, ``Error: ...``; no traceback.

JSON output
-----------

Every read command takes ``--json`` and then prints one JSON document on stdout
(keys sorted, two-space indent). Times are seconds since the Unix epoch (floats),
durations milliseconds. These keys are stable; new keys may be added.

``status``
    ``app``, ``db_path``, ``enabled`` (consent to record locally), ``remote_enabled``
    (consent to send), ``endpoint`` (URL or null; never the API key),
    ``do_not_track`` (``DO_NOT_TRACK`` is set: nothing is recorded or sent),
    ``recording``, ``sending`` (the effective state after ``DO_NOT_TRACK``),
    ``queue`` (as ``queue --json``), plus what the service reports
    (e.g. ``install_id``, provider names).
``queue``
    ``pending`` (entries that will be sent), ``due`` (sendable now), ``leased``
    (claimed by a sender), ``dead`` (past the retry limit; ``submit --retry-dead``
    revives them), ``dropped`` (object: reason -> count), ``oldest_enqueued_at``.
``stats`` (``--type submission``, the default)
    ``submissions``, ``successful``, ``failed`` (requests), ``events_sent``,
    ``events_accepted``, ``events_rejected``, ``events_duplicate``, ``retries``,
    ``network_errors``, ``success_rate`` (0..1), ``latency_p50_ms``,
    ``latency_p95_ms``, ``latency_p99_ms``, ``last_submission_at``, ``last_error``,
    ``queue_size``, ``dead``.
``stats --type events``
    ``total`` and ``by_type`` (object: event type -> count of local events).
``submit``
    ``sent``, ``accepted``, ``duplicates``, ``rejected`` (events), ``failed``
    (requests that failed), ``revived`` (by ``--retry-dead``), ``pending`` and
    ``dead`` (queue after the run), ``last_error`` (null unless this run failed).
``config get KEY``
    ``key``, ``value`` (in the stored unit: ``submission-interval`` in ms; the API
    key masked unless ``--show-secret``), ``source`` (``environment``, ``stored``
    or ``default``), ``env`` (the environment variable that overrides it).
``config list``
    An object: key -> ``{"value", "source", "env"}`` as for ``config get``.
``plugins``
    ``plugins``: list of ``{"name", "module", "distribution", "version",
    "bundled", "hooks", "providers": [{"kind", "name", "description"}]}``;
    ``selected``: kind -> provider name from the configuration; ``warnings``:
    list of plugin load warnings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import click

from telemetry_core.errors import TelemetryError

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import QueueStats, SubmissionStats
    from telemetry_core.service import TelemetryService

__all__ = ["APP_ENV", "DEFAULT_APP", "main", "make_cli", "mask_secret", "telemetry"]

#: Environment variable naming the app when ``--app`` is not given.
APP_ENV: Final = "TELEMETRY_APP"
#: The app used when neither ``--app`` nor ``TELEMETRY_APP`` says otherwise.
DEFAULT_APP: Final = "automatosx"
#: ``submit`` draws a progress bar when more than this many batches are due.
PROGRESS_MIN_BATCHES: Final = 3
#: Stored keys whose values are secrets, masked unless ``--show-secret``.
SECRET_KEYS: Final = frozenset({"remote-api-key"})

_F = TypeVar("_F", bound=Callable[..., Any])


def mask_secret(value: str) -> str:
    """Mask a secret for display: the last four characters of a long one, nothing of a short one."""
    if len(value) >= 16:
        return "****" + value[-4:]
    return "****"


#: Consent settings: always the user's (stored or environment), never fixed by an app's code.
_CONSENT: Final = ("enabled", "remote_enabled")

#: What ``make_cli(config=...)`` accepts: a resolved configuration or a zero-argument callable.
ConfigSource = "TelemetryConfig | Callable[[], TelemetryConfig]"


@attrs.define(kw_only=True)
class CliOptions:
    """The group's global options and the mounting app's configuration, per command.

    :param prog: the command path users type (``telemetry`` or ``ax telemetry``),
        used in every hint the commands print.
    :param app_config: the mounting app's configuration, or a zero-argument
        callable returning it, called lazily, at most once per command.
    """

    app: str
    db_path: Path | None
    prog: str = "telemetry"
    app_config: Any = None
    _resolved: TelemetryConfig | None = attrs.field(default=None, init=False)

    def hint(self, command: str) -> str:
        """``command`` as the user types it here: ``ax telemetry submit --retry-dead``."""
        return f"`{self.prog} {command}`"

    def localize(self, text: str) -> str:
        """Rewrite the library's generic ``telemetry …`` hints to this command path."""
        return text if self.prog == "telemetry" else text.replace("`telemetry ", f"`{self.prog} ")

    def app_defaults(self) -> TelemetryConfig | None:
        """The mounting app's own configuration (None for the standalone command)."""
        if self.app_config is None:
            return None
        if self._resolved is None:
            from telemetry_core.config import TelemetryConfig
            from telemetry_core.errors import ConfigError

            value = self.app_config() if callable(self.app_config) else self.app_config
            if not isinstance(value, TelemetryConfig):
                raise ConfigError(
                    "config",
                    f"make_cli(config=...) gave {type(value).__name__}, "
                    "expected a TelemetryConfig or a callable returning one",
                )
            self._resolved = value
        return self._resolved

    def resolved_db_path(self) -> Path:
        """``--db``, else the app's own db path, else the platform default for the app."""
        from telemetry_core.config import default_db_path

        if self.db_path is not None:
            return self.db_path
        defaults = self.app_defaults()
        return defaults.db_path if defaults is not None else default_db_path(self.app)

    def user_config(self, **explicit: Any) -> TelemetryConfig:
        """What the environment and the stored config say (no app code involved)."""
        from telemetry_core.config import TelemetryConfig

        return TelemetryConfig.from_env(self.app, self.resolved_db_path(), **explicit)

    def config(self, **explicit: Any) -> TelemetryConfig:
        """The effective configuration: explicit > env > stored > defaults, or,
        when mounted with an app's configuration, that configuration with the
        user's consent (stored or environment) and ``DO_NOT_TRACK`` on top."""
        user = self.user_config(**explicit)
        defaults = self.app_defaults()
        if defaults is None:
            return user
        changes: dict[str, Any] = {
            "db_path": user.db_path,
            "do_not_track": user.do_not_track or defaults.do_not_track,
            "problems": tuple(dict.fromkeys(defaults.problems + user.problems)),
        }
        for field in _CONSENT:
            if self.user_sets(field):
                changes[field] = getattr(user, field)
        changes.update(explicit)
        return defaults.evolve(**changes)

    def user_sets(self, field: str) -> bool:
        """True when the environment or the stored config sets ``field``."""
        from telemetry_core.config import SETTINGS_BY_FIELD, read_stored_config

        setting = SETTINGS_BY_FIELD[field]
        env = setting.env_name(self.app)
        if env is not None and os.environ.get(env):
            return True
        return setting.key in read_stored_config(self.resolved_db_path())

    def fixed_in_code(self, field: str) -> Any:
        """The value the app's code fixes for ``field`` (one a command cannot
        change), else None: the app's value where it differs from what the
        environment and stored config give."""
        defaults = self.app_defaults()
        if defaults is None or field in _CONSENT:
            return None
        value = getattr(defaults, field)
        return value if value != getattr(self.user_config(), field) else None

    @contextlib.contextmanager
    def service(
        self, config: TelemetryConfig, notes: list[str] | None = None
    ) -> Iterator[TelemetryService]:
        """A service for one command, closed afterwards.

        The service never starts a background worker (``background=False``): a
        one-shot command sends, if at all, in its own thread. The library's
        log warnings are printed as ``Warning:`` lines afterwards, or collected into
        ``notes`` when the caller passes a list.
        """
        from telemetry_core.errors import PluginError, StorageError
        from telemetry_core.service import TelemetryService

        with _captured_warnings() as captured:
            svc = TelemetryService(config, background=False)
            try:
                yield svc
            finally:
                svc.close()
        if svc.degraded is not None:
            if svc.degraded.startswith(("PluginError", "ConfigError")):
                raise PluginError(svc.degraded.split(": ", 1)[-1])
            raise StorageError(f"cannot use the local store {config.db_path}: {svc.degraded}")
        captured = [self.localize(note) for note in captured if note not in config.problems]
        if notes is not None:
            notes.extend(captured)
            return
        for note in captured:
            click.echo(f"Warning: {note}", err=True)


pass_options = click.make_pass_decorator(CliOptions)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        self.messages.append(message.removeprefix("telemetry-core: "))


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Collect the library's log warnings so the CLI can show them as one-line
    ``Warning:`` notes, or replace them with a single ``Error:`` line."""
    logger = logging.getLogger("telemetry_core")
    handler = _ListHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _show_warning(message: Warning | str, *_where: Any, **_extra: Any) -> None:
    text = " ".join(str(message).split()) or type(message).__name__
    click.echo(f"Warning: {text}", err=True)


class TelemetryGroup(click.Group):
    """A click group that turns telemetry-core errors into one ``Error:`` line.

    Because the translation happens in :meth:`invoke`, it also applies when the
    group is mounted under an app's own CLI.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; report :class:`TelemetryError` and ``OSError`` as one line."""
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except TelemetryError as exc:
                raise click.ClickException(_one_line(exc)) from None
            except OSError as exc:
                raise click.ClickException(_one_line(exc)) from None


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _json_option(func: _F) -> _F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (keys documented).")(
        func
    )


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))


def _fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _echo_mapping(data: Mapping[str, Any], indent: int = 0) -> None:
    width = max((len(k) for k in data), default=0) + 1
    for key, value in data.items():
        label = f"{' ' * indent}{key + ':':<{width}}"
        if isinstance(value, Mapping):
            if value:
                click.echo(label.rstrip())
                _echo_mapping(value, indent + 2)
            else:
                click.echo(f"{label} -")
        elif isinstance(value, (list, tuple)):
            click.echo(f"{label} {', '.join(map(_fmt_value, value)) or '-'}")
        else:
            click.echo(f"{label} {_fmt_value(value)}")


def _queue_dict(stats: QueueStats) -> dict[str, Any]:
    return {
        "pending": stats.pending,
        "due": stats.due,
        "leased": stats.leased,
        "dead": stats.dead,
        "dropped": dict(stats.dropped),
        "oldest_enqueued_at": stats.oldest_enqueued_at,
    }


def _submission_dict(stats: SubmissionStats) -> dict[str, Any]:
    return attrs.asdict(stats)


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return _jsonable(attrs.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


# -- consent ------------------------------------------------------------------


@click.command()
@_json_option
@pass_options
def status(opts: CliOptions, as_json: bool) -> None:
    """Show consent, endpoint and queue state."""
    config = opts.config()
    with opts.service(config) as svc:
        reported: dict[str, Any] = _jsonable(svc.status())
        data: dict[str, Any] = dict(
            app=config.app,
            db_path=str(config.db_path),
            enabled=config.enabled,
            remote_enabled=config.remote_enabled,
            endpoint=config.endpoint,
            do_not_track=config.do_not_track,
            recording=config.recording,
            sending=config.sending,
        )
        data.update((k, v) for k, v in reported.items() if k not in data)
        if not isinstance(data.get("queue"), Mapping):
            data["queue"] = _queue_dict(svc.queue_stats())
    if as_json:
        _emit_json(data)
        return
    if config.do_not_track:
        click.echo("DO_NOT_TRACK is set: nothing is recorded or sent, whatever the settings say.")
    _echo_mapping(data)


@click.command()
@click.option("--remote", is_flag=True, help="Also send recorded events to the endpoint.")
@click.option(
    "--endpoint",
    metavar="URL",
    help="Collector submit URL (https://host/v1/submit); implies --remote.",
)
@pass_options
def enable(opts: CliOptions, remote: bool, endpoint: str | None) -> None:
    """Consent to recording events locally (and, with --remote, to sending them)."""
    from telemetry_core.config import do_not_track

    # Checked first so that DO_NOT_TRACK wins over any other complaint.
    if do_not_track():
        raise click.ClickException(
            "DO_NOT_TRACK is set and overrides consent: nothing was changed "
            "(unset DO_NOT_TRACK to enable telemetry)"
        )
    remote = remote or endpoint is not None
    config = opts.config(**({"endpoint": endpoint} if endpoint is not None else {}))
    if remote and config.endpoint is None:
        raise click.ClickException(
            "remote submission needs an endpoint: pass --endpoint URL "
            "(or run `telemetry config set remote-endpoint URL`)"
        )
    with opts.service(config) as svc:
        svc.enable(remote=remote, endpoint=endpoint)
    where = f"sending to {config.endpoint}" if remote else "remote submission off"
    click.echo(f"Telemetry enabled for {opts.app}: recording locally, {where}.")


@click.command()
@click.option("--remote", is_flag=True, help="Only stop sending; keep recording locally.")
@click.option("--purge", is_flag=True, help="Also delete all local telemetry data.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --purge deletes data.")
@pass_options
def disable(opts: CliOptions, remote: bool, purge: bool, yes: bool) -> None:
    """Withdraw consent (with --remote: only for sending)."""
    config = opts.config()
    if purge and not yes:
        click.confirm(f"Delete all local telemetry data in {config.db_path}?", abort=True, err=True)
    with opts.service(config) as svc:
        svc.disable(remote_only=remote, purge=purge)
    if purge and config.do_not_track and config.db_path.exists():
        # The service writes nothing under DO_NOT_TRACK, but deleting local data
        # is exactly what such a user wants.
        from telemetry_core.local_store import LocalStore

        LocalStore(config.db_path).purge()
    what = "remote submission disabled" if remote else "telemetry disabled"
    click.echo(f"{what.capitalize()} for {opts.app}.")
    if purge:
        click.echo(f"Local telemetry data deleted ({config.db_path}).")


# -- queue and submission -------------------------------------------------------


_DELTA_FIELDS: Final = {
    "sent": "events_sent",
    "accepted": "events_accepted",
    "duplicates": "events_duplicate",
    "rejected": "events_rejected",
    "failed": "failed",
}


@click.command()
@click.option("--retry-dead", is_flag=True, help="Revive dead entries before sending.")
@_json_option
@pass_options
def submit(opts: CliOptions, retry_dead: bool, as_json: bool) -> None:
    """Send queued events now and print what the collector said.

    Exits with status 1 when events remain undelivered because of an error.
    """
    config = opts.config()
    if config.do_not_track:
        raise click.ClickException("DO_NOT_TRACK is set: nothing is sent")
    if not config.sending:
        raise click.ClickException(
            "remote submission is off: run `telemetry enable --remote --endpoint URL` first"
        )
    notes: list[str] = []
    with opts.service(config, notes) as svc:
        revived = svc.retry_dead() if retry_dead else 0
        queue_before = svc.queue_stats()
        before = svc.get_submission_stats()
        total = queue_before.due
        show_bar = (
            not as_json
            and total > PROGRESS_MIN_BATCHES * config.submission_batch_size
            and _stdout_is_tty()
        )
        if show_bar:
            with click.progressbar(length=total, label="Submitting", file=sys.stdout) as bar:

                def progress(done: int, new_total: int) -> None:
                    bar.length = max(total if bar.length is None else bar.length, new_total)
                    if done > bar.pos:
                        bar.update(done - bar.pos)

                svc.submit_now(progress=progress)
        else:
            svc.submit_now()
        after = svc.get_submission_stats()
        queue_after = svc.queue_stats()
    summary: dict[str, Any] = {
        name: getattr(after, field) - getattr(before, field)
        for name, field in _DELTA_FIELDS.items()
    }
    summary.update(
        revived=revived,
        pending=queue_after.pending,
        dead=queue_after.dead,
        last_error=after.last_error if summary["failed"] else None,
    )
    undelivered = summary["failed"] > 0 and (
        queue_after.pending > 0 or queue_after.dead > queue_before.dead
    )
    if as_json:
        _emit_json(summary)
    else:
        if revived:
            click.echo(f"Revived {revived} dead entries.")
        click.echo(
            "Sent {sent}: {accepted} accepted, {duplicates} duplicates, {rejected} rejected; "
            "{failed} failed requests. Queue: {pending} pending, {dead} dead.".format(**summary)
        )
    if undelivered:
        hint = (
            "; dead letters are kept locally, `telemetry submit --retry-dead` resends them"
            if queue_after.dead > queue_before.dead
            else "; they stay queued and are retried later"
        )
        raise click.ClickException(
            f"{queue_after.pending + queue_after.dead} events not delivered: "
            f"{summary['last_error'] or 'submission failed'}{hint}"
        )
    for note in notes:
        click.echo(f"Warning: {note}", err=True)


@click.command()
@_json_option
@pass_options
def queue(opts: CliOptions, as_json: bool) -> None:
    """Show the submission queue."""
    config = opts.config()
    with opts.service(config) as svc:
        data = _queue_dict(svc.queue_stats())
    if as_json:
        _emit_json(data)
        return
    click.echo(f"pending: {data['pending']} (due {data['due']}, leased {data['leased']})")
    click.echo(f"dead:    {data['dead']}")
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(data["dropped"].items())) or "0"
    click.echo(f"dropped: {dropped}")
    if data["oldest_enqueued_at"] is not None:
        click.echo(f"oldest:  {_fmt_time(data['oldest_enqueued_at'])}")


@click.command()
@click.option(
    "--type",
    "kind",
    type=click.Choice(["submission", "events"]),
    default="submission",
    show_default=True,
    help="Submission history, or local events by type.",
)
@_json_option
@pass_options
def stats(opts: CliOptions, kind: str, as_json: bool) -> None:
    """Show submission statistics, or local event counts."""
    config = opts.config()
    with opts.service(config) as svc:
        if kind == "events":
            counts = {str(k): int(v) for k, v in svc.event_counts().items()}
            data: dict[str, Any] = {"total": sum(counts.values()), "by_type": counts}
        else:
            data = _jsonable(_submission_dict(svc.get_submission_stats()))
    if as_json:
        _emit_json(data)
        return
    if kind == "events":
        width = max((len(t) for t in data["by_type"]), default=5)
        for event_type, count in sorted(data["by_type"].items(), key=lambda kv: (-kv[1], kv[0])):
            click.echo(f"{event_type:<{width}}  {count:>8}")
        click.echo(f"{'total':<{width}}  {data['total']:>8}")
        return
    shown = dict(data)
    shown["success_rate"] = f"{100 * data['success_rate']:.1f}%"
    shown["last_submission_at"] = _fmt_time(data["last_submission_at"])
    _echo_mapping(shown)


# -- configuration ----------------------------------------------------------------


def _key_spec(key: str) -> tuple[str, type, float]:
    from telemetry_core.config import STORED_KEYS

    spec = STORED_KEYS.get(key)
    if spec is None:
        raise click.ClickException(
            f"unknown config key {key!r}; known keys: {', '.join(sorted(STORED_KEYS))}"
        )
    return spec


def _parse_stored(key: str, raw: str) -> tuple[Any, str]:
    """Parse ``raw`` for ``key``: (value for the config field, text to store)."""
    _field, kind, scale = _key_spec(key)
    text = raw.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True, "true"
            if lowered in {"0", "false", "no", "off"}:
                return False, "false"
            raise ValueError(text)
        if kind is int:
            number = int(text)
            if number <= 0:
                raise click.ClickException(f"invalid {key}: must be > 0, got {raw!r}")
            return number, str(number)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            if value <= 0:
                raise click.ClickException(f"invalid {key}: must be > 0, got {raw!r}")
            return value / scale, text
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise click.ClickException(f"invalid {key}: expected {expected}, got {raw!r}") from None
    if not text:
        raise click.ClickException(f"invalid {key}: empty value (use `config unset {key}`)")
    return text, text


def _env_name(app: str, field: str) -> str | None:
    from telemetry_core.config import ENV_KEYS, env_prefix

    for suffix, spec in ENV_KEYS.items():
        if spec[0] == field:
            return env_prefix(app) + suffix
    return None


def _display_value(key: str, value: Any, show_secret: bool) -> Any:
    _field, kind, scale = _key_spec(key)
    if value is None:
        return None
    if key in SECRET_KEYS and not show_secret:
        return mask_secret(str(value))
    if kind is float and scale != 1:
        value = value * scale
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _config_entries(opts: CliOptions, keys: Sequence[str], show_secret: bool) -> dict[str, Any]:
    from telemetry_core.config import read_stored_config

    config = opts.config()
    stored = read_stored_config(config.db_path)
    result: dict[str, Any] = {}
    for key in keys:
        field, _kind, _scale = _key_spec(key)
        env = _env_name(opts.app, field)
        if env is not None and os.environ.get(env):
            source = "environment"
        elif key in stored:
            source = "stored"
        else:
            source = "default"
        result[key] = {
            "value": _display_value(key, getattr(config, field), show_secret),
            "source": source,
            "env": env,
        }
    return result


@click.group(name="config", cls=click.Group)
def config_group() -> None:
    """Read and change stored settings (environment variables take precedence)."""


# ignore_unknown_options lets a negative VALUE through to the validator's message.
@config_group.command(name="set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@pass_options
def config_set(opts: CliOptions, key: str, value: str) -> None:
    """Store KEY = VALUE (submission-interval in milliseconds)."""
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.errors import ConfigError
    from telemetry_core.local_store import LocalStore

    field, _kind, _scale = _key_spec(key)
    parsed, text = _parse_stored(key, value)
    db_path = opts.resolved_db_path()
    try:
        TelemetryConfig(app=opts.app, db_path=db_path, do_not_track=False, **{field: parsed})
    except ConfigError as exc:
        reason = _one_line(exc).removeprefix(f"invalid {exc.setting}: ")
        raise click.ClickException(f"invalid {key}: {reason}") from None
    store = LocalStore(db_path)
    try:
        store.set_config(key, text)
    finally:
        store.close()
    env = _env_name(opts.app, field)
    shown = mask_secret(text) if key in SECRET_KEYS else text
    click.echo(f"{key} = {shown}")
    if env is not None and os.environ.get(env):
        click.echo(f"Note: {env} is set and takes precedence over the stored value.", err=True)


@config_group.command(name="unset")
@click.argument("key")
@pass_options
def config_unset(opts: CliOptions, key: str) -> None:
    """Remove the stored value of KEY (back to the default)."""
    from telemetry_core.local_store import LocalStore

    _key_spec(key)
    db_path = opts.resolved_db_path()
    if not db_path.exists():
        click.echo(f"{key} is not set.")
        return
    store = LocalStore(db_path)
    try:
        store.delete_config(key)
    finally:
        store.close()
    click.echo(f"{key} unset.")


@config_group.command(name="get")
@click.argument("key")
@click.option("--show-secret", is_flag=True, help="Print the API key unmasked.")
@_json_option
@pass_options
def config_get(opts: CliOptions, key: str, show_secret: bool, as_json: bool) -> None:
    """Print the effective value of KEY."""
    entry = _config_entries(opts, [key], show_secret)[key]
    if as_json:
        _emit_json({"key": key, **entry})
        return
    click.echo("" if entry["value"] is None else _fmt_value(entry["value"]))


@config_group.command(name="list")
@click.option("--show-secret", is_flag=True, help="Print the API key unmasked.")
@_json_option
@pass_options
def config_list(opts: CliOptions, show_secret: bool, as_json: bool) -> None:
    """Print every setting with its effective value and where it comes from."""
    from telemetry_core.config import STORED_KEYS

    entries = _config_entries(opts, sorted(STORED_KEYS), show_secret)
    if as_json:
        _emit_json(entries)
        return
    width = max(len(k) for k in entries)
    for key, entry in entries.items():
        value = _fmt_value(entry["value"])
        source = entry["source"] + (f" {entry['env']}" if entry["source"] == "environment" else "")
        click.echo(f"{key:<{width}}  {value}  ({source})")


# -- plugins ----------------------------------------------------------------------


@click.command()
@_json_option
@pass_options
def plugins(opts: CliOptions, as_json: bool) -> None:
    """List loaded plugins and the providers they offer."""
    from telemetry_core.plugin_host import PluginHost

    config = opts.config()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host = PluginHost(strict=False)
        records = host.plugins()
    notes = [" ".join(str(w.message).split()) for w in caught]
    selected = {
        "transport": config.transport,
        "storage": config.storage,
        "backoff": config.backoff,
        "limiter": config.limiter,
    }
    if as_json:
        _emit_json(
            {
                "plugins": [_jsonable(record) for record in records],
                "selected": selected,
                "warnings": notes,
            }
        )
    else:
        for record in records:
            origin = "bundled" if record.bundled else (record.distribution or "registered")
            version = f" {record.version}" if record.version else ""
            click.echo(f"{record.name} ({origin}{version}) {record.module}")
            for info in record.providers:
                mark = " *" if selected.get(info.kind) == info.name else ""
                desc = f" - {info.description}" if info.description else ""
                click.echo(f"  {info.kind}: {info.name}{mark}{desc}")
        click.echo("* = selected by the configuration")
    for note in notes:
        click.echo(f"Warning: {note}", err=True)


# -- the group ------------------------------------------------------------------------

_COMMANDS: Final = (status, enable, disable, submit, queue, stats, config_group, plugins)


def make_cli(app: str | None = None) -> click.Group:
    """Build the ``telemetry`` click group, with ``app`` preset when given.

    Mount it into an app's CLI with ``cli.add_command(make_cli("myapp"),
    name="telemetry")``. Without ``app``, ``--app`` defaults to ``TELEMETRY_APP``
    or ``automatosx``.
    """
    if app is None:
        app_option = click.option(
            "--app",
            envvar=APP_ENV,
            default=DEFAULT_APP,
            show_default=True,
            show_envvar=True,
            help="Application whose telemetry to manage.",
        )
    else:
        app_option = click.option(
            "--app", default=app, show_default=True, help="Application whose telemetry to manage."
        )

    @click.group(name="telemetry", cls=TelemetryGroup)
    @click.version_option(package_name="telemetry-core", prog_name="telemetry")
    @app_option
    @click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Telemetry database (default: the platform's user data directory).",
    )
    @click.pass_context
    def group(ctx: click.Context, app: str, db_path: Path | None) -> None:
        """Privacy-first usage telemetry: consent, queue, submission and settings."""
        ctx.obj = CliOptions(app=app, db_path=db_path)

    for command in _COMMANDS:
        group.add_command(command)
    return group


#: The standalone ``telemetry`` group (console script).
telemetry: Final = make_cli()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``telemetry``."""
    telemetry.main(args=list(argv) if argv is not None else None, prog_name="telemetry")


if __name__ == "__main__":
    main()
