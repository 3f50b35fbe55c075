"""The ``telemetry`` command line: consent, queue, submission, configuration, plugins.

Run as the console script ``telemetry`` or mount the group into an app's own click
CLI with its app name preset::

    from telemetry_core.cli import make_cli

    ax.add_command(make_cli("ax", config=load_config), name="telemetry")  # ax telemetry status

Global options: ``--app NAME`` (default: the ``TELEMETRY_APP`` environment variable;
a group made by :func:`make_cli` uses its own app) and ``--db PATH`` (default: the
app's database). Settings follow the precedence of :meth:`TelemetryConfig.from_env
<telemetry_core.config.TelemetryConfig.from_env>`: environment > stored config
(``telemetry config set``) > defaults; a mounting app's configuration
(``make_cli(app, config=...)``) replaces those, under the user's consent.

Every user error ends the command with a non-zero exit status and one line on
stderr, ``Error: ...``; no traceback.

JSON output
-----------

Every read command takes ``--json`` and prints one JSON document on stdout (keys
sorted, two-space indent). The keys of each command are documented in
``docs/client.md`` ("JSON output of the telemetry command"); a test keeps that
list complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from telemetry_core.errors import TelemetryError

if TYPE_CHECKING:
    from telemetry_core.config import Setting, TelemetryConfig
    from telemetry_core.models import QueueStats, SubmissionStats, SubmitCall
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


class CliOptions:
    """The group's global options and the mounting app's configuration, per command.

    :param prog: the command path users type (``telemetry`` or ``ax telemetry``),
        used in every hint the commands print.
    :param app_config: the mounting app's configuration, or a zero-argument
        callable returning it, called lazily, at most once per command.
    """

    # A plain class: importing attrs here would add to every `ax --help`.
    __slots__ = ("_resolved", "app", "app_config", "db_path", "prog")

    def __init__(
        self, *, app: str, db_path: Path | None, prog: str = "telemetry", app_config: Any = None
    ) -> None:
        self.app = app
        self.db_path = db_path
        self.prog = prog
        self.app_config = app_config
        self._resolved: TelemetryConfig | None = None

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
    def service(self, config: TelemetryConfig) -> Iterator[TelemetryService]:
        """A service for one command, closed afterwards.

        The service never starts a background worker (``background=False``): a
        one-shot command sends, if at all, in its own thread. The library's log
        warnings become ``Warning:`` lines after the output (see
        :class:`TelemetryGroup`); when the store cannot be used they are replaced
        by one ``Error:`` line.
        """
        from telemetry_core.errors import PluginError, StorageError
        from telemetry_core.service import TelemetryService

        notes = _notes()
        mark = len(notes)
        svc = TelemetryService(config, background=False)
        try:
            yield svc
        finally:
            svc.close()
        if svc.degraded is not None:
            del notes[mark:]
            kind, _, reason = svc.degraded.partition(": ")
            if kind in ("PluginError", "ConfigError"):
                raise PluginError(reason)
            raise StorageError(f"cannot use the local store {config.db_path}: {reason}")


pass_options = click.make_pass_decorator(CliOptions)


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Collect the library's log warnings so the CLI can show them as one-line
    ``Warning:`` notes after its output, or replace them with one ``Error:`` line."""
    import logging  # at run time only: `ax --help` does not pay for it

    messages: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = " ".join(record.getMessage().split()).removeprefix("telemetry-core: ")
            if message not in messages:
                messages.append(message)

    logger = logging.getLogger("telemetry_core")
    handler = ListHandler(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _notes() -> list[str]:
    """The warnings collected for the running command (see TelemetryGroup.invoke)."""
    ctx = click.get_current_context(silent=True)
    notes = ctx.meta.get(_NOTES_KEY) if ctx is not None else None
    return notes if isinstance(notes, list) else []


_NOTES_KEY: Final = "telemetry_core.notes"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _show_warning(message: Warning | str, *_where: Any, **_extra: Any) -> None:
    text = " ".join(str(message).split()) or type(message).__name__
    click.echo(f"Warning: {text}", err=True)


class TelemetryGroup(click.Group):
    """A click group that turns telemetry-core errors into one ``Error:`` line
    and the library's warnings into ``Warning:`` lines after the output.

    Because this happens in :meth:`invoke`, it also applies when the group is
    mounted under an app's own CLI. A closed pipe (``status | head -1``) is left
    to click, which ends quietly.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; report :class:`TelemetryError` and ``OSError`` as one line."""
        opts = ctx.obj if isinstance(ctx.obj, CliOptions) else None
        localize = opts.localize if opts is not None else (lambda text: text)
        with warnings.catch_warnings(), _captured_warnings() as notes:
            warnings.showwarning = _show_warning
            ctx.meta[_NOTES_KEY] = notes
            try:
                result = super().invoke(ctx)
            except TelemetryError as exc:
                raise click.ClickException(localize(_one_line(exc))) from None
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise click.ClickException(_one_line(exc)) from None
            # Only after success: a failed command says one thing, its Error: line.
            for note in notes:
                click.echo(f"Warning: {localize(note)}", err=True)
            return result


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _emit_json(data: Any) -> None:
    import json

    click.echo(json.dumps(_jsonable(data), indent=2, sort_keys=True, default=str))


def _json_option(func: _F) -> _F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (keys in docs/operations.md)."
    )(func)


