"""The room sizes stay bounded (issue 9, docs/architecture.md): the complexity rules
stay switched on for the product, no product function needs a scroll bar, and no
product class grows past what one reader holds in mind."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [ROOT / "telemetry_core", ROOT / "plugins" / "telemetry_core_plugins"]
#: The longest product function, in lines from ``def`` to its end.
MAX_FUNCTION_LINES = 80
#: The longest product class, in lines from ``class`` to its end.
MAX_CLASS_LINES = 400


def test_the_complexity_rules_are_on_for_the_product() -> None:
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    rules = {"PLR0911", "PLR0912", "PLR0915"}
    assert not rules & set(lint["ignore"])
    assert "C90" in lint["select"] and "PL" in lint["select"]
    assert lint["mccabe"]["max-complexity"] <= 15
    assert lint["pylint"]["max-branches"] <= 15
    assert lint["pylint"]["max-statements"] <= 60
    assert lint["pylint"]["max-returns"] <= 8
    exempt = {pattern for pattern, codes in lint["per-file-ignores"].items() if rules & set(codes)}
    assert exempt <= {"tests/**", "bench/**"}


def _longer_than(limit: int, kinds: tuple[type[ast.AST], ...]) -> list[str]:
    """Product definitions of ``kinds`` longer than ``limit`` lines (from the
    ``def`` or ``class`` line to the end), as ``path:line name lines``."""
    long = []
    for root in PRODUCT:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, kinds):
                    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > limit:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    return long


def test_no_product_function_is_longer_than_80_lines() -> None:
    assert _longer_than(MAX_FUNCTION_LINES, (ast.FunctionDef, ast.AsyncFunctionDef)) == []


def test_no_product_class_is_longer_than_400_lines() -> None:
    assert _longer_than(MAX_CLASS_LINES, (ast.ClassDef,)) == []
