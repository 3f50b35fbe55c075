"""The installed ``telemetry`` console script, run in real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from telemetry_core.config import TelemetryConfig
from telemetry_core.service import TelemetryService
from tests.fake_collector import FakeCollector

TIMEOUT = 60


@pytest.fixture(scope="module")
def telemetry_exe() -> str:
    """The ``telemetry`` script installed next to this interpreter."""
    found = shutil.which("telemetry", path=str(Path(sys.executable).parent))
    assert found is not None, "the telemetry console script is not installed in this venv"
    return found


@pytest.fixture
def base_env() -> dict[str, str]:
    """The current environment without anything that configures telemetry."""
    return {
        k: v
        for k, v in os.environ.items()
        if "_TELEMETRY_" not in k and k not in {"DO_NOT_TRACK", "TELEMETRY_APP"}
    }


def telemetry(
    exe: str, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [exe, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def telemetry_json(exe: str, env: dict[str, str], *args: str) -> Any:
    return json.loads(telemetry(exe, env, *args, "--json").stdout)


def test_help_runs_and_import_stays_light(telemetry_exe: str, base_env: dict[str, str]) -> None:
    out = telemetry(telemetry_exe, base_env, "--help").stdout
    assert "submit" in out
    assert "plugins" in out
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, telemetry_core.cli; print(sorted(m for m in ('urllib3', "
            "'telemetry_core.collector.app', 'starlette') if m in sys.modules))",
        ],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_submit_delivers_over_https(
    telemetry_exe: str, base_env: dict[str, str], fake_collector: FakeCollector, tmp_path: Path
) -> None:
    db = tmp_path / "telemetry.db"
    assert fake_collector.ca_path is not None
    env = dict(
        base_env,
        AUTOMATOSX_TELEMETRY_ENABLED="1",
        AUTOMATOSX_TELEMETRY_REMOTE_ENABLED="1",
        AUTOMATOSX_TELEMETRY_ENDPOINT=fake_collector.submit_url,
        AUTOMATOSX_TELEMETRY_CA_BUNDLE=fake_collector.ca_path,
    )
    service = TelemetryService(TelemetryConfig.from_env("automatosx", db, environ=env))
    service.close()  # a closed service records but starts no worker: the CLI sends
    try:
        ids = [service.track("command_executed", {"n": i}, success=True) for i in range(7)]
    finally:
        service.close()
    assert all(ids)

    status = telemetry_json(telemetry_exe, env, "--db", str(db), "status")
    assert status["sending"] is True
    assert status["queue"]["pending"] == 7

    summary = telemetry_json(telemetry_exe, env, "--db", str(db), "submit")
    assert (summary["sent"], summary["accepted"], summary["failed"]) == (7, 7, 0)
    assert sorted(fake_collector.event_ids) == sorted(i for i in ids if i)
    assert telemetry_json(telemetry_exe, env, "--db", str(db), "queue")["pending"] == 0
    assert telemetry_json(telemetry_exe, env, "--db", str(db), "stats")["events_accepted"] == 7


def test_user_errors_are_one_line(
    telemetry_exe: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    db = str(tmp_path / "telemetry.db")
    for args in (
        ("config", "set", "submission-batch-size", "many"),
        ("enable", "--remote"),
        ("enable", "--endpoint", "http://collector.example/v1/submit"),
        ("submit",),
    ):
        proc = telemetry(telemetry_exe, base_env, "--db", db, *args, check=False)
        assert proc.returncode == 1, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("Error: ")


def test_do_not_track_writes_nothing(
    telemetry_exe: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "telemetry.db"
    env = dict(base_env, DO_NOT_TRACK="1", AUTOMATOSX_TELEMETRY_ENABLED="1")
    status = telemetry_json(telemetry_exe, env, "--db", str(db), "status")
    assert (status["do_not_track"], status["recording"]) == (True, False)
    proc = telemetry(telemetry_exe, env, "--db", str(db), "enable", check=False)
    assert proc.returncode == 1
    assert "DO_NOT_TRACK" in proc.stderr
    assert not db.exists()


def test_status_into_a_closed_pipe_prints_no_broken_pipe(
    telemetry_exe: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "telemetry.db"
    telemetry(telemetry_exe, base_env, "--db", str(db), "enable")
    # `telemetry status | head -1`, with a reader that closes the pipe at once.
    status = subprocess.Popen(
        [telemetry_exe, "--db", str(db), "status"],
        env=base_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert status.stdout is not None
    first = status.stdout.readline()
    status.stdout.close()
    _, err = status.communicate(timeout=TIMEOUT)
    assert first.startswith("Telemetry for automatosx: enabled")
    assert "Broken pipe" not in err
    assert "Traceback" not in err


def test_the_generic_help_presents_no_default_app(
    telemetry_exe: str, base_env: dict[str, str]
) -> None:
    out = telemetry(telemetry_exe, base_env, "--help").stdout
    assert "automatosx" not in out
    assert "TELEMETRY_APP" in out


def test_a_bad_environment_value_never_raises_into_the_command(
    telemetry_exe: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**base_env, "AUTOMATOSX_TELEMETRY_INTERVAL": "5s"}
    proc = telemetry(telemetry_exe, env, "--db", str(tmp_path / "t.db"), "status")
    assert "AUTOMATOSX_TELEMETRY_INTERVAL" in proc.stdout
    assert "milliseconds, e.g. 300000" in proc.stdout


_AX_APP = '''
import sys
import click
from telemetry_core import TelemetryConfig, TelemetryService
from telemetry_core.cli import make_cli

ENDPOINT, CA, DB = sys.argv[1], sys.argv[2], sys.argv[3]
del sys.argv[1:4]


def telemetry_config() -> TelemetryConfig:
    # What an app ships: endpoint (no path), key and CA in code, its own db path.
    return TelemetryConfig(app="ax", db_path=DB, enabled=True, remote_enabled=True,
                           endpoint=ENDPOINT, api_key="ax-in-code-key-0123", ca_bundle=CA)


@click.group()
def ax() -> None:
    """The ax tool."""


@ax.command()
def run() -> None:
    """Do the app's work (and record it)."""
    with TelemetryService(telemetry_config(), background=False) as telemetry:
        telemetry.track("command_executed", {"command": "run"})


