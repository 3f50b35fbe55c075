"""An application as users embed the library, run as a subprocess by the zero-loss matrix.

It does only what an app does: build a :class:`TelemetryService` from its
configuration, call ``track()``, and exit (normally, or abruptly). It never
revives dead letters, never calls ``submit_now()``: delivery is the library's
job. Every ``track()`` that returned an id is reported on stdout as one JSON line
(``{"ids": n, "pid": ...}``), so the test knows exactly what was recorded.

``--speed K`` runs the client's clocks K times faster than real time (wall and
monotonic alike, so backoff delays, retry times, leases and ``Retry-After`` all
shrink together) and wakes the worker every few milliseconds as time passes: a
"one hour" outage then takes 3600/K seconds.

Shapes (``--shape``):

``plain``      track ``--count`` events, then keep running up to ``--linger``
               seconds while events are pending, then exit normally;
``hard-exit``  track, then ``os._exit(0)`` right after the last ``track()``;
``mp-fork``    track, then ``--children`` workers forked by ``multiprocessing``
               each track ``--count`` and return; the parent lingers;
``prefork``    gunicorn style: the parent tracks, ``os.fork()`` s ``--children``
               workers that track and ``sys.exit(0)``; the parent lingers.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from telemetry_core import TelemetryConfig, TelemetryService


def _report(ids: list[str | None]) -> None:
    sys.stdout.write(
        json.dumps({"ids": sum(1 for i in ids if i), "none": ids.count(None), "pid": os.getpid()})
        + "\n"
    )
    sys.stdout.flush()


def _clocks(speed: float) -> tuple[Callable[[], float], Callable[[], float]]:
    wall0, mono0 = time.time(), time.monotonic()

    def wall() -> float:
        return wall0 + (time.time() - wall0) * speed

    def mono() -> float:
        return mono0 + (time.monotonic() - mono0) * speed

    return wall, mono


def _ticker(service: TelemetryService, stop: threading.Event) -> None:
    # Time runs fast: let the worker look at its (fast) clock often.
    while not stop.wait(0.005):
        worker = service.worker
        if worker is not None:
            worker.wake()


def _track(service: TelemetryService, event_type: str, count: int) -> list[str | None]:
    return [
        service.track(event_type, {"i": i, "ok": i % 2 == 0}, duration_ms=float(i % 50))
        for i in range(count)
    ]


def _linger(service: TelemetryService, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # One read: the queue and what still waits in journals, seen together.
        status = service.status()
        queue = status["queue"]
        if queue["pending"] == queue["dead"] == 0 and status["spilled"] == 0:
            return
        time.sleep(0.05)


def _child(config: TelemetryConfig, event_type: str, count: int) -> None:
    # A multiprocessing worker inherits the parent's service object: use it as
    # the app would (here: a new one made from the same configuration).
    service = TelemetryService(config)
    _report(_track(service, event_type, count))


def main(argv: list[str] | None = None) -> int:
    """Run one app shape."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="plain")
    parser.add_argument("--db", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--type", default="zl.event")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    handler = logging.FileHandler(args.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    logger = logging.getLogger("telemetry_core")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    # The app's own settings: production defaults for backoff, retries and
    # leases; only the interval is short, as in an interactive tool.
    config = TelemetryConfig(
        app="fieldapp",
        db_path=Path(args.db),
        enabled=True,
        remote_enabled=True,
        endpoint=args.endpoint,
        api_key=args.api_key,
        ca_bundle=args.ca,
        submission_interval=0.2 * args.speed,
        submission_batch_size=50,
        timeout=args.timeout,
        lease_seconds=max(5.0, args.timeout + 2.0) * args.speed,
        exit_timeout=0.5,
    )
    wall, mono = _clocks(args.speed)
    service = TelemetryService(config, clock=wall, monotonic=mono)
    stop = threading.Event()
    if args.speed != 1.0:
        threading.Thread(target=_ticker, args=(service, stop), daemon=True).start()
    with service:
        ids = _track(service, args.type, args.count)
        _report(ids)
        if args.shape == "hard-exit":
            os._exit(0)
        if args.shape == "mp-fork":
            ctx = multiprocessing.get_context("fork")
            procs = [
                ctx.Process(target=_child, args=(config, args.type, args.count))
                for _ in range(args.children)
            ]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(60)
        elif args.shape == "prefork":
            pids = []
            for _ in range(args.children):
                pid = os.fork()
                if pid == 0:
                    # A pre-forked worker: it serves, tracks, and exits like
                    # gunicorn's (sys.exit: the interpreter's exit handlers run).
                    stop.clear()
                    _report(_track(service, args.type, args.count))
                    sys.exit(0)
                pids.append(pid)
            for pid in pids:
                os.waitpid(pid, 0)
        _linger(service, args.linger)
    stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
