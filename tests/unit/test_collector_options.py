"""Unit tests of the collector's options: the table, the environment, the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from telemetry_core.collector.options import (
    OPTIONS,
    OptionError,
    ServeSettings,
    env_values,
    load_values,
)
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.errors import ConfigError


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_option_has_an_env_name_and_a_flag() -> None:
    assert OPTIONS["rate_burst"].env == "TELEMETRY_COLLECTOR_RATE_BURST"
    assert OPTIONS["rate_burst"].flag == "--rate-burst"
    assert OPTIONS["api_keys"].env == "TELEMETRY_COLLECTOR_API_KEYS"


def test_from_env_reads_every_option_converted() -> None:
    environ = {
        "TELEMETRY_COLLECTOR_API_KEYS": "k1, k2",
        "TELEMETRY_COLLECTOR_DB": "data/c.db",
        "TELEMETRY_COLLECTOR_RATE_BURST": "20000",
        "TELEMETRY_COLLECTOR_BODY_TIMEOUT": "2.5",
        "TELEMETRY_COLLECTOR_SECURE_COOKIES": "yes",
        "TELEMETRY_COLLECTOR_PORT": "9000",
    }
    settings = ServeSettings.from_env(environ)
    assert settings.collector.api_keys == ("k1", "k2")
    assert settings.collector.rate_limit_burst == 20_000
    assert settings.collector.body_timeout_s == 2.5
    assert settings.collector.secure_cookies is True
    assert (settings.port, settings.store.db) == (9000, "data/c.db")
    assert CollectorSettings.from_env(environ) == settings.collector


def test_a_bad_environment_value_names_the_option() -> None:
    with pytest.raises(OptionError, match="rate_burst"):
        env_values({"TELEMETRY_COLLECTOR_RATE_BURST": "lots"})


def test_from_file_reads_toml_keys_named_like_the_flags(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("# the admin token\nadmin-token-from-file\n", encoding="utf-8")
    path = _toml(
        tmp_path,
        f'db = "{tmp_path / "c.db"}"\napi_keys = ["a", "b"]\nrate_limit = 120\n'
        f'retention_days = 7\nadmin_token_file = "{token}"\n',
    )
    settings = ServeSettings.from_file(path, environ={})
    assert settings.collector.api_keys == ("a", "b")
    assert settings.collector.rate_limit_per_minute == 120
    assert settings.collector.retention_days == 7
    assert settings.collector.admin_token == "admin-token-from-file"
    assert CollectorSettings.from_file(path, environ={}) == settings.collector


def test_the_command_line_wins_over_the_environment_over_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'api_keys = ["file-key"]\nrate_limit = 1\nport = 1111\nhost = "::1"\n')
    environ = {"TELEMETRY_COLLECTOR_RATE_LIMIT": "2", "TELEMETRY_COLLECTOR_PORT": "2222"}
    values = load_values(given={"rate_limit": 3, "db": "c.db"}, config_file=path, environ=environ)
    assert values["rate_limit"] == 3
    assert values["port"] == 2222
    assert values["host"] == "::1"
    assert values["api_keys"] == ["file-key"]  # keys of every source are used together


def test_an_explicit_db_wins_over_a_database_url_in_the_environment() -> None:
    environ = {"TELEMETRY_COLLECTOR_DATABASE_URL": "postgresql://db/x"}
    values = load_values(given={"db": "c.db", "api_keys": ["k"]}, environ=environ)
    assert (values["db"], values["database_url"]) == ("c.db", None)


def test_an_unknown_or_mistyped_key_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="unknown key"):
        ServeSettings.from_file(_toml(tmp_path, 'api_key = "k"\n'), environ={})
    with pytest.raises(OptionError, match="rate_limit"):
        ServeSettings.from_file(_toml(tmp_path, 'rate_limit = "fast"\n'), environ={})
    with pytest.raises(OptionError, match="not valid TOML"):
        ServeSettings.from_file(_toml(tmp_path, "rate_limit = \n"), environ={})


def test_values_out_of_range_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retention_days"):
        ServeSettings.load(given={"db": "c.db", "api_keys": ["k"], "retention_days": 0}, environ={})
    with pytest.raises(OptionError, match="exactly one"):
        ServeSettings.load(given={"api_keys": ["k"]}, environ={})


def test_a_relative_path_in_the_file_is_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "keys").write_text("k-from-file\n", encoding="utf-8")
    path = folder / "collector.toml"
    path.write_text('db = "data/c.db"\napi_keys_file = "keys"\n', encoding="utf-8")
    settings = ServeSettings.from_file(path, environ={})
    assert settings.store.db == str(folder / "data" / "c.db")
    assert settings.collector.api_keys == ("k-from-file",)
