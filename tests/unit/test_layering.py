"""The import directions that must never exist (docs/architecture.md, "Which way
imports run"), checked on the source: every ``import`` statement counts, those
inside functions and ``TYPE_CHECKING`` blocks included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "telemetry_core"
PLUGINS = ROOT / "plugins" / "telemetry_core_plugins"

#: Modules holding values (data and the rules about them): they know no behaviour.
VALUES = (
    "schema", "models", "errors", "protocols", "pii", "delivery", "config", "_memo", "_version"
)  # fmt: skip
#: What the collector may use of the client side: the shared values, not the
#: client's configuration.
COLLECTOR_MAY_USE = {f"telemetry_core.{name}" for name in VALUES if name != "config"}
#: The demo runs a simulated app against the collector: it is a client too.
COLLECTOR_CLIENTS = {"demo.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _client_modules() -> list[Path]:
    return [p for p in sorted(CORE.rglob("*.py")) if "collector" not in p.relative_to(CORE).parts]


def _names(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("path", _client_modules(), ids=_names(_client_modules()))
def test_the_client_never_imports_the_collector(path: Path) -> None:
    assert not {m for m in _imports(path) if m.startswith("telemetry_core.collector")}


@pytest.mark.parametrize("path", _client_modules(), ids=_names(_client_modules()))
def test_the_core_never_imports_a_plugin_module(path: Path) -> None:
    # Bundled plugins are registered by dotted name (plugin_host), never imported.
    assert not {m for m in _imports(path) if m.startswith("telemetry_core_plugins")}


COLLECTOR_MODULES = [
    p for p in sorted((CORE / "collector").rglob("*.py")) if p.name not in COLLECTOR_CLIENTS
]


@pytest.mark.parametrize("path", COLLECTOR_MODULES, ids=_names(COLLECTOR_MODULES))
def test_the_collector_shares_only_values_with_the_client(path: Path) -> None:
    used = {
        m
        for m in _imports(path)
        if m.startswith("telemetry_core.") and not m.startswith("telemetry_core.collector")
    }
    modules = {".".join(m.split(".")[:2]) for m in used}
    assert modules <= COLLECTOR_MAY_USE, modules - COLLECTOR_MAY_USE


VALUE_MODULES = [CORE / f"{name}.py" for name in VALUES]


@pytest.mark.parametrize("path", VALUE_MODULES, ids=_names(VALUE_MODULES))
def test_values_know_no_behaviour(path: Path) -> None:
    used = {".".join(m.split(".")[:2]) for m in _imports(path) if m.startswith("telemetry_core.")}
    allowed = {f"telemetry_core.{name}" for name in VALUES}
    assert used <= allowed, used - allowed


PLUGIN_MODULES = sorted(PLUGINS.glob("*.py"))


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=_names(PLUGIN_MODULES))
def test_bundled_plugins_use_only_the_cores_public_values_and_markers(path: Path) -> None:
    used = {".".join(m.split(".")[:2]) for m in _imports(path) if m.startswith("telemetry_core.")}
    # The sqlite storage plugin reaches the local file through the
    # SQLiteDatabase handle (protocols), not the core's LocalStore.
    allowed = {f"telemetry_core.{name}" for name in VALUES} | {"telemetry_core.hookspecs"}
    assert used <= allowed, used - allowed