def _fmt_time(ts: float | None, now: float | None = None) -> str:
    """``2026-12-07 02:15:00 +0000``, with ``(in 45 s)`` for a time to come."""
    if ts is None or not ts:
        return "never"
    text = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(ts))
    if now is not None and ts > now:
        text += f" (in {_fmt_duration(ts - now)})"
    return text


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _plural(count: int, word: str) -> str:
    """``1 event``, ``2 events``, ``1 entry``, ``3 entries``."""
    if count == 1:
        return f"{count:,} {word}"
    plural = word[:-1] + "ies" if word.endswith("y") else word + "s"
    return f"{count:,} {plural}"


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
        elif key.endswith("_at") or key.endswith("_until"):
            click.echo(f"{label} {_fmt_time(value, time.time())}")
        else:
            click.echo(f"{label} {_fmt_value(value)}")


def _queue_dict(stats: QueueStats) -> dict[str, Any]:
    return {
        "pending": stats.pending,
        "due": stats.due,
        "leased": stats.leased,
        "dead": stats.dead,
        "parked": stats.parked,
        "next_attempt_at": stats.next_attempt_at,
        "dropped": dict(stats.dropped),
        "oldest_enqueued_at": stats.oldest_enqueued_at,
    }


def _jsonable(value: Any) -> Any:
    import attrs

    if attrs.has(type(value)):
        return _jsonable(attrs.asdict(value, recurse=False))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _shown_endpoint(config: TelemetryConfig) -> str | None:
    """The URL events go to: the https transport completes an empty path."""
    from telemetry_core.config import complete_endpoint

    if config.endpoint is not None and config.transport == "https":
        return complete_endpoint(config.endpoint)
    return config.endpoint


# -- consent ------------------------------------------------------------------


def _status_data(opts: CliOptions, config: TelemetryConfig) -> dict[str, Any]:
    with opts.service(config) as svc:
        reported: dict[str, Any] = _jsonable(svc.status())
        queue = svc.queue_stats()
        warning = svc.queue_warning(queue)
        stats = svc.get_submission_stats()
    fixed = [
        name for name in ("endpoint", "api_key", "ca_bundle", "db_path")
        if opts.fixed_in_code(name) is not None
    ]  # fmt: skip
    data: dict[str, Any] = dict(
        app=config.app,
        db_path=str(config.db_path),
        enabled=config.enabled,
        remote_enabled=config.remote_enabled,
        endpoint=_shown_endpoint(config),
        do_not_track=config.do_not_track,
        recording=config.recording,
        sending=config.sending,
        transport=config.transport,
        set_in_code=fixed,
        problems=list(config.problems),
        queue_warning=opts.localize(warning) if warning else None,
        last_submission_at=stats.last_submission_at,
        last_error=stats.last_error,
        last_error_at=stats.last_error_at,
    )
    data.update((k, v) for k, v in reported.items() if k not in data)
    data["queue"] = _queue_dict(queue)
    return data


