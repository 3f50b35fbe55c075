"""Render the results of a run as the Markdown tables of ``docs/performance.md``:
``python -m bench._markdown [results-dir]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.__main__ import BENCHMARKS, RESULTS_DIR


def _fmt(ns: float | None) -> str:
    if ns is None:
        return "n/a"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns / 1e6:.2f} ms"


def render(results: Path) -> str:
    """The Markdown for every result file under ``results``."""
    out: list[str] = []
    checks = ["| benchmark | check | measured | target | verdict |", "|---|---|---|---|---|"]
    rows: list[str] = []
    header = None
    for name in BENCHMARKS:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        header = header or data
        for c in data["checks"]:
            m = c["measured"]
            unit = c["unit"]
            shown = "n/a" if m is None else (f"{m:.3g}x" if unit == "x" else f"{m:.3g} {unit}")
            checks.append(f"| {name} | {c['what']} | {shown} | {c['target']} | {c['verdict']} |")
        rows.append(f"\n**{name}** — {data['title']} ({data['mode']}; {data['params']})\n")
        rows.append("| subject | median | p95 | per second |")
        rows.append("|---|---|---|---|")
        for r in data["rows"]:
            rate = "n/a" if not r["per_second"] else f"{r['per_second']:,.0f}"
            extra = f" ({r['note']})" if r["note"] else ""
            rows.append(
                f"| {r['subject']}{extra} | {_fmt(r['median_ns'])} | {_fmt(r['p95_ns'])} | {rate} |"
            )
    if header:
        m, v = header["machine"], header["versions"]
        out.append(
            f"Run of {header['date']} ({header['mode']}) on {m['cpu']}, {m['cores']} cores, "
            f"{m['platform']}, Python {m['python']}, SQLite {m['sqlite']}.\n\nVersions: "
            + ", ".join(f"{k} {val}" for k, val in v.items() if val)
            + ".\n"
        )
    out.extend(checks)
    out.extend(rows)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR))