ax.add_command(make_cli("ax", config=telemetry_config), name="telemetry")
ax(prog_name="ax")  # as the installed `ax` console script
'''


def test_an_app_mounting_the_cli_with_its_in_code_config_shows_and_delivers(
    base_env: dict[str, str], fake_collector: FakeCollector, tmp_path: Path
) -> None:
    fake_collector.api_keys = {"ax-in-code-key-0123"}
    script = tmp_path / "ax.py"
    script.write_text(_AX_APP, encoding="utf-8")
    assert fake_collector.ca_path is not None
    prefix = [sys.executable, str(script), fake_collector.url, fake_collector.ca_path]
    prefix.append(str(tmp_path / "ax.db"))

    def ax(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*prefix, *args], env=base_env, capture_output=True, text=True, timeout=TIMEOUT,
            check=False,
        )  # fmt: skip
        assert "Traceback" not in proc.stderr
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    for _ in range(3):
        ax("run")
    status = ax("telemetry", "status")
    assert status.stdout.splitlines()[0] == (
        f"Telemetry for ax: enabled, sending to {fake_collector.submit_url}."
    )
    assert "3 events pending" in status.stdout
    submit = ax("telemetry", "submit")
    assert "Sent 3 events: 3 accepted" in submit.stdout
    assert len(fake_collector.event_ids) == 3
    ax("telemetry", "disable", "--remote")
    refused = ax("telemetry", "submit", check=False)
    assert refused.returncode == 1
    assert "`ax telemetry enable --remote`" in refused.stderr