@click.command()
@_json_option
@pass_options
def status(opts: CliOptions, as_json: bool) -> None:
    """Show consent, endpoint and queue state."""
    config = opts.config()
    data = _status_data(opts, config)
    if as_json:
        _emit_json(data)
        return
    now = time.time()
    if config.do_not_track:
        click.echo("DO_NOT_TRACK is set: nothing is recorded or sent, whatever the settings say.")
    elif config.sending:
        target = data["endpoint"] or config.transport
        click.echo(f"Telemetry for {config.app}: enabled, sending to {target}.")
    elif config.recording:
        why = "remote submission is off" if not config.remote_enabled else "no endpoint is set"
        click.echo(f"Telemetry for {config.app}: enabled, recording locally ({why}).")
    else:
        click.echo(f"Telemetry for {config.app}: disabled (run {opts.hint('enable')} to consent).")
    queue = data["queue"]
    fixed = set(data["set_in_code"])
    rows: dict[str, str] = {
        "db_path": data["db_path"] + (" (set in code)" if "db_path" in fixed else ""),
        "enabled": _fmt_value(config.recording),
        "sending": _fmt_value(config.sending),
        "endpoint": _fmt_value(data["endpoint"])
        + (" (set in code)" if "endpoint" in fixed else ""),
        "api_key": ("set" if config.api_key else "not set")
        + (" (in code)" if "api_key" in fixed else ""),
        "ca_bundle": _fmt_value(config.ca_bundle),
        "transport": config.transport,
        "install_id": _fmt_value(data.get("install_id")),
        "queue": (
            f"{_plural(queue['pending'], 'event')} pending ({queue['due']:,} due now), "
            f"{queue['dead']:,} dead" + (f", {queue['parked']:,} parked" if queue["parked"] else "")
        ),
    }
    if data.get("spilled"):
        rows["spilled"] = f"{_plural(data['spilled'], 'event')} waiting for a locked database"
    if queue["next_attempt_at"]:
        rows["next_attempt"] = _fmt_time(queue["next_attempt_at"], now)
    rows["last_submission"] = _fmt_time(data["last_submission_at"])
    if data["last_error"]:
        rows["last_error"] = f"{data['last_error']} ({_fmt_time(data['last_error_at'])})"
    width = max(len(k) for k in rows) + 1
    for key, value in rows.items():
        click.echo(f"  {key + ':':<{width}} {value}")
    for problem in data["problems"]:
        click.echo(f"  ignored: {problem}")
    if data["queue_warning"]:
        click.echo(f"Warning: {data['queue_warning']}", err=True)


def _no_sending_hint(opts: CliOptions, config: TelemetryConfig) -> str:
    if not config.remote_enabled:
        flag = "" if config.endpoint or config.transport != "https" else " --endpoint URL"
        return f"remote submission is off: run {opts.hint('enable --remote' + flag)} first"
    return f"no endpoint is set: run {opts.hint('enable --remote --endpoint URL')} first"


