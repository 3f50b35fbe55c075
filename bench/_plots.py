"""PNG plots of the last run (matplotlib, Agg backend): cost against queue depth,
throughput against batch size and against concurrent clients."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def draw(results: Path) -> list[Path]:
    """Draw every plot whose data exists under ``results``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    depth = _load(results, "queue_depth")
    if depth and depth["series"].get("depths"):
        s = depth["series"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (
            ("ours cycle", "ours: dequeue 100 + mark_submitted"),
            ("raw cycle", "raw sqlite3: claim + delete 100"),
            ("ours open+stats", "ours: open + stats()"),
        ):
            ys = [float("nan") if v is None else v / 1e6 for v in s.get(key, [])]
            if not all(math.isnan(y) for y in ys):
                ax.plot(s["depths"], ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("pending events in the queue")
        ax.set_ylabel("ms (median)")
        ax.set_title("Queue cost against depth")
        ax.legend()
        ax.grid(True, alpha=0.3)
        written.append(_save(fig, results / "queue_depth.png"))
    e2e = _load(results, "end_to_end")
    if e2e and e2e["series"].get("batch_sizes"):
        s = e2e["series"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            s["batch_sizes"],
            s["ours_events_per_s"],
            marker="o",
            label="ours: queue -> HTTPS -> collector commit",
        )
        if s.get("raw_collector_events_per_s"):
            ax.plot(
                s["batch_sizes"],
                s["raw_collector_events_per_s"],
                marker="o",
                label="raw urllib3 POST -> the same collector",
            )
        ax.plot(
            s["batch_sizes"],
            s["raw_events_per_s"],
            marker="o",
            linestyle="--",
            label="raw urllib3 POST -> discarding TLS server",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events per batch")
        ax.set_ylabel("events/s (median)")
        ax.set_title("End-to-end throughput against batch size")
        ax.legend()
        ax.grid(True, alpha=0.3)
        written.append(_save(fig, results / "end_to_end.png"))
    ingest = _load(results, "ingest")
    if ingest and ingest["series"].get("clients"):
        s = ingest["series"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in ("sqlite_events_per_s", "postgres_events_per_s"):
            if s.get(key):
                ax.plot(s["clients"], s[key], marker="o", label=f"collector, {key.split('_')[0]}")
        if s.get("raw_events_per_s"):
            ax.axhline(
                s["raw_events_per_s"], linestyle="--", color="grey", label="raw sqlite3 executemany"
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("events/s (median)")
        ax.set_title("Collector ingest against concurrency")
        ax.legend()
        ax.grid(True, alpha=0.3)
        written.append(_save(fig, results / "ingest.png"))
    rss = _load(results, "rss_depth")
    if rss and rss["series"].get("depths"):
        s = rss["series"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(s["depths"], s["added_mb"], marker="o", label="ours: service, worker backing off")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("pending events in the queue")
        ax.set_ylabel("MB above an idle interpreter")
        ax.set_title("Resident memory against queue depth")
        ax.legend()
        ax.grid(True, alpha=0.3)
        written.append(_save(fig, results / "rss_depth.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
