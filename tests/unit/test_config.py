"""TelemetryConfig: defaults, validation, precedence, the seed's env names, DO_NOT_TRACK."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import attrs
import pytest

from telemetry_core.config import (
    ENV_KEYS,
    MAX_RATE_LIMIT,
    MIN_SUBMISSION_INTERVAL,
    TelemetryConfig,
    do_not_track,
    env_prefix,
    is_loopback_host,
    read_stored_config,
)
from telemetry_core.errors import ConfigError
from telemetry_core.local_store import LocalStore
from telemetry_core.schema import MAX_BATCH_EVENTS

APP = "automatosx"
PREFIX = "AUTOMATOSX_TELEMETRY_"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name == "DO_NOT_TRACK" or "_TELEMETRY_" in name:
            monkeypatch.delenv(name)
    # Problems are reported once per process: each test starts a fresh "process".
    monkeypatch.setattr("telemetry_core.config._reported", set())


def store(db_path: Path, **values: str) -> None:
    """Write stored configuration the way ``telemetry config set`` does."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS telemetry_config("
                "key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at INTEGER NOT NULL)"
            )
            conn.executemany(
                "INSERT OR REPLACE INTO telemetry_config(key, value, updated_at) VALUES (?, ?, 0)",
                list(values.items()),
            )
    finally:
        conn.close()


def make(tmp_path: Path, **kwargs: Any) -> TelemetryConfig:
    return TelemetryConfig(app=APP, db_path=tmp_path / "t.db", **kwargs)


# --- defaults -----------------------------------------------------------------------------


def test_defaults_are_opt_in_and_match_the_design(tmp_path: Path) -> None:
    config = make(tmp_path)
    assert config.enabled is False
    assert config.remote_enabled is False
    assert config.recording is False
    assert config.sending is False
    assert config.endpoint is None
    assert config.api_key is None
    assert config.submission_interval == 300.0
    assert config.submission_batch_size == 100
    assert config.submission_rate_limit == 1000
    assert config.max_queue_size == 10_000
    assert config.retention_days == 30
    assert (config.transport, config.storage, config.backoff, config.limiter) == (
        "https",
        "sqlite",
        "exponential-jitter",
        "token-bucket",
    )
    assert config.do_not_track is False


def test_default_db_path_is_per_app_and_not_created(tmp_path: Path) -> None:
    config = TelemetryConfig(app=APP)
    assert config.db_path.name == "telemetry.db"
    assert APP in str(config.db_path)


def test_db_path_expands_user(tmp_path: Path) -> None:
    config = TelemetryConfig(app=APP, db_path="~/x/telemetry.db")
    assert "~" not in str(config.db_path)
    assert config.db_path == Path("~/x/telemetry.db").expanduser()


def test_from_env_defaults_with_an_empty_environment(tmp_path: Path) -> None:
    config = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ={})
    assert config == make(tmp_path)


def test_sending_needs_consent_remote_and_endpoint(tmp_path: Path) -> None:
    assert make(tmp_path, enabled=True).recording
    assert not make(tmp_path, enabled=True, remote_enabled=True).sending
    assert make(tmp_path, enabled=True, remote_enabled=True, endpoint="https://h/v1/submit").sending
    assert not make(tmp_path, remote_enabled=True, endpoint="https://h/v1/submit").sending


# --- validation ---------------------------------------------------------------------------


