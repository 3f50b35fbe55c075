"""Every hookspec is documented and tested (the datasette rule).

A hook exists for plugin authors only if ``docs/plugins.md`` has a heading with
its exact signature and some test under ``tests/`` is named ``test_hook_<name>``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from telemetry_core import hookspecs
from telemetry_core.hookspecs import PROJECT_NAME

ROOT = Path(__file__).resolve().parents[2]
PLUGINS_DOC = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"

HOOKSPECS = sorted(
    name
    for name, value in vars(hookspecs).items()
    if inspect.isfunction(value) and hasattr(value, f"{PROJECT_NAME}_spec")
)


def hook_heading(name: str) -> str:
    """The heading ``docs/plugins.md`` must carry for hook ``name``."""
    parameters = inspect.signature(getattr(hookspecs, name)).parameters
    return f"### `{name}({', '.join(parameters)})`"


def doc_headings() -> set[str]:
    """All level-3 headings of docs/plugins.md."""
    return {
        line.rstrip()
        for line in PLUGINS_DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("### ")
    }


def test_hookspecs_are_found() -> None:
    assert len(HOOKSPECS) >= 9
    assert "telemetry_make_transport" in HOOKSPECS
    assert hook_heading("telemetry_make_transport") == (
        "### `telemetry_make_transport(name, config)`"
    )


@pytest.mark.parametrize("name", HOOKSPECS)
def test_hook_is_documented(name: str) -> None:
    assert hook_heading(name) in doc_headings(), (
        f"docs/plugins.md needs the heading: {hook_heading(name)}"
    )


@pytest.mark.parametrize("name", HOOKSPECS)
def test_hook_is_tested(name: str) -> None:
    pattern = re.compile(rf"^\s*def test_hook_{re.escape(name)}\b", re.MULTILINE)
    assert any(
        pattern.search(path.read_text(encoding="utf-8")) for path in sorted(TESTS.rglob("*.py"))
    ), f"no test named test_hook_{name} under tests/"


def test_no_heading_documents_a_missing_hook() -> None:
    documented = {
        match.group(1)
        for heading in doc_headings()
        if (match := re.match(r"### `(telemetry_\w+)\(", heading))
    }
    assert documented == set(HOOKSPECS)