@click.command()
@click.option("--remote", is_flag=True, help="Also send recorded events to the endpoint.")
@click.option(
    "--endpoint",
    metavar="URL",
    help="Collector URL (https://host:port; the path defaults to /v1/submit); implies --remote.",
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
    in_code = opts.fixed_in_code("endpoint")
    if endpoint is not None and in_code is not None and endpoint != in_code:
        raise click.ClickException(
            f"{opts.app} sets its endpoint in code ({in_code}); --endpoint cannot change it. "
            f"Nothing was changed; run {opts.hint('enable --remote')} to send there"
        )
    config = opts.config(**({"endpoint": endpoint} if endpoint is not None else {}))
    if remote and not config.sending and config.endpoint is None:
        raise click.ClickException(
            "remote submission needs an endpoint: pass --endpoint URL "
            f"(or run {opts.hint('config set remote-endpoint URL')})"
        )
    with opts.service(config) as svc:
        svc.enable(remote=remote, endpoint=endpoint)
    target = _shown_endpoint(config) or config.transport
    where = f"sending to {target}" if remote else "remote submission off"
    click.echo(f"Telemetry enabled for {opts.app}: recording locally, {where}.")


@click.command()
@click.option("--remote", is_flag=True, help="Only stop sending; keep recording locally.")
@click.option("--purge", is_flag=True, help="Also delete all local telemetry data.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --purge deletes data.")
@pass_options
def disable(opts: CliOptions, remote: bool, purge: bool, yes: bool) -> None:
    """Withdraw consent (with --remote: only for sending)."""
    from telemetry_core.errors import StorageError
    from telemetry_core.local_store import foreign_reason, purge_files

    config = opts.config()
    # Refuse a file that is not ours before asking anything: never delete it.
    reason = foreign_reason(config.db_path) if purge else None
    if reason is not None:
        raise StorageError(reason)
    if purge and not yes:
        click.confirm(f"Delete all local telemetry data in {config.db_path}?", abort=True, err=True)
    try:
        with opts.service(config) as svc:
            svc.disable(remote_only=remote, purge=purge)
    except StorageError:
        if not purge:
            raise
        purge_files(config.db_path)  # ours, but unusable (an old layout): delete it anyway
    if opts.app_defaults() is not None and not config.do_not_track:
        # The app's code consents by default: the withdrawal must be stored
        # even before the app made its database, or the next run would send.
        from telemetry_core.local_store import LocalStore

        store = LocalStore(config.db_path)
        try:
            store.set_config("remote-enabled", "false")
            if not remote:
                store.set_config("enabled", "false")
        finally:
            store.close()
    if purge and config.do_not_track and config.db_path.exists():
        # The service writes nothing under DO_NOT_TRACK, but deleting local data
        # is exactly what such a user wants.
        purge_files(config.db_path)
    what = "remote submission disabled" if remote else "telemetry disabled"
    click.echo(f"{what.capitalize()} for {opts.app}.")
    if purge:
        click.echo(f"Local telemetry data deleted ({config.db_path}).")


# -- queue and submission -------------------------------------------------------


def _submit_report(
    opts: CliOptions, call: SubmitCall, queue: QueueStats, revived: int
) -> list[str]:
    """Human lines for one submit: what went out, then why it stopped and when next."""
    now = time.time()
    lines = []
    if revived:
        lines.append(f"Revived {_plural(revived, 'dead entry')}.")
    lines.append(
        f"Sent {_plural(call.sent, 'event')}: {call.accepted:,} accepted, "
        f"{_plural(call.duplicates, 'duplicate')}, {call.rejected:,} rejected"
        + (f"; {_plural(call.failed, 'failed request')}" if call.failed else "")
        + f". Queue: {queue.pending:,} pending, {queue.dead:,} dead."
    )
    if call.stopped == "rate_limited":
        lines.append(
            f"The client rate limit paused sending: {_plural(queue.due, 'event')} wait; more "
            f"can go at {_fmt_time(call.retry_at, now)}. They are sent automatically, or run "
            f"{opts.hint('submit')} again then."
        )
    elif call.stopped == "limit":
        lines.append(f"More events are due: run {opts.hint('submit')} again.")
    return lines


#: ``submit`` waits out a collector's ``Retry-After`` up to this long (seconds),
#: then sends; a longer pause is reported with its end instead.
SUBMIT_MAX_WAIT: Final = 60.0


def _wait_for_server_pause(
    opts: CliOptions, svc: TelemetryService, stats: SubmissionStats, as_json: bool
) -> SubmissionStats:
    """When the collector asked for a short pause, say until when, wait, and send."""
    call = stats.last_call
    if call is None or call.stopped != "server_pause" or call.retry_at is None:
        return stats
    left = call.retry_at - time.time()
    if not 0 < left <= SUBMIT_MAX_WAIT:
        return stats
    if not as_json:
        click.echo(
            f"The collector asked to wait until {_fmt_time(call.retry_at)} (Retry-After): "
            f"waiting {_fmt_duration(left)} ({opts.hint('submit --force')} sends at once)."
        )
    time.sleep(left)
    return svc.submit_now()


@click.command()
@click.option("--retry-dead", is_flag=True, help="Revive dead entries before sending.")
@click.option(
    "--force", is_flag=True, help="Send even while the collector asked to wait (Retry-After)."
)
@_json_option
@pass_options
def submit(opts: CliOptions, retry_dead: bool, force: bool, as_json: bool) -> None:
    """Send queued events now and print what the collector said.

    Tries now even while the client is backing off after failures; waits for
    a pause the collector asked for (up to a minute, else says until when)
    unless --force. Exits with status 1 when
    events remain undelivered because of an error or such a pause.
    """
    config = opts.config()
    if config.do_not_track:
        raise click.ClickException("DO_NOT_TRACK is set: nothing is sent")
    if not config.sending:
        raise click.ClickException(_no_sending_hint(opts, config))
    with opts.service(config) as svc:
        revived = svc.retry_dead() if retry_dead else 0
        total = svc.queue_stats().due
        batch = config.submission_batch_size
        if not as_json and total > PROGRESS_MIN_BATCHES * batch and _stdout_is_tty():
            with click.progressbar(length=total, label="Submitting", file=sys.stdout) as bar:

                def progress(done: int, new_total: int) -> None:
                    bar.length = max(total if bar.length is None else bar.length, new_total)
                    if done > bar.pos:
                        bar.update(done - bar.pos)

                stats = svc.submit_now(progress=progress, force=force)
        else:
            stats = svc.submit_now(force=force)
        stats = _wait_for_server_pause(opts, svc, stats, as_json)
        queue_after = svc.queue_stats()
    from telemetry_core.models import SubmitCall

    call = stats.last_call or SubmitCall()
    summary: dict[str, Any] = {
        "sent": call.sent,
        "accepted": call.accepted,
        "duplicates": call.duplicates,
        "rejected": call.rejected,
        "failed": call.failed,
        "revived": revived,
        "pending": queue_after.pending,
        "dead": queue_after.dead,
        "last_error": call.error,
        "last_error_at": call.error_at,
        "stopped": call.stopped,
        "retry_at": call.retry_at,
    }
    if as_json:
        _emit_json(summary)
    else:
        for line in _submit_report(opts, call, queue_after, revived):
            click.echo(line)
    now = time.time()
    if call.stopped == "server_pause":
        raise click.ClickException(
            f"nothing sent: the collector asked to wait until {_fmt_time(call.retry_at, now)} "
            f"(Retry-After); events are sent automatically then, or run "
            f"{opts.hint('submit --force')} to send now anyway"
        )
    if call.failed and (queue_after.pending or call.stopped == "retry"):
        when = f"next attempt at {_fmt_time(call.retry_at, now)}, automatically"
        raise click.ClickException(
            f"{_plural(queue_after.pending, 'event')} not delivered: "
            f"{call.error or 'submission failed'}; {when}; run {opts.hint('submit')} to try "
            "again now"
        )
    if call.failed and queue_after.dead:
        raise click.ClickException(
            f"{_plural(queue_after.dead, 'event')} not delivered: the collector refused "
            f"them ({call.error}); they are kept locally as dead letters, "
            f"{opts.hint('submit --retry-dead')} resends them"
        )


@click.command()
@_json_option
@pass_options
def queue(opts: CliOptions, as_json: bool) -> None:
    """Show the submission queue."""
    config = opts.config()
    with opts.service(config) as svc:
        stats = svc.queue_stats()
        warning = svc.queue_warning(stats)
    data = _queue_dict(stats)
    data["warning"] = opts.localize(warning) if warning else None
    if as_json:
        _emit_json(data)
        return
    now = time.time()
    click.echo(f"pending: {data['pending']:,} (due {data['due']:,}, leased {data['leased']:,}"
               + (f", parked {data['parked']:,}" if data["parked"] else "") + ")")  # fmt: skip
    if data["next_attempt_at"]:
        click.echo(f"next:    {_fmt_time(data['next_attempt_at'], now)}")
    click.echo(f"dead:    {data['dead']:,}")
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(data["dropped"].items())) or "0"
    click.echo(f"dropped: {dropped}")
    if data["oldest_enqueued_at"] is not None:
        click.echo(f"oldest:  {_fmt_time(data['oldest_enqueued_at'])}")
    if warning:
        click.echo(f"Warning: {data['warning']}", err=True)


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
            data = _jsonable(svc.get_submission_stats())
            data.pop("last_call", None)
    if as_json:
        _emit_json(data)
        return
    if kind == "events":
        width = max((len(t) for t in data["by_type"]), default=5)
        for event_type, count in sorted(data["by_type"].items(), key=lambda kv: (-kv[1], kv[0])):
            click.echo(f"{event_type:<{width}}  {count:>8,}")
        click.echo(f"{'total':<{width}}  {data['total']:>8,}")
        return
    shown = dict(data)
    shown["success_rate"] = f"{100 * data['success_rate']:.1f}%"
    _echo_mapping(shown)


