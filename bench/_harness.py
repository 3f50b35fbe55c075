"""Measurement harness shared by every benchmark.

Subjects of one benchmark are measured in the same process, interleaved round by
round (A, B, C, A, B, C, ...) so that drift of a shared machine (other processes,
thermal state, page cache) hits all of them alike. Each round reports how long it
took and how many operations it did; the per-operation median over rounds is the
headline figure, and the 95th percentile of single operations is kept where
latency matters. Ratios against baselines are the point: absolute times on a
shared 2-core machine are noise.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib.metadata
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Check",
    "Context",
    "Report",
    "Round",
    "Row",
    "Unavailable",
    "interleave",
    "machine_info",
    "percentile",
    "versions",
]

#: Distributions whose versions every result file records.
COMPARED_DISTRIBUTIONS = (
    "telemetry-core",
    "persist-queue",
    "litequeue",
    "posthog",
    "segment-analytics-python",
    "pyrate-limiter",
    "limits",
    "urllib3",
    "msgspec",
    "starlette",
    "uvicorn",
    "psycopg",
    "matplotlib",
    "pyinstrument",
)


class Unavailable(Exception):
    """A subject cannot be measured here (a piece not yet built, a server absent)."""


@dataclass(frozen=True)
class Context:
    """What every benchmark receives: the mode, a scratch folder and the output folder."""

    quick: bool
    workdir: Path
    results_dir: Path

    def pick(self, quick: Any, full: Any) -> Any:
        """``quick`` in a quick run, ``full`` otherwise."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Round:
    """One measured round: ``ops`` operations in ``total_ns``; optional per-op times."""

    total_ns: int
    ops: int
    per_op_ns: Sequence[int] = ()


@dataclass
class Row:
    """The summary of one subject: medians over rounds, p95 over single operations."""

    subject: str
    unit: str = "op"
    median_ns: float | None = None
    p95_ns: float | None = None
    rounds: int = 0
    ops: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float | None:
        """Operations per second at the median."""
        if not self.median_ns:
            return None
        return 1e9 / self.median_ns


@dataclass(frozen=True)
class Check:
    """A target from the issue and what this run measured against it.

    ``passed`` is None when the subject could not be measured.
    """

    what: str
    measured: float | None
    target: str
    passed: bool | None
    unit: str = "x"

    @property
    def verdict(self) -> str:
        """PASS, MISS or n/a."""
        if self.passed is None:
            return "n/a"
        return "PASS" if self.passed else "MISS"


@dataclass
class Report:
    """Everything one benchmark produced; printed as a table and written as JSON."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, subject: str) -> Row | None:
        """The row of ``subject``, if it was measured."""
        for row in self.rows:
            if row.subject == subject:
                return row
        return None

    def ratio(self, ours: str, baseline: str) -> float | None:
        """Throughput ratio ours / baseline (= baseline time / our time); higher is better."""
        a, b = self.row(ours), self.row(baseline)
        if a is None or b is None or not a.median_ns or not b.median_ns:
            return None
        return b.median_ns / a.median_ns

    def check_ratio(
        self, ours: str, baseline: str, *, at_least: float | None = None, below: float | None = None
    ) -> Check:
        """Add a check of the throughput ratio ours / baseline against a bound."""
        value = self.ratio(ours, baseline)
        if at_least is not None:
            target = f">= {at_least:g}x"
            passed = None if value is None else value >= at_least
        else:
            assert below is not None
            # "faster than": our time / their time below the bound, i.e. ratio above 1/below.
            target = f"time ratio < {below:g}"
            value = None if value is None else 1.0 / value
            passed = None if value is None else value < below
        check = Check(f"{ours} vs {baseline}", value, target, passed)
        self.checks.append(check)
        return check

    def check_value(self, what: str, value: float | None, *, at_most: float, unit: str) -> Check:
        """Add a check of an absolute figure (ms, %, MB) against an upper bound."""
        passed = None if value is None else value <= at_most
        check = Check(what, value, f"<= {at_most:g} {unit}", passed, unit=unit)
        self.checks.append(check)
        return check

    def render(self) -> str:
        """The table printed for this benchmark."""
        lines = [f"== {self.name}: {self.title}"]
        if self.params:
            lines.append("   " + ", ".join(f"{k}={v}" for k, v in self.params.items()))
        header = f"   {'subject':<44} {'median':>12} {'p95':>12} {'per s':>12} {'rounds':>6}"
        lines.append(header)
        for row in self.rows:
            if row.median_ns is None:
                lines.append(f"   {row.subject:<44} {'n/a':>12}   {row.note}")
                continue
            p95 = _fmt_ns(row.p95_ns) if row.p95_ns else "-"
            rate = f"{row.per_second:,.0f}" if row.per_second else "-"
            lines.append(
                f"   {row.subject:<44} {_fmt_ns(row.median_ns):>12} {p95:>12} {rate:>12}"
                f" {row.rounds:>6}" + (f"  {row.note}" if row.note else "")
            )
        for check in self.checks:
            measured = "n/a" if check.measured is None else f"{check.measured:.3g}{check.unit}"
            if check.unit not in ("x", ""):
                measured = "n/a" if check.measured is None else f"{check.measured:.3g} {check.unit}"
            lines.append(
                f"   check {check.what:<52} {measured:>12}  target {check.target:<16} "
                f"{check.verdict}"
            )
        lines.extend(f"   note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_json(self, mode: str) -> dict[str, Any]:
        """The result file's content."""
        return {
            "name": self.name,
            "title": self.title,
            "mode": mode,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": versions(),
            "params": self.params,
            "rows": [{**asdict(row), "per_second": row.per_second} for row in self.rows],
            "checks": [{**asdict(check), "verdict": check.verdict} for check in self.checks],
            "series": self.series,
            "notes": self.notes,
        }

    def write(self, results_dir: Path, mode: str) -> Path:
        """Write ``<results_dir>/<name>.json`` and return its path."""
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.name}.json"
        path.write_text(json.dumps(self.to_json(mode), indent=2, default=str) + "\n")
        return path


