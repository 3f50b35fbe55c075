"""The example third-party plugin, in process and pip-installed into a fresh venv.

The slow test is the real thing a plugin author relies on: ``pip install`` a
distribution with a ``telemetry_core`` entry point, and without any code the
plugin is discovered, listed by ``telemetry plugins`` and selectable by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from telemetry_core.config import TelemetryConfig
from telemetry_core.plugin_host import DISABLE_ENV, PluginHost
from telemetry_core.schema import Event, new_event_id

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "telemetry-core-example-transport"


@pytest.fixture
def example_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The example plugin module, imported from the source tree."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    import telemetry_core_example_transport as module

    yield module
    sys.modules.pop("telemetry_core_example_transport", None)


def test_example_transport_in_process(example_module: object, tmp_path: Path) -> None:
    host = PluginHost(strict=True, load_entrypoints=False, plugins=[example_module])
    assert ("transport", "file-drop") in {(p.kind, p.name) for p in host.providers()}
    out = tmp_path / "drop" / "events.jsonl"
    config = TelemetryConfig(
        app="exampletest",
        db_path=tmp_path / "t.db",
        transport="file-drop",
        options={"file_drop.path": str(out)},
        do_not_track=False,
    )
    transport = host.make_transport(config)
    assert transport.ping()
    assert transport.server_info().name == "file-drop"
    events = [
        Event(
            id=new_event_id(),
            type="command_executed",
            timestamp=1_700_000_000_000 + i,
            install_id=str(uuid.uuid4()),
            app="exampletest",
            properties={"n": i},
        )
        for i in range(3)
    ]
    assert transport.submit_batch(events).accepted == 3
    assert transport.submit_batch(events[:1]).accepted == 1
    lines = out.read_bytes().splitlines()
    assert [msgspec.json.decode(line, type=Event) for line in lines] == [*events, events[0]]
    transport.close()


def test_example_output_path_defaults_next_to_the_database(
    example_module: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from telemetry_core_example_transport import PATH_ENV, output_path

    monkeypatch.delenv(PATH_ENV, raising=False)
    config = TelemetryConfig(app="exampletest", db_path=tmp_path / "t.db", do_not_track=False)
    assert output_path(config) == tmp_path / "file-drop.jsonl"
    monkeypatch.setenv(PATH_ENV, str(tmp_path / "env.jsonl"))
    assert output_path(config) == tmp_path / "env.jsonl"
    assert output_path(config.evolve(options={"file_drop.path": "/x.jsonl"})) == Path("/x.jsonl")


# -- pip-installed into a fresh virtual environment -------------------------------

IN_VENV = """
import json, sys, uuid
from pathlib import Path
from telemetry_core import TelemetryConfig, TelemetryService
from telemetry_core.plugin_host import PluginHost

tmp = Path(sys.argv[1])
records = {r.name: r for r in PluginHost(strict=True).plugins()}
record = records["file-drop"]
out = tmp / "dropped.jsonl"
# No endpoint: a third-party transport needs none; its option comes from the
# environment (<APP>_TELEMETRY_<PLUGIN>_<OPTION>), its name too.
config = TelemetryConfig.from_env(
    "exampletest",
    tmp / "telemetry.db",
    environ={
        "EXAMPLETEST_TELEMETRY_TRANSPORT": "file-drop",
        "EXAMPLETEST_TELEMETRY_FILE_DROP_PATH": str(out),
    },
    enabled=True,
    remote_enabled=True,
    strict=True,
)
with TelemetryService(config) as telemetry:
    ids = [telemetry.track("command_executed", {"n": i}, success=True) for i in range(5)]
    stats = telemetry.submit_now()
sent = [json.loads(line)["id"] for line in out.read_text().splitlines()]
print(json.dumps({
    "distribution": record.distribution,
    "version": record.version,
    "module": record.module,
    "bundled": record.bundled,
    "providers": [[p.kind, p.name] for p in record.providers],
    "ids": ids,
    "sent": sent,
    "events_accepted": stats.events_accepted,
}))
"""


def _run(args: list[str], *, timeout: float, cwd: Path, env: dict[str, str]) -> str:
    completed = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )
    assert completed.returncode == 0, (
        f"{args} failed ({completed.returncode}):\n{completed.stdout[-3000:]}\n"
        f"{completed.stderr[-3000:]}"
    )
    return completed.stdout


@pytest.mark.slow
def test_example_plugin_pip_installed_is_discovered_listed_and_selected(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    python = env_dir / "bin" / "python"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", DISABLE_ENV, "PYTHONHOME"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["HOME"] = str(tmp_path)  # keeps platformdirs defaults inside tmp_path
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env.pop("DO_NOT_TRACK", None)
    work = tmp_path / "work"
    work.mkdir()
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    # Editable: also proves that an editable install of the project works.
    _run([*pip, "-e", str(ROOT)], timeout=300, cwd=work, env=env)
    _run([*pip, str(EXAMPLE)], timeout=300, cwd=work, env=env)

    report = json.loads(
        _run([str(python), "-c", IN_VENV, str(tmp_path)], timeout=60, cwd=work, env=env)
        .strip()
        .splitlines()[-1]
    )
    assert report["distribution"] == "telemetry-core-example-transport"
    assert report["version"] == "0.1.0"
    assert report["module"] == "telemetry_core_example_transport"
    assert report["bundled"] is False
    assert report["providers"] == [["transport", "file-drop"]]
    assert len(report["ids"]) == 5
    assert None not in report["ids"]
    assert sorted(report["sent"]) == sorted(report["ids"])
    assert report["events_accepted"] == 5

    # The CLI lists it too (telemetry_core/cli.py, `telemetry plugins --json`).
    telemetry = env_dir / "bin" / "telemetry"
    listing = json.loads(
        _run(
            [
                str(telemetry),
                "--app",
                "exampletest",
                "--db",
                str(tmp_path / "cli.db"),
                "plugins",
                "--json",
            ],
            timeout=60,
            cwd=work,
            env=env,
        )
    )
    names = {plugin["name"]: plugin for plugin in listing["plugins"]}
    assert names["file-drop"]["distribution"] == "telemetry-core-example-transport"
    assert listing["warnings"] == []
    text = _run([str(telemetry), "plugins"], timeout=60, cwd=work, env=env)
    assert "file-drop (telemetry-core-example-transport 0.1.0)" in text
    assert "transport: file-drop" in text

    # Blocking it by name removes it without uninstalling.
    env[DISABLE_ENV] = "file-drop"
    blocked = json.loads(_run([str(telemetry), "plugins", "--json"], timeout=60, cwd=work, env=env))
    assert "file-drop" not in {plugin["name"] for plugin in blocked["plugins"]}
