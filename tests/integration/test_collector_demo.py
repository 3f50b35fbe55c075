"""``make demo`` (``python -m telemetry_core.collector.demo``) as a user runs it: a real
subprocess that starts its own collector, exits 0 and prints the aggregates."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("do_not_track", [False, True], ids=["consent", "DO_NOT_TRACK"])
def test_demo_prints_the_aggregates_and_exits_0(do_not_track: bool) -> None:
    env = dict(os.environ)
    # An operator's collector settings must not reach the demo's own collector.
    env["TELEMETRY_COLLECTOR_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/nothing"
    env["TELEMETRY_COLLECTOR_API_KEYS"] = "someone-elses-key"
    env.pop("DO_NOT_TRACK", None)
    if do_not_track:
        env["DO_NOT_TRACK"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "telemetry_core.collector.demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "collector: starting on https://127.0.0.1:" in out
    assert "collector: stopped (exit status 0)" in out
    if do_not_track:
        assert "DO_NOT_TRACK is set" in out
        assert "recorded 0 of 400 events, sent 0" in out
        assert "total events 0 " in out
    else:
        assert "recorded 400 of 400 events, sent 400" in out
        assert "accepted 400, duplicates 0, rejected 0" in out
        assert "total events 400 " in out
        for etype in ("build_finished", "command_executed", "file_opened", "plugin_loaded"):
            assert etype in out
