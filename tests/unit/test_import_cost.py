"""Importing the client must stay cheap: no network stack, CLI or collector.

Each check runs in a fresh interpreter, since this test process has long since
imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules a CLI app must not pay for when it merely imports telemetry-core.
HEAVY = (
    "urllib3",
    "click",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "psycopg",
    "psycopg_pool",
    "telemetry_core.collector",
    "telemetry_core.cli",
)


def imported_after(code: str) -> set[str]:
    """Run ``code`` in a new interpreter; return the modules it left imported."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    env["TELEMETRY_CORE_DISABLE_PLUGINS"] = ""
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    modules: list[str] = json.loads(completed.stdout.strip().splitlines()[-1])
    return set(modules)


def heavy_in(modules: set[str]) -> list[str]:
    """The heavy modules (or their submodules) present in ``modules``."""
    return sorted(
        name for name in modules if any(name == h or name.startswith(h + ".") for h in HEAVY)
    )


def test_probe_detects_heavy_imports() -> None:
    # The check must be able to fail: importing urllib3 is seen.
    assert "urllib3" in heavy_in(imported_after("import urllib3"))


def test_import_telemetry_core_is_light() -> None:
    modules = imported_after("import telemetry_core")
    assert "telemetry_core" in modules
    assert heavy_in(modules) == []


@pytest.mark.parametrize(
    "code",
    [
        "from telemetry_core.plugin_host import PluginHost\nPluginHost()",
        "from telemetry_core import TelemetryConfig, TelemetryService",
    ],
    ids=["plugin-host-with-defaults", "public-api"],
)
def test_default_plugins_register_without_heavy_imports(code: str) -> None:
    modules = imported_after(code)
    assert heavy_in(modules) == []


#: Standard-library modules that only entry-point discovery needs (~30 ms).
METADATA = ("importlib.metadata", "email", "zipfile", "csv")


def test_probe_detects_metadata_imports() -> None:
    modules = imported_after("import importlib.metadata")
    assert set(METADATA) <= modules


@pytest.mark.parametrize(
    "code",
    [
        "import telemetry_core",
        "from telemetry_core.plugin_host import PluginHost\nPluginHost()",
        "from telemetry_core import TelemetryConfig, TelemetryService",
    ],
    ids=["package", "plugin-host-with-defaults", "public-api"],
)
def test_no_entry_point_metadata_is_read_without_plugins(code: str) -> None:
    # No third-party plugin is installed in the test environment, so the
    # entry_points.txt pre-scan spares the import of importlib.metadata.
    assert sorted(set(METADATA) & imported_after(code)) == []


def test_import_telemetry_core_loads_only_the_package() -> None:
    modules = imported_after("import telemetry_core")
    loaded = sorted(m for m in modules if m.startswith("telemetry_core."))
    assert loaded == ["telemetry_core._version"]
    assert "attr" not in modules
    assert "msgspec" not in modules


def test_public_names_still_resolve() -> None:
    import telemetry_core

    for name in telemetry_core.__all__:
        assert getattr(telemetry_core, name) is not None
    assert set(telemetry_core.__all__) <= set(dir(telemetry_core))
    with pytest.raises(AttributeError):
        telemetry_core.no_such_name  # noqa: B018


def test_recording_one_event_loads_no_logging_hashing_or_network(tmp_path: Path) -> None:
    # What a CLI process that records one event and exits (remote off) pays for:
    # it logs nothing and sends nothing, so logging, hashlib (libcrypto), the
    # network stack and the CLI stay unloaded.
    code = (
        "from telemetry_core import TelemetryConfig, TelemetryService\n"
        f"config = TelemetryConfig(app='cli', db_path={str(tmp_path / 't.db')!r}, enabled=True,"
        " do_not_track=False)\n"
        "with TelemetryService(config) as telemetry:\n"
        "    assert telemetry.track('command_executed', {'command': 'run'}) is not None"
    )
    modules = imported_after(code)
    assert "telemetry_core.service" in modules
    assert heavy_in(modules) == []
    assert sorted({"logging", "hashlib", "ssl", "_hashlib"} & modules) == []