def _error(**kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        TelemetryConfig(app=kwargs.pop("app", APP), db_path="t.db", **kwargs)
    return info.value


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://example.com/v1/submit",
        "http://10.0.0.1/v1/submit",
        "http://[2001:db8::1]/v1/submit",
        "http://localhost.example.com/",
        "http://127.0.0.1.nip.io/",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(endpoint: str) -> None:
    error = _error(endpoint=endpoint)
    assert error.setting == "endpoint"
    assert str(error).startswith("invalid endpoint:")
    assert "https" in str(error)


@pytest.mark.parametrize(
    "endpoint",
    ["not a url", "example.com/v1/submit", "ftp://example.com/", "https://", "https:///path",
     "https://host:99999/", "https://host:port/", "https://[::1/"],
)  # fmt: skip
def test_malformed_endpoint_names_the_setting(endpoint: str) -> None:
    error = _error(endpoint=endpoint)
    assert error.setting == "endpoint"
    assert str(error).startswith("invalid endpoint:")
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8080/v1/submit",
        "http://127.1.2.3/v1/submit",
        "http://[::1]:8443/v1/submit",
        "http://localhost/v1/submit",
        "http://LOCALHOST:80/",
        "https://example.com/v1/submit",
        "https://10.0.0.1:8443/v1/submit",
    ],
)
def test_https_anywhere_and_http_to_loopback_are_allowed(tmp_path: Path, endpoint: str) -> None:
    assert make(tmp_path, endpoint=endpoint).endpoint == endpoint


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("api.localhost", True),
        ("128.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "setting",
    [
        "submission_interval",
        "submission_batch_size",
        "submission_rate_limit",
        "max_queue_size",
        "retention_days",
        "timeout",
        "base_delay",
        "max_delay",
        "max_retry_after",
        "rate_limit_burst",
        "lease_seconds",
    ],
)
@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan, math.inf, -math.inf, "5", True])
def test_bad_numbers_name_the_setting(setting: str, value: Any) -> None:
    error = _error(**{setting: value})
    assert error.setting == setting
    assert str(error).startswith(f"invalid {setting}:")


@pytest.mark.parametrize("setting", ["max_retries", "gzip_threshold", "exit_timeout"])
def test_settings_that_allow_zero(tmp_path: Path, setting: str) -> None:
    assert getattr(make(tmp_path, **{setting: 0}), setting) == 0
    assert _error(**{setting: -1}).setting == setting
    assert _error(**{setting: math.nan}).setting == setting


@pytest.mark.parametrize("app", ["", "AutomatosX", "9app", "my app", "a" * 65, "app\n", None, 3])
def test_bad_app_name(app: Any) -> None:
    error = _error(app=app)
    assert error.setting == "app"
    assert "automatosx" in str(error)


def test_error_is_a_value_error_with_one_clear_line() -> None:
    error = _error(submission_interval=-1)
    assert isinstance(error, ValueError)
    assert str(error) == "invalid submission_interval: must be > 0, got -1"


def test_evolve_validates_and_keeps_other_values(tmp_path: Path) -> None:
    config = make(tmp_path, enabled=True, api_key="k")
    changed = config.evolve(submission_batch_size=7)
    assert changed.submission_batch_size == 7
    assert changed.api_key == "k"
    assert changed.enabled is True
    assert config.submission_batch_size == 100
    with pytest.raises(ConfigError) as info:
        config.evolve(endpoint="http://example.com/")
    assert info.value.setting == "endpoint"
    with pytest.raises(ConfigError):
        config.evolve(submission_interval=0)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = make(tmp_path)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.enabled = True  # type: ignore[misc]


def test_api_key_is_not_in_repr(tmp_path: Path) -> None:
    config = make(tmp_path, api_key="sk-very-secret-value")
    assert "sk-very-secret-value" not in repr(config)
    assert "sk-very-secret-value" not in str(config)
    assert "app='automatosx'" in repr(config)


# --- derived properties -------------------------------------------------------------------


def test_lease_defaults_to_timeout_plus_margin(tmp_path: Path) -> None:
    assert make(tmp_path).lease == 60.0
    assert make(tmp_path, timeout=5.0).lease == 35.0
    assert make(tmp_path, lease_seconds=12.5).lease == 12.5
    assert make(tmp_path).lease < 300


def test_burst_defaults_to_the_rate(tmp_path: Path) -> None:
    assert make(tmp_path).burst == 1000
    assert make(tmp_path, submission_rate_limit=60).burst == 60
    assert make(tmp_path, submission_rate_limit=60, rate_limit_burst=5).burst == 5


# --- environment --------------------------------------------------------------------------


def test_env_prefix() -> None:
    assert env_prefix("automatosx") == "AUTOMATOSX_TELEMETRY_"
    assert env_prefix("my-app_2") == "MY_APP_2_TELEMETRY_"


