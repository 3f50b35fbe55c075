"""The ``telemetry`` command line, driven with click's CliRunner on real SQLite files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import trustme
from click.testing import CliRunner, Result

from telemetry_core import cli
from telemetry_core.config import STORED_KEYS, TelemetryConfig
from telemetry_core.service import TelemetryService
from tests.fake_collector import FakeCollector, Reply

APP = "automatosx"

STATUS_KEYS = {
    "app",
    "db_path",
    "enabled",
    "remote_enabled",
    "endpoint",
    "do_not_track",
    "recording",
    "sending",
    "queue",
}
QUEUE_KEYS = {
    "pending",
    "due",
    "leased",
    "dead",
    "parked",
    "next_attempt_at",
    "dropped",
    "oldest_enqueued_at",
}
SUBMISSION_KEYS = {
    "submissions",
    "successful",
    "failed",
    "events_sent",
    "events_accepted",
    "events_rejected",
    "events_duplicate",
    "retries",
    "network_errors",
    "success_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "last_submission_at",
    "last_error",
    "queue_size",
    "dead",
    "last_error_at",
}
SUBMIT_KEYS = {
    "sent",
    "accepted",
    "duplicates",
    "rejected",
    "failed",
    "revived",
    "pending",
    "dead",
    "last_error",
    "last_error_at",
    "stopped",
    "retry_at",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if "_TELEMETRY_" in name or name in {"DO_NOT_TRACK", cli.APP_ENV}:
            monkeypatch.delenv(name)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "telemetry.db"


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    ca = trustme.CA()
    server = FakeCollector(ca)
    try:
        yield server
    finally:
        server.close()


def run(
    db: Path | None,
    *args: str,
    group: click.Group | None = None,
    env: dict[str, str | None] | None = None,
    input: str | None = None,
) -> Result:
    """Invoke the CLI; a Python exception escaping it fails the test."""
    argv = (["--db", str(db)] if db is not None else []) + list(args)
    result = CliRunner().invoke(group or cli.telemetry, argv, env=env, input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(db: Path | None, *args: str, **kwargs: Any) -> Result:
    result = run(db, *args, **kwargs)
    assert result.exit_code == 0, result.output
    return result


def as_json(db: Path | None, *args: str, **kwargs: Any) -> Any:
    return json.loads(ok(db, *args, "--json", **kwargs).stdout)


def assert_one_error_line(result: Result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def record(db: Path, count: int, event_type: str = "command_executed") -> list[str]:
    """Record events the way an app does: configuration from env and stored consent."""
    config = TelemetryConfig.from_env(APP, db)
    # No background worker, so the events stay queued for the command under test.
    service = TelemetryService(config, background=False)
    try:
        ids = [
            service.track(event_type, {"command": "run", "n": i}, duration_ms=1.5, success=True)
            for i in range(count)
        ]
    finally:
        service.close()
    assert all(ids), "consent should be on"
    return [i for i in ids if i is not None]


# -- help, app and mounting ----------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = ok(None, "--help")
    for command in ("status", "enable", "disable", "submit", "queue", "stats", "config", "plugins"):
        assert command in result.stdout
    assert cli.APP_ENV in result.stdout


def test_status_of_a_fresh_install_is_off(db: Path) -> None:
    data = as_json(db, "status")
    assert set(data) >= STATUS_KEYS
    assert data["app"] == APP
    assert data["db_path"] == str(db)
    assert data["enabled"] is False
    assert data["remote_enabled"] is False
    assert data["endpoint"] is None
    assert data["do_not_track"] is False
    assert set(data["queue"]) >= QUEUE_KEYS
    human = ok(db, "status").stdout
    assert "enabled" in human
    assert "DO_NOT_TRACK" not in human


def test_app_from_environment(db: Path) -> None:
    data = as_json(db, "status", env={cli.APP_ENV: "otherapp"})
    assert data["app"] == "otherapp"
    assert as_json(db, "--app", "third", "status")["app"] == "third"


def test_invalid_app_is_one_error_line(db: Path) -> None:
    assert_one_error_line(run(db, "--app", "Not An App", "status"), "app")


def test_mounted_group_has_its_app_preset(db: Path) -> None:
    @click.group()
    @click.pass_context
    def ax(ctx: click.Context) -> None:
        """The host app's own CLI, with its own context object."""
        ctx.obj = {"host": "ax"}

    ax.add_command(cli.make_cli("myapp"), name="telemetry")
    result = CliRunner().invoke(
        ax, ["telemetry", "--db", str(db), "status", "--json"], env={cli.APP_ENV: "ignored"}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["app"] == "myapp"

    result = CliRunner().invoke(ax, ["telemetry", "--db", str(db), "config", "get", "nope"])
    assert_one_error_line(result, "unknown config key")

    result = CliRunner().invoke(ax, ["telemetry", "--db", str(db), "enable"])
    assert result.exit_code == 0, result.output
    assert "myapp" in result.stdout
    assert as_json(db, "--app", "myapp", "status")["enabled"] is True


# -- consent ---------------------------------------------------------------------------


def test_enable_and_disable_round_trip(db: Path) -> None:
    result = ok(db, "enable")
    assert "recording locally" in result.stdout
    data = as_json(db, "status")
    assert (data["enabled"], data["remote_enabled"], data["recording"]) == (True, False, True)

    ok(db, "enable", "--endpoint", "https://127.0.0.1:9/v1/submit")
    data = as_json(db, "status")
    assert data["remote_enabled"] is True
    assert data["sending"] is True
    assert data["endpoint"] == "https://127.0.0.1:9/v1/submit"

    ok(db, "disable", "--remote")
    data = as_json(db, "status")
    assert (data["enabled"], data["remote_enabled"]) == (True, False)

    ok(db, "disable")
    data = as_json(db, "status")
    assert (data["enabled"], data["sending"]) == (False, False)


def test_enable_remote_needs_an_endpoint(db: Path) -> None:
    assert_one_error_line(run(db, "enable", "--remote"), "endpoint")
    assert as_json(db, "status")["enabled"] is False


@pytest.mark.parametrize(
    "endpoint", ["http://collector.example/v1/submit", "not a url", "ftp://127.0.0.1/x"]
)
def test_enable_rejects_a_bad_endpoint(db: Path, endpoint: str) -> None:
    assert_one_error_line(run(db, "enable", "--endpoint", endpoint), "endpoint")


def test_do_not_track_wins_and_is_reported(db: Path) -> None:
    env = {"DO_NOT_TRACK": "1"}
    assert_one_error_line(run(db, "enable", env=env), "DO_NOT_TRACK")
    assert not db.exists()
    data = as_json(db, "status", env=env)
    assert data["do_not_track"] is True
    assert data["recording"] is False
    assert data["sending"] is False
    assert "DO_NOT_TRACK is set" in ok(db, "status", env=env).stdout
    assert_one_error_line(run(db, "submit", env=env), "DO_NOT_TRACK")
    assert not db.exists()


def test_purge_works_under_do_not_track(db: Path) -> None:
    ok(db, "enable")
    record(db, 2)
    ok(db, "disable", "--purge", "--yes", env={"DO_NOT_TRACK": "1"})
    assert not db.exists()


def test_disable_purge_asks_before_deleting(db: Path) -> None:
    ok(db, "enable")
    record(db, 3)
    result = run(db, "disable", "--purge", input="n\n")
    assert result.exit_code != 0
    assert as_json(db, "stats", "--type", "events")["total"] == 3

    result = ok(db, "disable", "--purge", input="y\n")
    assert "deleted" in result.stdout
    assert as_json(db, "stats", "--type", "events")["total"] == 0
    assert as_json(db, "status")["enabled"] is False


def test_disable_purge_yes_does_not_ask(db: Path) -> None:
    ok(db, "enable")
    record(db, 2)
    ok(db, "disable", "--purge", "--yes")
    assert as_json(db, "stats", "--type", "events")["total"] == 0


# -- queue and stats -------------------------------------------------------------------


def test_queue_counts_what_was_recorded_for_sending(db: Path) -> None:
    assert as_json(db, "queue")["pending"] == 0
    ok(db, "enable", "--endpoint", "https://127.0.0.1:9/v1/submit")
    record(db, 4)
    data = as_json(db, "queue")
    assert set(data) == QUEUE_KEYS | {"warning"}
    assert data["pending"] == 4
    assert data["due"] == 4
    assert data["dead"] == 0
    assert "pending: 4" in ok(db, "queue").stdout


def test_local_only_events_are_counted_but_not_queued(db: Path) -> None:
    ok(db, "enable")
    record(db, 2, "command_executed")
    record(db, 3, "session_started")
    assert as_json(db, "queue")["pending"] == 0
    data = as_json(db, "stats", "--type", "events")
    assert data == {"total": 5, "by_type": {"command_executed": 2, "session_started": 3}}
    human = ok(db, "stats", "--type", "events").stdout
    assert "session_started" in human
    assert "total" in human


def test_submission_stats_shape(db: Path) -> None:
    data = as_json(db, "stats")
    assert set(data) == SUBMISSION_KEYS
    assert data["submissions"] == 0
    assert "success_rate" in ok(db, "stats").stdout


def test_unknown_stats_type_is_a_usage_error(db: Path) -> None:
    result = run(db, "stats", "--type", "bogus")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- configuration ----------------------------------------------------------------------


def test_config_set_get_round_trip(db: Path) -> None:
    ok(db, "config", "set", "submission-batch-size", "50")
    assert ok(db, "config", "get", "submission-batch-size").stdout.strip() == "50"
    data = as_json(db, "config", "get", "submission-batch-size")
    assert data == {
        "key": "submission-batch-size",
        "value": 50,
        "source": "stored",
        "env": "AUTOMATOSX_TELEMETRY_BATCH_SIZE",
        "unit": "events",
    }
    ok(db, "config", "set", "submission-interval", "60000")
    assert as_json(db, "config", "get", "submission-interval")["value"] == 60000
    assert TelemetryConfig.from_env(APP, db).submission_interval == 60.0


def test_config_default_and_environment_sources(db: Path) -> None:
    data = as_json(db, "config", "get", "submission-interval")
    assert (data["value"], data["source"]) == (300000, "default")
    ok(db, "config", "set", "submission-rate-limit", "10")
    env = {"AUTOMATOSX_TELEMETRY_RATE_LIMIT": "20"}
    data = as_json(db, "config", "get", "submission-rate-limit", env=env)
    assert (data["value"], data["source"]) == (20, "environment")
    result = ok(db, "config", "set", "submission-rate-limit", "30", env=env)
    assert "AUTOMATOSX_TELEMETRY_RATE_LIMIT" in result.stderr


def test_config_unset(db: Path) -> None:
    ok(db, "config", "set", "submission-batch-size", "7")
    ok(db, "config", "unset", "submission-batch-size")
    data = as_json(db, "config", "get", "submission-batch-size")
    assert (data["value"], data["source"]) == (100, "default")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("submission-batch-size", "many", "submission-batch-size"),
        ("submission-batch-size", "0", "submission-batch-size"),
        ("submission-interval", "-5", "submission-interval"),
        ("submission-interval", "nan", "submission-interval"),
        ("remote-endpoint", "http://collector.example/v1/submit", "remote-endpoint"),
        ("remote-endpoint", "https://", "remote-endpoint"),
        ("enabled", "maybe", "enabled"),
        ("no-such-key", "1", "submission-batch-size"),
    ],
)
def test_config_set_rejects_bad_values(db: Path, key: str, value: str, fragment: str) -> None:
    assert_one_error_line(run(db, "config", "set", key, value), fragment)
    assert as_json(db, "config", "list")["submission-batch-size"]["source"] == "default"


