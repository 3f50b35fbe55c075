"""Unit tests of ``telemetry-collector`` (click runner; stats read a real SQLite file)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from telemetry_core.collector.cli import main
from telemetry_core.collector.sqlite_store import SQLiteStore
from telemetry_core.schema import Event, new_event_id

T0 = 1_700_000_000_000


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "collector.db"

    async def fill() -> None:
        store = SQLiteStore(path)
        events = [
            Event(id=new_event_id(), type=t, timestamp=T0 + i, install_id="i", app="a",
                  duration_ms=5.0, success=True)
            for i, t in enumerate(["run", "run", "open"])
        ]  # fmt: skip
        await store.ingest(events, T0)
        await store.close()

    asyncio.run(fill())
    return path


def test_stats_json(db: Path) -> None:
    result = CliRunner().invoke(main, ["stats", "--db", str(db), "--json", "--bucket", "day"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["totals"]["by_type"] == {"open": 1, "run": 2}
    assert body["bucket"] == "day"


def test_stats_table_and_filters(db: Path) -> None:
    result = CliRunner().invoke(
        main, ["stats", "--db", str(db), "--type", "run", "--from", "2023-11-14T00:00"]
    )
    assert result.exit_code == 0, result.output
    assert "run" in result.output and "open" not in result.output
    assert "total events 2" in result.output


def test_stats_table_shows_tiny_percentiles_in_significant_digits(tmp_path: Path) -> None:
    """A p50 of 0.0004 ms read 0.0 when percentiles were rounded to fixed decimals."""
    path = tmp_path / "tiny.db"

    async def fill() -> None:
        store = SQLiteStore(path)
        events = [
            Event(id=new_event_id(), type="hit", timestamp=T0 + i, install_id="i", app="a",
                  duration_ms=0.0004)
            for i in range(3)
        ]  # fmt: skip
        await store.ingest(events, T0)
        await store.close()

    asyncio.run(fill())
    table = CliRunner().invoke(main, ["stats", "--db", str(path)])
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if " hit " in line).split()
    p50, p95, p99 = (float(cell) for cell in row[-4:-1])
    assert all(value == pytest.approx(0.0004, rel=0.011) for value in (p50, p95, p99)), row
    assert all(len(cell.replace("0.", "").lstrip("0")) <= 4 for cell in row[-4:-1]), row
    body = json.loads(CliRunner().invoke(main, ["stats", "--db", str(path), "--json"]).output)
    assert body["series"][0]["p50_ms"] == pytest.approx(0.0004, rel=0.011)


def test_stats_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["stats", "--db", str(tmp_path / "nope.db")])
    assert missing.exit_code == 1 and "no collector database" in missing.output
    bad = runner.invoke(main, ["stats", "--db", str(tmp_path / "x.db"), "--from", "soon"])
    assert bad.exit_code == 2


def test_serve_refuses_bad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEMETRY_COLLECTOR_API_KEYS", raising=False)
    monkeypatch.delenv("TELEMETRY_COLLECTOR_DATABASE_URL", raising=False)
    runner = CliRunner()
    no_keys = runner.invoke(main, ["serve", "--db", str(tmp_path / "c.db")])
    assert no_keys.exit_code == 2 and "no submission keys" in no_keys.output
    no_store = runner.invoke(main, ["serve", "--api-key", "k"])
    assert no_store.exit_code == 2 and "--db" in no_store.output
    short = runner.invoke(
        main, ["serve", "--db", str(tmp_path / "c.db"), "--api-key", "k", "--admin-token", "x"]
    )
    assert short.exit_code == 1 and "admin_token" in short.output


def test_serve_pool_max_reaches_the_postgres_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from telemetry_core.collector import postgres_store
    from telemetry_core.errors import StorageError

    seen: dict[str, object] = {}

    def fake_store(url: str, **options: object) -> None:
        seen.update(options, url=url)
        raise StorageError("stop here: no database in a unit test")

    monkeypatch.setattr(postgres_store, "PostgresStore", fake_store)
    runner = CliRunner()
    args = ["serve", "--api-key", "k", "--database-url", "postgresql://u@db/x", "--pool-max", "3"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "stop here" in result.output
    assert seen == {"url": "postgresql://u@db/x", "pool_max": 3, "max_pending_events": 50_000}

    sqlite = runner.invoke(
        main, ["serve", "--api-key", "k", "--db", str(tmp_path / "c.db"), "--pool-max", "3"]
    )
    assert sqlite.exit_code == 2 and "--pool-max applies to --database-url" in sqlite.output
    zero = runner.invoke(main, [*args[:-1], "0"])
    assert zero.exit_code == 2


def test_indented_comment_in_keys_file_is_not_a_key(tmp_path: Path) -> None:
    """Review finding 8: comment lines are recognised after stripping."""
    from telemetry_core.collector.options import read_secret_file as _read_secret_file

    keys = tmp_path / "keys"
    keys.write_text("key-a\n  # retired: key-b\n\t#x\n  key-c  \n", encoding="utf-8")
    assert _read_secret_file(str(keys)) == ["key-a", "key-c"]


def test_empty_admin_token_file_is_an_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  # only a comment\n\n", encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["serve", "--db", str(tmp_path / "c.db"), "--api-key", "k",
         "--admin-token-file", str(token)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "holds no token" in result.output


def test_explicit_db_wins_over_database_url_in_environment(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 9: an explicit --db beats TELEMETRY_COLLECTOR_DATABASE_URL."""
    monkeypatch.setenv("TELEMETRY_COLLECTOR_DATABASE_URL", "postgresql://127.0.0.1:1/nowhere")
    result = CliRunner().invoke(main, ["stats", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["count"] == 3


def test_explicit_database_url_and_db_together_are_refused(db: Path) -> None:
    result = CliRunner().invoke(
        main, ["stats", "--db", str(db), "--database-url", "postgresql://127.0.0.1:1/x"]
    )
    assert result.exit_code == 2
    assert "exactly one" in result.output


def test_stats_with_from_after_to_says_so_in_words(db: Path) -> None:
    result = CliRunner().invoke(
        main, ["stats", "--db", str(db), "--from", "2026-02-01", "--to", "2026-01-01"]
    )
    assert result.exit_code == 2
    assert "from '2026-02-01' is after to '2026-01-01'" in result.output


def test_serve_with_a_burst_below_one_batch_names_the_number_needed(tmp_path: Path) -> None:
    args = ["serve", "--db", str(tmp_path / "c.db"), "--api-key", "k", "--rate-burst", "10"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "--rate-burst" in result.output
    assert "1000 events or more (got 10)" in result.output


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_check_config_prints_the_summary_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("API_KEYS", "ADMIN_TOKEN", "DATABASE_URL"):
        monkeypatch.delenv(f"TELEMETRY_COLLECTOR_{name}", raising=False)
    url_file = tmp_path / "db-url"
    url_file.write_text("host=db user=c password = 'pass word-7' dbname=t\n", encoding="utf-8")
    config = _config(
        tmp_path,
        f'database_url_file = "{url_file}"\napi_keys = ["key-one-77", "key-two-88"]\n'
        'admin_token = "admin-token-99"\nretention_days = 30\nmetrics_port = 9464\n',
    )
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"{config}: ok" in result.output
    assert "store=postgresql url='user=c password=*** dbname=t host=db'" in result.output
    assert "keys=2" in result.output and "retention_days=30" in result.output
    assert "admin_token=set" in result.output and "port:127.0.0.1:9464" in result.output
    for secret in ("pass word-7", "word-7", "key-one-77", "key-two-88", "admin-token-99"):
        assert secret not in result.output


def test_check_config_refuses_an_unknown_key_and_a_bad_value(tmp_path: Path) -> None:
    unknown = _config(tmp_path, 'db = "c.db"\napi_keys = ["k"]\nrate_brust = 20000\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(unknown)])
    assert result.exit_code == 2 and "unknown key(s) rate_brust" in result.output
    small = _config(tmp_path, 'db = "c.db"\napi_keys = ["k"]\nrate_burst = 10\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(small)])
    assert result.exit_code == 1 and "1000 events or more" in result.output


def test_check_config_warns_when_no_admin_token_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TELEMETRY_COLLECTOR_ADMIN_TOKEN", raising=False)
    config = _config(tmp_path, 'db = "c.db"\napi_keys = ["k"]\n')
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0
    assert "admin_token=unset" in result.output
    assert "warning: no admin token" in result.output


def test_serve_logs_one_summary_line_and_warns_without_an_admin_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from telemetry_core.collector.options import ServeSettings
    from telemetry_core.collector.server import log_summary

    caplog.set_level("INFO", logger="telemetry_core.collector")
    settings = ServeSettings.load(
        given={"database_url": "postgresql://u:hunter-22@db/x", "api_keys": ["k"]}, environ={}
    )
    log_summary(settings)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0][0] == "INFO"
    assert lines[0][1].startswith(
        "collector configuration store=postgresql url='user=u password=*** dbname=x host=db' "
        "keys=1 tls=off"
    )
    assert lines[1][0] == "WARNING" and "no admin token is set" in lines[1][1]
    assert "hunter-22" not in caplog.text
