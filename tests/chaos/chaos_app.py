"""A client application for the chaos suites, run as a subprocess.

``record``: record ``--count`` events through :class:`TelemetryService` at about
``--pace`` events per second while the background worker sends them; then keep
running until the queue is empty (or ``--linger`` seconds pass). The test kills
it with SIGKILL at random moments and starts it again.

``drain``: the app's next start after the chaos: record nothing and keep
running, bounded by ``--linger`` seconds, while the background worker empties
the queue; print a JSON summary and exit 0 when nothing is pending and nothing
is dead. It never revives dead letters nor calls ``submit_now()``: what the
library does not deliver by itself counts as lost.

Logs of the ``telemetry_core`` logger go to ``--log`` at DEBUG level, so the
suites can check that no secret or property value is ever logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

from telemetry_core import TelemetryConfig, TelemetryService

#: Event kinds; the type of an event is ``chaos.c<client>.<kind>``.
KINDS = ("run", "build", "test")
PROPERTY_MARKER = "propval-7c1d93ab"


def make_config(args: argparse.Namespace) -> TelemetryConfig:
    """The chaos client's configuration: short intervals, timeouts and leases."""
    return TelemetryConfig(
        app="chaosapp",
        db_path=Path(args.db),
        enabled=True,
        remote_enabled=True,
        endpoint=args.endpoint,
        api_key=args.api_key,
        ca_bundle=args.ca,
        submission_interval=0.2,
        submission_batch_size=args.batch_size,
        submission_rate_limit=10_000_000,
        max_queue_size=10_000_000,
        timeout=args.timeout,
        lease_seconds=args.lease,
        base_delay=0.05,
        max_delay=0.5,
        max_retry_after=1.0,
        exit_timeout=0.1,
    )


def record(args: argparse.Namespace, service: TelemetryService) -> int:
    """Record the events, then wait (bounded) for the worker to empty the queue."""
    rng = random.Random(args.seed)
    started = time.monotonic()
    for i in range(args.count):
        kind = KINDS[rng.randrange(len(KINDS))]
        service.track(
            f"chaos.c{args.client}.{kind}",
            {"step": i, "note": f"{PROPERTY_MARKER}{i % 7}", "ok": i % 3 != 0},
            duration_ms=rng.random() * 100,
            success=i % 5 != 0,
        )
        if args.pace:
            ahead = (i + 1) / args.pace - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    print(json.dumps({"recorded": args.count}), flush=True)
    deadline = time.monotonic() + args.linger
    while time.monotonic() < deadline:
        if service.queue_stats().pending == 0:
            return 0
        time.sleep(0.1)
    return 0


def drain(args: argparse.Namespace, service: TelemetryService) -> int:
    """Run until the background worker has emptied the queue (bounded)."""
    deadline = time.monotonic() + args.linger
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        # One read: the queue and what still waits in journals, seen together.
        status = service.status()
        queue = status["queue"]
        if queue["pending"] == queue["dead"] == 0 and status["spilled"] == 0:
            stats = service.get_submission_stats()
            print(
                json.dumps(
                    {
                        "empty": True,
                        "rounds": rounds,
                        "submissions": stats.submissions,
                        "network_errors": stats.network_errors,
                        "retries": stats.retries,
                    }
                ),
                flush=True,
            )
            return 0
        time.sleep(0.1)
    print(json.dumps({"empty": False, "queue": str(service.queue_stats())}), flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run ``record`` or ``drain``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["record", "drain"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--pace", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--linger", type=float, default=30.0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    handler = logging.FileHandler(args.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("telemetry_core")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    service = TelemetryService(make_config(args))
    with service:
        if args.mode == "record":
            return record(args, service)
        return drain(args, service)


if __name__ == "__main__":
    sys.exit(main())