def test_config_get_unknown_key(db: Path) -> None:
    assert_one_error_line(run(db, "config", "get", "nope"), "unknown config key", "remote-api-key")


def test_api_key_is_masked_unless_asked(db: Path) -> None:
    secret = "tk_live_0123456789abcdefWXYZ"
    result = ok(db, "config", "set", "remote-api-key", secret)
    assert secret not in result.output
    shown = ok(db, "config", "get", "remote-api-key").stdout.strip()
    assert shown == "****WXYZ"
    assert as_json(db, "config", "get", "remote-api-key")["value"] == "****WXYZ"
    assert ok(db, "config", "get", "remote-api-key", "--show-secret").stdout.strip() == secret
    listing = ok(db, "config", "list").stdout
    assert secret not in listing
    assert "****WXYZ" in listing
    assert secret not in ok(db, "config", "list", "--json").stdout
    assert secret in ok(db, "config", "list", "--json", "--show-secret").stdout
    assert secret not in ok(db, "status", "--json").stdout


def test_short_secrets_are_fully_masked() -> None:
    assert cli.mask_secret("abc") == "****"
    assert cli.mask_secret("0123456789abcdef") == "****cdef"


def test_config_list_covers_every_stored_key(db: Path) -> None:
    data = as_json(db, "config", "list")
    assert set(data) == set(STORED_KEYS)
    for entry in data.values():
        assert set(entry) == {"value", "source", "env", "unit"}
    assert "remote-endpoint" in ok(db, "config", "list").stdout


