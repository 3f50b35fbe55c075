"""Render the figures of a chaos run (JSON) as the Markdown tables of docs/reliability.md.

Usage: ``python -m tests.chaos.render_figures [docs/reliability.json]``; prints Markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _kv(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items())


def _delivery(name: str, d: dict[str, Any]) -> list[str]:
    faults = {k: v for k, v in d["faults_by_kind"].items() if k != "forwarded"}
    return [
        f"### {name}",
        "",
        "| did | |",
        "|---|---|",
        f"| events recorded (local `telemetry_events`) | {d['events_recorded']:,} "
        f"in {d['event_types']} types |",
        f"| client processes | {d['client_processes']} (one queue database shared by two) |",
        f"| client process starts / SIGKILLs | {d['client_starts']} / {d['client_kills']} |",
        f"| collector processes / SIGKILLs / restarts | {d['collector_processes']} / "
        f"{d['collector_kills']} / {d['collector_restarts']} |",
        f"| exchanges through the proxy (chaos phase) | {d['exchanges']:,} |",
        f"| faulty exchanges | {d['faulty_exchanges']:,} ({d['faulty_share']:.1%}) |",
        f"| by kind | {_kv(faults)} |",
        f"| chaos phase | {d['chaos_seconds']} s |",
        "| revive steps, submit_now() calls in the drain | none (the app only runs) |",
        "",
        "| found | |",
        "|---|---|",
        f"| collector total | {d['collector_total']:,} |",
        f"| lost | **{d['lost']}** |",
        f"| counted twice | **{d['counted_twice']}** |",
        f"| unknown ids at the collector | {d['unknown_at_collector']} |",
        f"| resends absorbed as duplicates | {d['duplicates_absorbed_by_collector']:,} |",
        f"| queue entries left | {d['queue_entries_left']} |",
        f"| dead letters left | {d.get('dead_letters_left', 0)} |",
        "",
    ]


def render(document: dict[str, Any]) -> str:
    """The Markdown for every suite in ``document``."""
    suites = document["suites"]
    out: list[str] = [f"Mode: `{document['mode']}`.", ""]
    for key, title in (
        ("delivery_sqlite", "Delivery under chaos: SQLite collector"),
        ("delivery_postgres", "Delivery under chaos: two collectors on PostgreSQL"),
    ):
        if key in suites:
            out += _delivery(title, suites[key])
    if "zero_loss" in suites:
        out += [
            "### The zero-loss matrix",
            "",
            "| case | recorded (ids `track()` returned) | counted by the collector | notes |",
            "|---|---|---|---|",
        ]
        for case, z in sorted(suites["zero_loss"].items()):
            notes = {k: v for k, v in z.items() if k not in ("recorded", "counted")}
            out.append(f"| {case} | {z['recorded']:,} | {z['counted']:,} | {_kv(notes)} |")
        out.append("")
    if "hostile_input" in suites:
        h = suites["hostile_input"]
        out += [
            "### Hostile input",
            "",
            "| did | |",
            "|---|---|",
            f"| requests | {h['requests']:,} in {h['seconds']} s |",
            f"| by kind | {_kv(h['requests_by_kind'])} |",
            f"| answers by status | {_kv(h['answers_by_status'])} |",
            "",
            "| found | |",
            "|---|---|",
            f"| 5xx answers | **{h['responses_5xx']}** |",
            f"| collector crashes | **{h['collector_crashes']}** |",
            f"| answers breaking the protocol | {h['problems']} |",
            f"| valid events sent / counted | {h['valid_events_sent']:,} / "
            f"{h['valid_events_counted']:,} |",
            f"| collector RSS before / after / peak | {h['rss_before_mib']} / "
            f"{h['rss_after_mib']} / {h['rss_peak_mib']} MiB |",
            "",
        ]
    if "host_faults" in suites:
        f = suites["host_faults"]
        out += [
            "### Host faults (client)",
            "",
            "| scenario | max app-facing call (s) | warnings | typed errors from read helpers |",
            "|---|---|---|---|",
        ]
        typed = f.get("typed_errors_from_read_helpers", {})
        for name, seconds in f["max_call_seconds_by_scenario"].items():
            out.append(
                f"| {name} | {seconds} | {f['warnings_by_scenario'].get(name, '-')} "
                f"| {typed.get(name, 0)} |"
            )
        out += [
            "",
            f"Exceptions raised into the app by `track`, `submit_now`, `get_submission_stats`: "
            f"**{f['exceptions_raised_into_app']}** (any would fail the suite).",
            "",
        ]
    if "security" in suites:
        s = suites["security"]
        out += [
            "### Security",
            "",
            f"Checks: {_kv(s['checks'])}. Log sources checked: {s['log_sources_checked']}, "
            f"lines: {s['log_lines_checked']:,}; secrets or property values found: "
            f"**{s['secret_leaks']}**.",
            "",
        ]
    return "\n".join(out)


def main() -> None:
    """Print the tables for the JSON file given (default docs/reliability.json)."""
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reliability.json")
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
