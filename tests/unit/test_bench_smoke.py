"""Smoke test of the benchmark suite: it runs, exits 0 and writes valid JSON.

Never asserts on timing: figures on a shared machine are noise, and a MISS is a
report, not a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHEAP = ("limiter", "mark_failed")


def test_quick_bench_runs_and_writes_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            ",".join(CHEAP),
            "--results",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in CHEAP:
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["name"] == name
        assert data["mode"] == "quick"
        assert data["machine"]["cores"] >= 1
        assert data["versions"]["pyrate-limiter"] or name != "limiter"
        assert data["rows"], data
        for check in data["checks"]:
            assert check["verdict"] in {"PASS", "MISS", "n/a"}
    summary = json.loads((tmp_path / "summary-partial.json").read_text())
    assert summary["crashed"] == []
    assert f"== {CHEAP[0]}:" in done.stdout


def test_bench_lists_every_benchmark() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = done.stdout.split()
    assert {"track", "batch_cycle", "queue_depth", "limiter", "end_to_end", "idle"} <= set(names)
