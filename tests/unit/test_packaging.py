"""The distribution: what the wheel holds, and that the editable install works."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import telemetry_core
import telemetry_core_plugins

ROOT = Path(__file__).resolve().parents[2]

#: What never belongs in a copy of the source tree used for building.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "results",
    "*.db",
    "*.db-wal",
    "*.db-shm",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel once, from a copy of the tree (the shared tree stays clean)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    out = base / "dist"
    completed = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (built,) = out.glob("telemetry_core-*.whl")
    return built


def wheel_names(wheel: Path) -> list[str]:
    """Every file name inside ``wheel``."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_wheel_has_exactly_the_two_packages(wheel: Path) -> None:
    top_level = {name.split("/")[0] for name in wheel_names(wheel)}
    packages = {name for name in top_level if not name.endswith(".dist-info")}
    assert packages == {"telemetry_core", "telemetry_core_plugins"}


@pytest.mark.slow
def test_wheel_is_typed_and_holds_the_plugins(wheel: Path) -> None:
    names = set(wheel_names(wheel))
    assert "telemetry_core/py.typed" in names
    assert "telemetry_core_plugins/py.typed" in names
    assert "telemetry_core_plugins/__init__.py" in names
    assert "telemetry_core/collector/__init__.py" in names
    assert not any(name.startswith(("tests/", "plugins/", "examples/")) for name in names)


@pytest.mark.slow
def test_wheel_declares_both_console_scripts(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (entry_points_file,) = [
            n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")
        ]
        text = archive.read(entry_points_file).decode()
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert dict(parser["console_scripts"]) == {
        "telemetry": "telemetry_core.cli:main",
        "telemetry-collector": "telemetry_core.collector.cli:main",
    }


def test_editable_install_serves_the_working_tree(tmp_path: Path) -> None:
    # This process may see the tree through pytest's pythonpath; a fresh
    # interpreter in another directory sees it only through the install.
    code = (
        "import importlib.metadata, telemetry_core, telemetry_core_plugins\n"
        "print(telemetry_core.__file__)\n"
        "print(telemetry_core_plugins.__file__)\n"
        "print(importlib.metadata.version('telemetry-core'))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    core, plugins, version = completed.stdout.split()
    assert Path(core) == ROOT / "telemetry_core" / "__init__.py"
    assert Path(plugins) == ROOT / "plugins" / "telemetry_core_plugins" / "__init__.py"
    assert version == telemetry_core.__version__
    assert Path(telemetry_core_plugins.__file__ or "").parent.parent.name == "plugins"


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for script in ("telemetry", "telemetry-collector"):
        assert (bindir / script).is_file(), script