def _fmt_ns(ns: float | None) -> str:
    if ns is None:
        return "-"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} us"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


RoundFn = Callable[[], Round]


def interleave(
    subjects: dict[str, Callable[[], RoundFn]],
    *,
    rounds: int,
    warmup: int = 1,
    unit: str = "op",
    max_seconds: float = 120.0,
) -> list[Row]:
    """Measure ``subjects`` in alternating rounds and summarise each one.

    Each subject is a factory called once (set-up, not timed) that returns a
    round function; a factory that raises :class:`Unavailable` gives a row with
    its reason. Rounds run A, B, C, A, B, C, ... with ``warmup`` unrecorded
    rounds first; the loop stops early after ``max_seconds``, keeping at least
    one recorded round per subject. The garbage collector is run between rounds
    and disabled within them.
    """
    ready: dict[str, RoundFn] = {}
    rows: dict[str, Row] = {}
    for name, factory in subjects.items():
        rows[name] = Row(name, unit=unit)
        try:
            ready[name] = factory()
        except Unavailable as exc:
            rows[name].note = f"unavailable: {exc}"
    samples: dict[str, list[Round]] = {name: [] for name in ready}
    deadline = time.monotonic() + max_seconds
    for index in range(warmup + rounds):
        order = list(ready.items())
        # Alternate the order too, so no subject always runs right after the same neighbour.
        if index % 2:
            order.reverse()
        for name, fn in order:
            gc.collect()
            gc.disable()
            try:
                sample = fn()
            finally:
                gc.enable()
            if index >= warmup:
                samples[name].append(sample)
        if index >= warmup and time.monotonic() > deadline:
            break
    for name, got in samples.items():
        row = rows[name]
        per_round = [s.total_ns / s.ops for s in got if s.ops]
        row.rounds = len(per_round)
        row.ops = sum(s.ops for s in got)
        if per_round:
            row.median_ns = statistics.median(per_round)
            singles = [ns for s in got for ns in s.per_op_ns]
            row.p95_ns = percentile(singles, 95) if singles else percentile(per_round, 95)
    return list(rows.values())


def timed_ops(ops: Iterable[Callable[[], object]]) -> Round:
    """Run each callable once, timing each; return the round with per-op times."""
    per: list[int] = []
    clock = time.perf_counter_ns
    for op in ops:
        t0 = clock()
        op()
        per.append(clock() - t0)
    return Round(sum(per), len(per), per)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, OS, Python and SQLite versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
    }


def versions() -> dict[str, str | None]:
    """Installed versions of every compared distribution (None when absent)."""
    found: dict[str, str | None] = {}
    for dist in COMPARED_DISTRIBUTIONS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found