def test_the_seeds_env_names_and_units(tmp_path: Path) -> None:
    environ = {
        "AUTOMATOSX_TELEMETRY_ENDPOINT": "https://collector.example/v1/submit",
        "AUTOMATOSX_TELEMETRY_API_KEY": "env-key",
        "AUTOMATOSX_TELEMETRY_INTERVAL": "60000",
        "AUTOMATOSX_TELEMETRY_BATCH_SIZE": "25",
        "AUTOMATOSX_TELEMETRY_RATE_LIMIT": "120",
    }
    config = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ=environ)
    assert config.endpoint == "https://collector.example/v1/submit"
    assert config.api_key == "env-key"
    assert config.submission_interval == 60.0
    assert config.submission_batch_size == 25
    assert config.submission_rate_limit == 120


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMATOSX_TELEMETRY_BATCH_SIZE", "9")
    monkeypatch.setenv("OTHERAPP_TELEMETRY_BATCH_SIZE", "3")
    assert TelemetryConfig.from_env(APP, tmp_path / "t.db").submission_batch_size == 9


def test_env_booleans_and_empty_values(tmp_path: Path) -> None:
    environ = {
        f"{PREFIX}ENABLED": " Yes ",
        f"{PREFIX}REMOTE_ENABLED": "off",
        f"{PREFIX}API_KEY": "",
    }
    config = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ=environ)
    assert config.enabled is True
    assert config.remote_enabled is False
    assert config.api_key is None


@pytest.mark.parametrize(
    ("suffix", "raw"),
    [
        ("INTERVAL", "soon"),
        ("INTERVAL", "nan"),
        ("INTERVAL", "-5"),
        ("INTERVAL", "0"),
        ("INTERVAL", "inf"),
        ("INTERVAL", "1e400"),
        ("BATCH_SIZE", "ten"),
        ("BATCH_SIZE", "2.5"),
        ("BATCH_SIZE", "0"),
        ("RATE_LIMIT", "-1"),
        ("INTERVAL", "1e-9"),
        ("INTERVAL", "99"),
        ("BATCH_SIZE", "99999999999999999999"),
        ("BATCH_SIZE", "1001"),
        ("RATE_LIMIT", "99999999999999999999"),
        ("ENABLED", "maybe"),
        ("ENDPOINT", "http://example.com/v1/submit"),
        ("ENDPOINT", "nonsense"),
    ],
)
def test_a_bad_env_value_raises_in_strict_mode_naming_the_variable(
    tmp_path: Path, suffix: str, raw: str
) -> None:
    with pytest.raises(ConfigError) as info:
        TelemetryConfig.from_env(
            APP, tmp_path / "t.db", environ={PREFIX + suffix: raw}, strict=True
        )
    assert PREFIX + suffix in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("suffix", "raw", "field"),
    [
        ("INTERVAL", "5s", "submission_interval"),
        ("BATCH_SIZE", "ten", "submission_batch_size"),
        ("ENDPOINT", "nonsense", "endpoint"),
        ("TIMEOUT", "-1", "timeout"),
    ],
)
def test_a_bad_env_value_is_reported_once_and_the_default_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str, raw: str, field: str
) -> None:
    environ = {PREFIX + suffix: raw}
    with caplog.at_level("WARNING", logger="telemetry_core"):
        first = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ=environ)
        again = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ=environ)
    assert getattr(first, field) == getattr(make(tmp_path), field)
    assert again.problems == first.problems
    assert len(first.problems) == 1
    assert PREFIX + suffix in first.problems[0]
    assert [r.getMessage() for r in caplog.records].count(
        "telemetry-core: " + first.problems[0]
    ) == 1


def test_a_bad_interval_message_says_the_unit(tmp_path: Path) -> None:
    config = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ={PREFIX + "INTERVAL": "5s"})
    assert "milliseconds" in config.problems[0]
    assert "e.g. 300000" in config.problems[0]


def test_a_bad_env_value_falls_back_to_the_stored_value(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store(db, **{"submission-batch-size": "50"})
    config = TelemetryConfig.from_env(APP, db, environ={PREFIX + "BATCH_SIZE": "lots"})
    assert config.submission_batch_size == 50


def test_an_explicit_bad_argument_still_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="submission_batch_size"):
        TelemetryConfig.from_env(APP, tmp_path / "t.db", environ={}, submission_batch_size=0)


@pytest.mark.parametrize("key", ["abc\r\nX-Evil: 1", "clé-\u2603", "tab\there"])
def test_an_api_key_that_cannot_be_a_header_is_refused_naming_the_setting(
    tmp_path: Path, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, api_key=key)
    assert info.value.setting == "api_key"
    assert key not in str(info.value)
    config = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ={PREFIX + "API_KEY": key})
    assert config.api_key is None
    assert PREFIX + "API_KEY" in config.problems[0]


