"""Where a one-event process spends its start-up: ``python -m bench.startup_parts [rounds]``.

Interleaved process launches (as ``cli_startup``): ``python -c pass``, the
import of each dependency the service needs on its own, ``import
telemetry_core.service`` and the ``cli_startup`` script that records one event;
printed as the median and the milliseconds added to ``python -c pass``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench import _proc


def main(rounds: int = 15) -> None:
    """Run the launches and print the table."""
    with tempfile.TemporaryDirectory(prefix="telemetry-startup-") as tmp:
        script = Path(tmp) / "record_one.py"
        script.write_text(_proc.RECORD_ONE)
        subjects = {
            "python -c pass": ["-c", "pass"],
            "import attrs": ["-c", "import attrs"],
            "import msgspec.json": ["-c", "import msgspec.json"],
            "import pluggy": ["-c", "import pluggy"],
            "import sqlite3": ["-c", "import sqlite3"],
            "import telemetry_core.service": ["-c", "import telemetry_core.service"],
            "record one event and exit": [str(script), str(Path(tmp) / "one.db")],
        }
        env = _proc.clean_env()
        times: dict[str, list[float]] = {name: [] for name in subjects}
        for index in range(rounds + 1):
            order = list(subjects.items())
            if index % 2:
                order.reverse()
            for name, args in order:
                done = _proc.timed_run([sys.executable, *args], env=env, cwd=Path(tmp))
                if index:  # the first round warms the bytecode caches
                    times[name].append(done)
    floor = statistics.median(times["python -c pass"])
    for name, got in times.items():
        median = statistics.median(got)
        print(f"{name:<32} {median * 1e3:7.1f} ms   added {(median - floor) * 1e3:6.1f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