# -- configuration ----------------------------------------------------------------


def _setting(key: str) -> Setting:
    from telemetry_core.config import SETTINGS_BY_KEY

    setting = SETTINGS_BY_KEY.get(key)
    if setting is None:
        raise click.ClickException(
            f"unknown config key {key!r}; known keys: {', '.join(sorted(SETTINGS_BY_KEY))} "
            "(a plugin option has a dot: PLUGIN.OPTION)"
        )
    return setting


def _display(setting: Setting, value: Any, show_secret: bool) -> Any:
    if value is None:
        return None
    if setting.secret and not show_secret:
        return mask_secret(str(value))
    if isinstance(value, (bool, str)):
        return value
    text = setting.to_text(value)
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _config_entries(opts: CliOptions, keys: Sequence[str], show_secret: bool) -> dict[str, Any]:
    from telemetry_core.config import read_stored_config

    config = opts.config()
    stored = read_stored_config(config.db_path)
    result: dict[str, Any] = {}
    for key in keys:
        setting = _setting(key)
        env = setting.env_name(opts.app)
        if opts.fixed_in_code(setting.field) is not None:
            source = "code"
        elif env is not None and os.environ.get(env):
            source = "environment"
        elif key in stored:
            source = "stored"
        else:
            source = "default"
        result[key] = {
            "value": _display(setting, getattr(config, setting.field), show_secret),
            "source": source,
            "env": env,
            "unit": setting.unit,
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
    """Store KEY = VALUE, in the key's unit (submission-interval in milliseconds).

    A key with a dot (file-drop.path) is a plugin option.
    """
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.errors import ConfigError
    from telemetry_core.local_store import LocalStore

    db_path = opts.resolved_db_path()
    shown = value
    if "." not in key:
        setting = _setting(key)
        if not value.strip():
            raise click.ClickException(f"invalid {key}: empty value (use `config unset {key}`)")
        try:
            parsed = setting.parse(value, key)
            TelemetryConfig(
                app=opts.app, db_path=db_path, do_not_track=False, **{setting.field: parsed}
            )
        except ConfigError as exc:
            reason = exc.reason.removeprefix(f"invalid {exc.setting}: ")
            raise click.ClickException(f"invalid {key}: {reason}") from None
        value = setting.to_text(parsed)
        if setting.field == "ca_bundle":
            # Stored for every process of the app, wherever it runs: an absolute path.
            value = str(Path(value).expanduser().resolve())
        shown = mask_secret(value) if setting.secret else value
    store = LocalStore(db_path)
    try:
        store.set_config(key, value)
    finally:
        store.close()
    click.echo(f"{key} = {shown}")
    if "." in key:
        return
    env = setting.env_name(opts.app)
    if opts.fixed_in_code(setting.field) is not None:
        click.echo(
            f"Note: {opts.app} sets {key} in its code; the stored value is kept but not used.",
            err=True,
        )
    elif env is not None and os.environ.get(env):
        click.echo(f"Note: {env} is set and takes precedence over the stored value.", err=True)


@config_group.command(name="unset")
@click.argument("key")
@pass_options
def config_unset(opts: CliOptions, key: str) -> None:
    """Remove the stored value of KEY (back to the default)."""
    from telemetry_core.local_store import LocalStore

    if "." not in key:
        _setting(key)
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
    from telemetry_core.config import SETTINGS_BY_KEY

    entries = _config_entries(opts, sorted(SETTINGS_BY_KEY), show_secret)
    if as_json:
        _emit_json(entries)
        return
    width = max(len(k) for k in entries)
    for key, entry in entries.items():
        value = _fmt_value(entry["value"])
        unit = (
            f" {entry['unit']}"
            if entry["unit"]
            and entry["value"] is not None
            and not isinstance(entry["value"], (bool, str))
            else ""
        )
        source = entry["source"] + (f" {entry['env']}" if entry["source"] == "environment" else "")
        click.echo(f"{key:<{width}}  {value}{unit}  ({source})")


# -- plugins ----------------------------------------------------------------------


@click.command()
@_json_option
@pass_options
def plugins(opts: CliOptions, as_json: bool) -> None:
    """List loaded plugins and the providers they offer."""
    from telemetry_core.plugin_host import PluginHost

    config = opts.config()
    host = PluginHost(strict=False)
    records = host.plugins()
    # Listed here every time (the log says each only once per install).
    notes = [message.removeprefix("telemetry-core: ") for message in host.load_warnings]
    _notes()[:] = [note for note in _notes() if not note.startswith("skipping plugin")]
    selected = {
        "transport": config.transport,
        "storage": config.storage,
        "backoff": config.backoff,
        "limiter": config.limiter,
    }
    if as_json:
        _emit_json({"plugins": records, "selected": selected, "warnings": notes})
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


def make_cli(app: str | None = None, config: Any = None) -> click.Group:
    """Build the ``telemetry`` click group for mounting into an app's CLI.

    :param app: the app's name (taken from ``config`` when omitted there).
    :param config: the app's :class:`~telemetry_core.config.TelemetryConfig`,
        or a zero-argument callable returning one, called lazily, once per
        command (so ``ax --help`` costs nothing). The commands then act with
        the app's own endpoint, key, CA bundle and db path; the user's consent
        (``disable``, ``DO_NOT_TRACK``) still wins over the app's defaults.

    Mount it with ``cli.add_command(make_cli("ax", config=load_config),
    name="telemetry")``; every hint then names ``ax telemetry …``. Without
    ``app`` and ``config`` (the standalone ``telemetry``), ``--app`` or
    ``TELEMETRY_APP`` names the app.
    """
    if app is None and config is not None and not callable(config):
        app = config.app
    if app is None and config is None:
        app_option = click.option(
            "--app",
            envvar=APP_ENV,
            default=DEFAULT_APP,
            show_envvar=True,
            help="The application whose telemetry to manage (its name in TelemetryConfig).",
        )
    else:
        app_option = click.option(
            "--app", default=app, hidden=True, help="Application whose telemetry to manage."
        )

    @click.group(name="telemetry", cls=TelemetryGroup)
    @click.version_option(package_name="telemetry-core", prog_name="telemetry")
    @app_option
    @click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Telemetry database (default: the app's, else its user data directory).",
    )
    @click.pass_context
    def group(ctx: click.Context, app: str | None, db_path: Path | None) -> None:
        """Privacy-first usage telemetry: consent, queue, submission and settings."""
        source = config
        if app is None and callable(config):
            source = config()  # the name is needed now: call it (once) here
            app = source.app
        ctx.obj = CliOptions(
            app=app or DEFAULT_APP, db_path=db_path, prog=ctx.command_path, app_config=source
        )

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