def test_a_file_that_is_not_a_database_is_one_error_line(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an sqlite database, just some bytes " * 100)
    assert_one_error_line(run(db, "config", "set", "submission-batch-size", "5"))
    assert_one_error_line(run(db, "queue"), str(db))
    assert_one_error_line(run(db, "stats", "--type", "events"), str(db))


def test_version_option() -> None:
    from telemetry_core import __version__

    assert __version__ in ok(None, "--version").stdout


# -- plugins ----------------------------------------------------------------------------


def test_plugins_lists_the_bundled_providers(db: Path) -> None:
    data = as_json(db, "plugins")
    names = {p["name"] for p in data["plugins"]}
    assert {"https", "sqlite", "exponential-jitter", "token-bucket"} <= names
    providers = {(i["kind"], i["name"]) for p in data["plugins"] for i in p["providers"]}
    assert ("transport", "https") in providers
    assert ("storage", "sqlite") in providers
    assert data["selected"] == {
        "transport": "https",
        "storage": "sqlite",
        "backoff": "exponential-jitter",
        "limiter": "token-bucket",
    }
    assert data["warnings"] == []
    human = ok(db, "plugins").stdout
    assert "transport: https *" in human


# -- submit -----------------------------------------------------------------------------


def _enable_remote(db: Path, collector: FakeCollector) -> None:
    ok(db, "enable", "--endpoint", collector.submit_url)
    ok(db, "config", "set", "ca-bundle", str(collector.ca_path))


def test_submit_needs_remote_consent(db: Path) -> None:
    ok(db, "enable")
    assert_one_error_line(run(db, "submit"), "telemetry enable --remote")


def test_submit_delivers_the_queue(db: Path, collector: FakeCollector) -> None:
    _enable_remote(db, collector)
    ids = record(db, 5)
    data = as_json(db, "submit")
    assert set(data) == SUBMIT_KEYS
    assert (data["sent"], data["accepted"], data["failed"], data["pending"]) == (5, 5, 0, 0)
    assert data["last_error"] is None
    assert sorted(collector.event_ids) == sorted(ids)
    assert as_json(db, "stats")["events_accepted"] == 5
    result = ok(db, "submit")
    assert "Sent 0" in result.stdout


def test_submit_reports_undeliverable_events(db: Path, collector: FakeCollector) -> None:
    _enable_remote(db, collector)
    record(db, 3)
    collector.script(401)
    result = run(db, "submit")
    assert_one_error_line(result, "not delivered", "401", "--retry-dead")
    assert "1 failed request" in result.stdout
    assert as_json(db, "queue")["dead"] == 3
    assert collector.event_ids == []

    data = as_json(db, "submit", "--retry-dead")
    assert (data["revived"], data["accepted"], data["dead"]) == (3, 3, 0)
    assert len(collector.event_ids) == 3


def test_submit_shows_progress_on_a_large_queue_at_a_terminal(
    db: Path, collector: FakeCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_stdout_is_tty", lambda: True)
    _enable_remote(db, collector)
    ok(db, "config", "set", "submission-batch-size", "2")
    ids = record(db, 9)
    result = ok(db, "submit")
    assert "Submitting" in result.stdout
    assert "9 accepted" in result.stdout
    assert sorted(collector.event_ids) == sorted(ids)


def test_submit_without_a_terminal_draws_no_bar(db: Path, collector: FakeCollector) -> None:
    _enable_remote(db, collector)
    ok(db, "config", "set", "submission-batch-size", "2")
    record(db, 9)
    result = ok(db, "submit")
    assert "Submitting" not in result.stdout
    assert "9 accepted" in result.stdout


# -- mounted into an app's own CLI, with the app's configuration -----------------------

AX_KEY = "ax-in-code-key-0123456789"


def ax_cli(config: Any) -> click.Group:
    """A small host app ``ax`` that mounts the telemetry group as ``ax telemetry``."""

    @click.group()
    def ax() -> None:
        """The host app's own CLI."""

    ax.add_command(cli.make_cli("ax", config=config), name="telemetry")
    return ax


def ax_config(db: Path, collector: FakeCollector, **changes: Any) -> TelemetryConfig:
    """What an app sets in code: endpoint (here without a path), key, CA bundle, db path."""
    values: dict[str, Any] = dict(
        app="ax",
        db_path=db,
        enabled=True,
        remote_enabled=True,
        endpoint=collector.url,
        api_key=AX_KEY,
        ca_bundle=collector.ca_path,
    )
    values.update(changes)
    return TelemetryConfig(**values)


def run_ax(group: click.Group, *args: str) -> Result:
    result = CliRunner().invoke(group, ["telemetry", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def record_with(config: TelemetryConfig, count: int) -> list[str]:
    service = TelemetryService(config, background=False)
    try:
        ids = [service.track("command_executed", {"n": i}) for i in range(count)]
    finally:
        service.close()
    return [i for i in ids if i is not None]


def test_a_mounted_cli_shows_and_uses_the_apps_in_code_configuration(
    tmp_path: Path, collector: FakeCollector
) -> None:
    collector.api_keys = {AX_KEY}
    db = tmp_path / "ax.db"
    ax = ax_cli(lambda: ax_config(db, collector))
    ids = record_with(ax_config(db, collector), 3)
    assert len(ids) == 3

    data = json.loads(run_ax(ax, "status", "--json").stdout)
    assert data["endpoint"] == collector.submit_url  # the empty path completed
    assert (data["sending"], data["db_path"]) == (True, str(db))
    assert "endpoint" in data["set_in_code"]
    first = run_ax(ax, "status").stdout.splitlines()[0]
    assert first == f"Telemetry for ax: enabled, sending to {collector.submit_url}."

    result = run_ax(ax, "submit")
    assert result.exit_code == 0, result.output
    assert "Sent 3 events: 3 accepted" in result.stdout
    assert sorted(collector.event_ids) == sorted(ids)


def test_the_config_callable_is_called_lazily_once_per_command(
    tmp_path: Path, collector: FakeCollector
) -> None:
    calls: list[int] = []

    def load() -> TelemetryConfig:
        calls.append(1)
        return ax_config(tmp_path / "ax.db", collector)

    ax = ax_cli(load)
    assert CliRunner().invoke(ax, ["--help"]).exit_code == 0
    assert CliRunner().invoke(ax, ["telemetry", "--help"]).exit_code == 0
    assert calls == []
    assert run_ax(ax, "status").exit_code == 0
    assert calls == [1]


def test_mounted_hints_name_the_mounted_command(tmp_path: Path, collector: FakeCollector) -> None:
    db = tmp_path / "ax.db"
    ax = ax_cli(lambda: ax_config(db, collector))
    record_with(ax_config(db, collector), 2)
    collector.script(401)
    result = run_ax(ax, "submit")
    assert_one_error_line(result, "`ax telemetry submit --retry-dead`")

    assert run_ax(ax, "disable", "--remote").exit_code == 0
    assert_one_error_line(run_ax(ax, "submit"), "`ax telemetry enable --remote`")


def test_a_stored_disable_beats_the_apps_in_code_consent(
    tmp_path: Path, collector: FakeCollector
) -> None:
    db = tmp_path / "ax.db"
    ax = ax_cli(ax_config(db, collector))
    assert run_ax(ax, "disable").exit_code == 0
    data = json.loads(run_ax(ax, "status", "--json").stdout)
    assert (data["recording"], data["sending"]) == (False, False)
    # The app itself, with enabled=True in its code, records nothing now.
    assert record_with(ax_config(db, collector), 2) == []
    assert run_ax(ax, "enable", "--remote").exit_code == 0
    assert len(record_with(ax_config(db, collector), 2)) == 2
    assert json.loads(run_ax(ax, "status", "--json").stdout)["sending"] is True


def test_do_not_track_beats_the_apps_in_code_consent(
    tmp_path: Path, collector: FakeCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    ax = ax_cli(lambda: ax_config(tmp_path / "ax.db", collector))
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    data = json.loads(run_ax(ax, "status", "--json").stdout)
    assert (data["do_not_track"], data["recording"], data["sending"]) == (True, False, False)


def test_changing_a_value_the_app_fixes_in_code_says_so(
    tmp_path: Path, collector: FakeCollector
) -> None:
    ax = ax_cli(lambda: ax_config(tmp_path / "ax.db", collector))
    result = run_ax(ax, "enable", "--endpoint", "https://elsewhere.example/v1/submit")
    assert_one_error_line(result, "sets its endpoint in code", "Nothing was changed")
    result = run_ax(ax, "config", "set", "remote-endpoint", "https://elsewhere.example")
    assert result.exit_code == 0
    assert "ax sets remote-endpoint in its code" in result.stderr
    got = json.loads(run_ax(ax, "config", "get", "remote-endpoint", "--json").stdout)
    assert (got["value"], got["source"]) == (collector.url, "code")


def test_a_bad_environment_value_does_not_break_a_command(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOMATOSX_TELEMETRY_INTERVAL", "5s")
    data = as_json(db, "status")
    assert any(
        "AUTOMATOSX_TELEMETRY_INTERVAL" in p and "milliseconds" in p for p in data["problems"]
    )
    assert "ignored: invalid AUTOMATOSX_TELEMETRY_INTERVAL" in ok(db, "status").stdout


def test_a_misspelled_backoff_name_is_named_not_blamed_on_the_store(db: Path) -> None:
    ok(db, "enable")
    ok(db, "config", "set", "backoff", "exponential-jiter")
    result = run(db, "status")
    assert_one_error_line(result, "no backoff plugin named 'exponential-jiter' (available:")
    assert "local store" not in result.stderr


def test_a_foreign_database_is_refused_by_every_command_and_left_unchanged(
    tmp_path: Path,
) -> None:
    import sqlite3

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    with conn:
        conn.execute("CREATE TABLE invoices(id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices(total) VALUES (12.5)")
    conn.close()
    before = other.read_bytes()
    for args in (
        ["disable", "--purge", "--yes"],
        ["enable"],
        ["config", "set", "submission-batch-size", "5"],
        ["status"],
        ["queue"],
    ):
        result = run(other, *args)
        assert_one_error_line(result, "not a telemetry database")
        assert other.read_bytes() == before, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_dates_are_readable_and_counts_plural(db: Path, collector: FakeCollector) -> None:
    _enable_remote(db, collector)
    record(db, 1)
    result = ok(db, "submit")
    assert "Sent 1 event: 1 accepted, 0 duplicates" in result.stdout
    text = ok(db, "stats").stdout
    assert "e+09" not in text
    assert "last_submission_at:" in text


# -- submit after an outage, the server's pause, the rate limit -------------------------


def test_submit_after_an_outage_tries_now_past_the_clients_backoff(
    db: Path, collector: FakeCollector
) -> None:
    _enable_remote(db, collector)
    ids = record(db, 3)
    collector.script(500)
    result = run(db, "submit")
    assert_one_error_line(
        result, "3 events not delivered", "500", "next attempt at", "try again now"
    )
    queue = as_json(db, "queue")
    assert queue["pending"] == 3
    assert queue["due"] == 0  # the client's backoff holds them
    # The user fixed the collector: submit sends now, without waiting for the backoff.
    data = as_json(db, "submit")
    assert (data["sent"], data["accepted"], data["stopped"], data["pending"]) == (3, 3, "done", 0)
    assert sorted(collector.event_ids) == sorted(ids)
    assert as_json(db, "stats")["last_error"] is None  # cleared by the later success


def test_submit_waits_for_a_retry_after_unless_forced_and_says_until_when(
    db: Path, collector: FakeCollector
) -> None:
    _enable_remote(db, collector)
    record(db, 2)
    collector.script(Reply(status=503, headers={"Retry-After": "600"}))
    first = run(db, "submit")
    assert_one_error_line(first, "retry after 600 s")
    second = run(db, "submit")
    assert_one_error_line(second, "nothing sent", "asked to wait until", "--force")
    assert "(in 10 min)" in second.stderr or "(in 9 min)" in second.stderr
    assert collector.event_ids == []
    forced = as_json(db, "submit", "--force")
    assert (forced["sent"], forced["accepted"]) == (2, 2)
    assert len(collector.event_ids) == 2


def test_submit_now_returns_this_calls_result_besides_the_totals(
    db: Path, collector: FakeCollector
) -> None:
    _enable_remote(db, collector)
    record(db, 2)
    config = TelemetryConfig.from_env(APP, db)
    with TelemetryService(config, background=False) as service:
        collector.script(500)
        failed = service.submit_now()
        assert failed.last_call is not None
        assert (failed.last_call.sent, failed.last_call.failed) == (2, 1)
        assert failed.last_call.stopped == "retry"
        assert failed.last_call.error is not None and "500" in failed.last_call.error
        assert failed.last_call.error_at is not None
        assert failed.last_call.retry_at is not None
        done = service.submit_now()
        assert done.last_call is not None and done.last_call.delivered
        assert (done.last_call.sent, done.last_call.accepted) == (2, 2)
        assert (done.events_sent, done.events_accepted) == (4, 2)  # running totals
        assert done.last_error is None


def test_the_rate_limit_holds_across_processes_and_the_output_says_so(
    db: Path, collector: FakeCollector
) -> None:
    _enable_remote(db, collector)
    ok(db, "config", "set", "submission-rate-limit", "60")
    ok(db, "config", "set", "submission-batch-size", "25")
    record(db, 100)
    first = ok(db, "submit")
    assert "Sent 60 events" in first.stdout
    assert "The client rate limit paused sending: 40 events wait" in first.stdout
    # A new process (each CLI command is one) starts with the bucket the last one left.
    again = as_json(db, "submit")
    assert again["sent"] <= 5
    assert again["stopped"] == "rate_limited"
    assert again["retry_at"] is not None
    assert len(collector.event_ids) == 60 + again["sent"]


def test_a_large_queue_is_reported_with_its_likely_cause(
    db: Path, collector: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    _enable_remote(db, collector)
    ok(db, "config", "set", "max-queue-size", "10")
    record(db, 9)
    assert as_json(db, "queue")["warning"].startswith("the queue holds 9 events (90 %")
    collector.script(500)
    run(db, "submit")
    queue = run(db, "queue")
    assert "Warning: the queue holds 9 events" in queue.stderr
    assert "failing or unreachable" in queue.stderr
    assert "`telemetry submit` tries now" in queue.stderr
    status = as_json(db, "status")
    assert "failing or unreachable" in status["queue_warning"]

    collector.script(401)
    ok(db, "config", "set", "remote-api-key", "wrong-key-0123456789")
    run(db, "submit")
    assert "refuses the API key" in as_json(db, "queue")["warning"]


def test_a_large_queue_warns_the_apps_log_once(
    tmp_path: Path, collector: FakeCollector, caplog: pytest.LogCaptureFixture
) -> None:
    config = ax_config(tmp_path / "ax.db", collector, max_queue_size=10)
    service = TelemetryService(config, background=False)
    try:
        for i in range(9):
            service.track("command_executed", {"n": i})
        collector.script(500, 500)
        with caplog.at_level("WARNING", logger="telemetry_core"):
            service.submit_now()
            service.submit_now()
    finally:
        service.close()
    large = [r for r in caplog.records if "the queue holds 9 events" in r.getMessage()]
    assert len(large) == 1


def _documented_json_keys() -> str:
    text = (Path(__file__).parents[2] / "docs" / "client.md").read_text(encoding="utf-8")
    return text[text.index("## JSON output of the `telemetry` command") :]


def test_every_json_key_the_commands_print_is_documented(
    db: Path, collector: FakeCollector
) -> None:
    _enable_remote(db, collector)
    record(db, 2)
    documented = _documented_json_keys()
    outputs = {
        "status": as_json(db, "status"),
        "queue": as_json(db, "queue"),
        "submit": as_json(db, "submit"),
        "stats": as_json(db, "stats"),
        "stats --type events": as_json(db, "stats", "--type", "events"),
        "config get": as_json(db, "config", "get", "submission-interval"),
        "plugins": as_json(db, "plugins"),
    }
    missing = [
        f"{command}: {key}"
        for command, data in outputs.items()
        for key in data
        if f"`{key}`" not in documented
    ]
    missing += [
        f"status.queue: {k}" for k in outputs["status"]["queue"] if f"`{k}`" not in documented
    ]
    assert missing == []


def test_purge_deletes_our_own_database_even_when_it_cannot_be_used(db: Path) -> None:
    import sqlite3

    ok(db, "enable")
    conn = sqlite3.connect(db)  # what a pre-release build left: an older queue layout
    with conn:
        conn.execute("DELETE FROM telemetry_counters WHERE name = 'queue.holes'")
    conn.close()
    assert_one_error_line(run(db, "status"), "pre-release")
    result = ok(db, "disable", "--purge", "--yes")
    assert "Local telemetry data deleted" in result.stdout
    assert not db.exists()


def test_submit_waits_out_a_short_retry_after_then_delivers(
    db: Path, collector: FakeCollector
) -> None:
    _enable_remote(db, collector)
    record(db, 2)
    collector.script(Reply(status=429, headers={"Retry-After": "1"}))
    run(db, "submit")  # answered 429: the collector asks for one second
    result = ok(db, "submit")
    assert "The collector asked to wait until" in result.stdout
    assert "waiting 1 s" in result.stdout
    assert "Sent 2 events: 2 accepted" in result.stdout
    assert len(collector.event_ids) == 2
