"""End to end: events/s from the client queue, over loopback HTTPS, committed by the collector.

Ours: a ``TelemetryService`` with remote submission to a real ``telemetry-collector
serve`` (SQLite, TLS) on 127.0.0.1; each round records N events (not timed) and
times ``submit_now()`` until the queue is drained, every batch committed by the
collector before its 200. Baseline: urllib3 keep-alive POSTs of the same
number of events, JSON-encoded in batches of the same size, to a stdlib TLS
server that discards them. The full run repeats this for several batch sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from bench import _ours
from bench._harness import Context, Report, Round, Unavailable, interleave
from bench._tls import Certs, discard_server

NAME = "end_to_end"
API_KEY = "bench-submission-key"


def run(ctx: Context) -> Report:
    """Measure and compare; see the module docstring."""
    import urllib3

    sizes: list[int] = ctx.pick([100], [10, 100, 500])
    n = ctx.pick(500, 2000)
    rounds = ctx.pick(3, 9)
    report = Report(NAME, "client queue -> HTTPS -> collector commit (time per event)")
    report.params = {"events_per_round": n, "rounds": rounds, "batch_sizes": sizes}
    certs = Certs(ctx.workdir / "tls")
    closers: list[Callable[[], object]] = []
    subjects: dict[str, Callable[[], Callable[[], Round]]] = {}
    stack: list[object] = []

    def ours(batch: int) -> Callable[[], Callable[[], Round]]:
        def factory() -> Callable[[], Round]:
            if not stack:
                raise Unavailable("collector not running")
            base = stack[0]
            svc = _ours.service(
                ctx.workdir / f"client-{batch}.db",
                remote_enabled=True,
                endpoint=f"{base}/v1/submit",
                api_key=API_KEY,
                ca_bundle=str(certs.ca),
                submission_batch_size=batch,
                submission_interval=3600.0,
            )
            closers.append(lambda: _ours.close_service(svc))

            def one_round() -> Round:
                for _ in range(n):  # recording is set-up, not timed
                    _ours.track(svc)
                t0 = time.perf_counter_ns()
                svc.submit_now()
                elapsed = time.perf_counter_ns() - t0
                left = svc.get_submission_stats().queue_size
                if left:
                    raise RuntimeError(f"submit_now left {left} events queued")
                return Round(elapsed, n)

            return one_round

        return factory

    def raw(batch: int, base: str) -> Callable[[], Callable[[], Round]]:
        def factory() -> Callable[[], Round]:
            pool = urllib3.HTTPSConnectionPool(
                "127.0.0.1",
                int(base.rsplit(":", 1)[1]),
                ca_certs=str(certs.ca),
                assert_hostname="127.0.0.1",
                maxsize=1,
            )
            closers.append(pool.close)
            headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}

            def one_round() -> Round:
                events = _ours.event_dicts(n)
                t0 = time.perf_counter_ns()
                for i in range(0, n, batch):
                    body = json.dumps({"events": events[i : i + batch]}).encode()
                    response = pool.request("POST", "/v1/submit", body=body, headers=headers)
                    if response.status != 200:
                        raise RuntimeError(f"discard server answered {response.status}")
                return Round(time.perf_counter_ns() - t0, n)

            return one_round

        return factory

    try:
        with discard_server(certs) as discard_base:
            try:
                ctxmgr = _ours.collector(
                    ctx.workdir, cert=certs.cert, key=certs.key, api_key=API_KEY
                )
                stack.append(ctxmgr.__enter__())
                closers.insert(0, lambda: ctxmgr.__exit__(None, None, None))
            except Unavailable as exc:
                report.notes.append(f"ours unavailable: {exc}")
            for batch in sizes:
                subjects[f"ours submit_now, batch {batch}"] = ours(batch)
                subjects[f"raw urllib3 POST, batch {batch}"] = raw(batch, discard_base)
            report.rows = interleave(subjects, rounds=rounds, unit="event", max_seconds=300)
            for close in reversed(closers):
                close()
            closers.clear()
    finally:
        for close in reversed(closers):
            close()
    for batch in sizes:
        report.check_ratio(
            f"ours submit_now, batch {batch}", f"raw urllib3 POST, batch {batch}", at_least=0.5
        )
    report.series = {
        "batch_sizes": sizes,
        "ours_events_per_s": [
            (r.per_second if (r := report.row(f"ours submit_now, batch {b}")) else None)
            for b in sizes
        ],
        "raw_events_per_s": [
            (r.per_second if (r := report.row(f"raw urllib3 POST, batch {b}")) else None)
            for b in sizes
        ],
    }
    return report