def test_a_latin1_api_key_is_accepted(tmp_path: Path) -> None:
    assert make(tmp_path, api_key="clé-0123456789").api_key == "clé-0123456789"


def test_unknown_env_variables_and_dotted_stored_keys_are_plugin_options(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store(db, **{"file-drop.mode": "append"})
    environ = {PREFIX + "FILE_DROP_PATH": "events/x.jsonl"}
    config = TelemetryConfig.from_env(APP, db, environ=environ)
    assert config.plugin_option("file-drop", "path") == "events/x.jsonl"
    assert config.plugin_option("file_drop", "mode") == "append"
    assert config.plugin_option("file-drop", "other", "x") == "x"


def test_a_third_party_transport_sends_without_an_https_endpoint(tmp_path: Path) -> None:
    config = make(tmp_path, enabled=True, remote_enabled=True, transport="spool")
    assert config.sending
    assert not make(tmp_path, enabled=True, remote_enabled=True).sending


def test_every_setting_has_one_row_used_by_env_and_stored_keys() -> None:
    from telemetry_core.config import SETTINGS

    fields = {f.name for f in attrs.fields(TelemetryConfig)}
    assert {s.field for s in SETTINGS} <= fields
    assert len({s.field for s in SETTINGS}) == len(SETTINGS)
    assert {s.env for s in SETTINGS if s.env} == set(ENV_KEYS)


def test_every_env_key_is_a_config_field() -> None:
    fields = {f.name for f in attrs.fields(TelemetryConfig)}
    assert {field for field, _kind, _scale in ENV_KEYS.values()} <= fields


# --- stored configuration and precedence --------------------------------------------------


def test_stored_values_are_read(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store(
        db,
        **{
            "remote-endpoint": "https://stored.example/v1/submit",
            "remote-api-key": "stored-key",
            "submission-interval": "120000",
            "submission-batch-size": "50",
            "submission-rate-limit": "600",
            "enabled": "true",
            "unknown-key": "ignored",
        },
    )
    config = TelemetryConfig.from_env(APP, db, environ={})
    assert config.endpoint == "https://stored.example/v1/submit"
    assert config.api_key == "stored-key"
    assert config.submission_interval == 120.0
    assert config.submission_batch_size == 50
    assert config.submission_rate_limit == 600
    assert config.enabled is True


def test_precedence_explicit_over_env_over_stored_over_defaults(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store(db, **{"submission-batch-size": "50", "submission-rate-limit": "600",
                 "submission-interval": "120000", "remote-api-key": "stored"})  # fmt: skip
    environ = {f"{PREFIX}BATCH_SIZE": "25", f"{PREFIX}RATE_LIMIT": "300"}
    config = TelemetryConfig.from_env(APP, db, environ=environ, submission_batch_size=10)
    assert config.submission_batch_size == 10  # explicit
    assert config.submission_rate_limit == 300  # env over stored
    assert config.submission_interval == 120.0  # stored over default
    assert config.api_key == "stored"
    assert config.max_queue_size == 10_000  # default


def test_explicit_none_overrides_lower_layers(tmp_path: Path) -> None:
    environ = {f"{PREFIX}API_KEY": "env-key"}
    config = TelemetryConfig.from_env(APP, tmp_path / "t.db", environ=environ, api_key=None)
    assert config.api_key is None


def test_stored_values_via_the_local_store(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    opened = LocalStore(db)
    try:
        opened.set_config("submission-batch-size", "33")
    finally:
        opened.close()
    assert TelemetryConfig.from_env(APP, db, environ={}).submission_batch_size == 33


def test_a_bad_stored_value_names_the_key(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store(db, **{"submission-batch-size": "lots"})
    with pytest.raises(ConfigError) as info:
        TelemetryConfig.from_env(APP, db, environ={}, strict=True)
    assert "submission-batch-size" in str(info.value)
    config = TelemetryConfig.from_env(APP, db, environ={})
    assert config.submission_batch_size == 100
    assert "submission-batch-size" in config.problems[0]


def test_read_stored_config_never_creates_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "telemetry.db"
    assert read_stored_config(missing) == {}
    assert not (tmp_path / "no").exists()
    config = TelemetryConfig.from_env(APP, missing, environ={})
    assert config.db_path == missing
    assert not (tmp_path / "no").exists()
    assert list(tmp_path.iterdir()) == []


def test_read_stored_config_leaves_an_existing_database_alone(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store(db, enabled="1")
    before = sorted(p.name for p in tmp_path.iterdir())
    data = db.read_bytes()
    assert read_stored_config(db) == {"enabled": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert db.read_bytes() == data


def test_read_stored_config_tolerates_other_files(tmp_path: Path) -> None:
    not_db = tmp_path / "garbage.db"
    not_db.write_bytes(b"this is not a database" * 100)
    assert read_stored_config(not_db) == {}
    empty_db = tmp_path / "empty.db"
    sqlite3.connect(empty_db).close()
    assert read_stored_config(empty_db) == {}
    assert read_stored_config(tmp_path) == {}


# --- DO_NOT_TRACK -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "on"])
def test_do_not_track_values(value: str) -> None:
    assert do_not_track({"DO_NOT_TRACK": value})


@pytest.mark.parametrize("value", ["0", "", "false", "no", "off"])
def test_do_not_track_off_values(value: str) -> None:
    assert not do_not_track({"DO_NOT_TRACK": value})
    assert not do_not_track({})


def test_do_not_track_beats_explicit_consent_in_from_env(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store(db, enabled="true", **{"remote-enabled": "true"})
    config = TelemetryConfig.from_env(
        APP,
        db,
        environ={"DO_NOT_TRACK": "1", f"{PREFIX}ENABLED": "1"},
        enabled=True,
        remote_enabled=True,
        endpoint="https://h/v1/submit",
    )
    assert config.do_not_track is True
    assert config.enabled is False
    assert config.remote_enabled is False
    assert not config.recording
    assert not config.sending


def test_do_not_track_cannot_be_switched_off_by_an_explicit_keyword(tmp_path: Path) -> None:
    config = TelemetryConfig.from_env(
        APP, tmp_path / "t.db", environ={"DO_NOT_TRACK": "1"}, do_not_track=False, enabled=True
    )
    assert config.do_not_track is True
    assert config.enabled is False


def test_explicit_do_not_track_is_kept_by_from_env(tmp_path: Path) -> None:
    config = TelemetryConfig.from_env(
        APP, tmp_path / "t.db", environ={}, do_not_track=True, enabled=True
    )
    assert config.do_not_track is True
    assert config.enabled is False


def test_do_not_track_in_the_process_environment_beats_direct_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    config = make(tmp_path, enabled=True, remote_enabled=True, endpoint="https://h/v1/submit")
    assert config.do_not_track is True
    assert (config.enabled, config.remote_enabled, config.recording, config.sending) == (
        False,
        False,
        False,
        False,
    )
    assert config.evolve(enabled=True).enabled is False
    from_env = TelemetryConfig.from_env(APP, tmp_path / "t.db", enabled=True)
    assert from_env.enabled is False


def test_endpoint_with_credentials_is_refused_and_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        TelemetryConfig(app="demo", endpoint="https://user:hunter2@collector.example/v1/submit")
    assert info.value.setting == "endpoint"
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("submission_interval", 0.099),
        ("submission_batch_size", MAX_BATCH_EVENTS + 1),
        ("submission_rate_limit", MAX_RATE_LIMIT + 1),
        ("rate_limit_burst", MAX_RATE_LIMIT + 1),
    ],
)
def test_absurd_values_are_refused_naming_the_setting(
    tmp_path: Path, field: str, value: float
) -> None:
    with pytest.raises(ConfigError) as info:
        TelemetryConfig(app=APP, db_path=tmp_path / "t.db", **{field: value})
    assert info.value.setting == field


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    config = TelemetryConfig(
        app=APP,
        db_path=tmp_path / "t.db",
        submission_interval=MIN_SUBMISSION_INTERVAL,
        submission_batch_size=MAX_BATCH_EVENTS,
        submission_rate_limit=MAX_RATE_LIMIT,
    )
    assert config.submission_batch_size == MAX_BATCH_EVENTS


def test_the_settings_table_in_the_docs_is_generated_from_the_setting_rows() -> None:
    from telemetry_core.config import settings_markdown

    text = (Path(__file__).parents[2] / "docs" / "client.md").read_text(encoding="utf-8")
    start = text.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = text.index("<!-- settings-table:end -->")
    assert text[start:end].strip() == settings_markdown().strip(), (
        "docs/client.md is stale: paste telemetry_core.config.settings_markdown() into it"
    )
