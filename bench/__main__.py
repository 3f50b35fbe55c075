"""Command line: ``python -m bench --quick|--full [--only NAME[,NAME]] [--list]``.

Runs the selected benchmarks one after another, prints one table each, writes
``bench/results/<name>.json`` and, with ``--full``, the PNG plots. A target
missed is reported as MISS; it never fails the process. A benchmark that
crashes is reported and the run goes on (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench._harness import Context, Report

#: Benchmark name -> module under ``bench``, in run order (cheap ones first).
BENCHMARKS: dict[str, str] = {
    "limiter": "bench.limiter",
    "track": "bench.track",
    "track_latency": "bench.track_latency",
    "track_locked": "bench.track_locked",
    "batch_cycle": "bench.batch_cycle",
    "mark_failed": "bench.mark_failed",
    "queue_depth": "bench.queue_depth",
    "cli_startup": "bench.cli_startup",
    "exit_pending": "bench.exit_pending",
    "end_to_end": "bench.end_to_end",
    "ingest": "bench.ingest",
    "interop_decode": "bench.interop_decode",
    "collector_scale": "bench.collector_scale",
    "pg_scale": "bench.pg_scale",
    "idle": "bench.idle",
    "rss_depth": "bench.rss_depth",
}

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmarks, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, about a minute (CI)")
    mode.add_argument("--full", action="store_true", help="full sizes and PNG plots")
    parser.add_argument(
        "--only", action="append", default=[], help="benchmark name(s), comma-separated"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="output folder")
    parser.add_argument("--list", action="store_true", help="list benchmark names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    quick = not args.full
    names = [n for item in args.only for n in item.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; see --list")
    mode_name = "quick" if quick else "full"
    failed: list[str] = []
    reports: list[Report] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        for name in names:
            ctx = Context(quick=quick, workdir=Path(tmp) / name, results_dir=args.results)
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            try:
                module = importlib.import_module(BENCHMARKS[name])
                report: Report = module.run(ctx)
            except Exception:
                failed.append(name)
                print(f"== {name}: CRASHED", file=sys.stderr)
                traceback.print_exc()
                continue
            path = report.write(args.results, mode_name)
            reports.append(report)
            print(report.render())
            print(f"   ({time.monotonic() - t0:.1f} s, wrote {path})", flush=True)
    summary: dict[str, Any] = {
        "mode": mode_name,
        "seconds": round(time.monotonic() - started, 1),
        "benchmarks": [r.name for r in reports],
        "crashed": failed,
        "checks": [
            {
                "benchmark": r.name,
                "what": c.what,
                "measured": c.measured,
                "target": c.target,
                "unit": c.unit,
                "verdict": c.verdict,
            }
            for r in reports
            for c in r.checks
        ],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    summary_name = "summary.json" if set(names) == set(BENCHMARKS) else "summary-partial.json"
    (args.results / summary_name).write_text(json.dumps(summary, indent=2) + "\n")
    if not quick:
        from bench import _plots

        for png in _plots.draw(args.results):
            print(f"plot: {png}")
    verdicts = [c["verdict"] for c in summary["checks"]]
    print(
        f"== done in {summary['seconds']} s: {verdicts.count('PASS')} PASS, "
        f"{verdicts.count('MISS')} MISS, {verdicts.count('n/a')} n/a, {len(failed)} crashed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
