"""End to end: events/s from the client queue, over loopback HTTPS, committed by the collector.

Ours: a ``TelemetryService`` with remote submission to a real ``telemetry-collector
serve`` (SQLite, TLS) on 127.0.0.1; each round records N events (not timed) and
times ``submit_now()`` until the queue is drained, every batch committed by the
collector before its 200. Two baselines, both urllib3 keep-alive POSTs of the
same number of fresh events (new ids each round), JSON-encoded in batches of
the same size: to the *same* running collector, which validates and commits
them as it does ours (the end-to-end limit of that pipeline: the 0.5x check),
and to a stdlib TLS server that discards them (the limit of the HTTP/TLS stack
alone, reported with its own verdict). All subjects are interleaved in one
run; the full run repeats this for several batch sizes.

After the timed rounds, one longer drain per batch size (not interleaved, as
``/proc`` counts CPU in clock ticks) splits its CPU time per event between
the client process, the collector's event loop process and its writer
process. Each part runs on one thread, so the drain cannot go faster than its
busiest part, nor than the sum spread over the machine's cores with every
part perfectly overlapped: the figure that says whether the check against
the discarding server can be met on this machine. ``/proc`` counts the
collector's CPU in clock ticks (10 ms), so the quick run's split is coarse.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from bench import _cpu, _ours
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
    services: dict[int, object] = {}
    collector_pids: list[int] = []

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
            services[batch] = svc

            def one_round() -> Round:
                for _ in range(n):  # recording is set-up, not timed
                    _ours.track(svc)
                # Recording ends with the events in the database (a read stores
                # what track() journaled): their way in is recording's cost,
                # measured by the track benchmark, not sending's.
                svc.queue_stats()
                t0 = time.perf_counter_ns()
                svc.submit_now()
                elapsed = time.perf_counter_ns() - t0
                left = svc.get_submission_stats().queue_size
                if left:
                    raise RuntimeError(f"submit_now left {left} events queued")
                return Round(elapsed, n)

            return one_round

        return factory

    def raw(batch: int, base: str | None) -> Callable[[], Callable[[], Round]]:
        """The POST loop to ``base`` (None: the collector, once it runs)."""

        def factory() -> Callable[[], Round]:
            target = base if base is not None else (stack[0] if stack else None)
            if not isinstance(target, str):
                raise Unavailable("collector not running")
            pool = urllib3.HTTPSConnectionPool(
                "127.0.0.1",
                int(target.rsplit(":", 1)[1]),
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
                        raise RuntimeError(f"{target} answered {response.status}")
                return Round(time.perf_counter_ns() - t0, n)

            return one_round

        return factory

    try:
        with discard_server(certs) as discard_base:
            try:
                ctxmgr = _ours.collector(
                    ctx.workdir,
                    cert=certs.cert,
                    key=certs.key,
                    api_key=API_KEY,
                    pids=collector_pids,
                )
                stack.append(ctxmgr.__enter__())
                closers.insert(0, lambda: ctxmgr.__exit__(None, None, None))
            except Unavailable as exc:
                report.notes.append(f"ours unavailable: {exc}")
            for batch in sizes:
                subjects[f"ours submit_now, batch {batch}"] = ours(batch)
                subjects[_to_collector(batch)] = raw(batch, None)
                subjects[_to_discard(batch)] = raw(batch, discard_base)
            report.rows = interleave(subjects, rounds=rounds, unit="event", max_seconds=300)
            for batch, svc in services.items():
                split = _cpu_split(svc, collector_pids, ctx.pick(2000, 20000))
                if split is None:
                    report.notes.append(f"batch {batch}: the CPU split's drain stopped early")
                    continue
                report.series[f"cpu_split_batch_{batch}"] = split
                report.notes.append(_split_note(batch, split, report.row(_to_discard(batch))))
            for close in reversed(closers):
                close()
            closers.clear()
    finally:
        for close in reversed(closers):
            close()
    for batch in sizes:
        report.check_ratio(f"ours submit_now, batch {batch}", _to_collector(batch), at_least=0.5)
    for batch in sizes:
        report.check_ratio(f"ours submit_now, batch {batch}", _to_discard(batch), at_least=0.5)

    def per_second(name: Callable[[int], str]) -> list[float | None]:
        return [(r.per_second if (r := report.row(name(b))) else None) for b in sizes]

    report.series |= {
        "batch_sizes": sizes,
        "ours_events_per_s": per_second(lambda b: f"ours submit_now, batch {b}"),
        "raw_collector_events_per_s": per_second(_to_collector),
        "raw_events_per_s": per_second(_to_discard),
    }
    return report


def _cpu_split(svc: Any, collector_pids: list[int], n: int) -> dict[str, float] | None:
    """One drain of ``n`` events; CPU microseconds per event of each process, and
    wall (None when the drain left events queued)."""
    for _ in range(n):
        _ours.track(svc)
    svc.queue_stats()
    collector = collector_pids[:1] + [c for p in collector_pids[:1] for c in _cpu.children(p)]
    main = collector[:1]
    others = collector[1:]
    before = (_cpu.self_seconds(), _cpu.total(main), _cpu.total(others), time.perf_counter())
    svc.submit_now()
    after = (_cpu.self_seconds(), _cpu.total(main), _cpu.total(others), time.perf_counter())
    if svc.get_submission_stats().queue_size:
        return None
    client, loop, writer, wall = ((b - a) * 1e6 / n for a, b in zip(before, after, strict=True))
    return {"client_us": client, "collector_us": loop, "writer_us": writer, "wall_us": wall}


def _split_note(batch: int, split: dict[str, float], discard: Any) -> str:
    """What the CPU split says about the check against the discarding server."""
    cores = os.cpu_count() or 1
    parts = (split["client_us"], split["collector_us"], split["writer_us"])
    cpu = sum(parts)
    floor = max(cpu / cores, *parts)
    text = (
        f"batch {batch}: CPU per event client {parts[0]:.1f} + collector event loop "
        f"{parts[1]:.1f} + collector writer {parts[2]:.1f} = {cpu:.1f} us "
        f"(wall {split['wall_us']:.1f} us); with every part overlapped on {cores} cores a drain "
        f"takes at least {floor:.1f} us per event"
    )
    if discard is not None and discard.median_ns:
        text += f", at best {discard.median_ns / 1e3 / floor:.2f}x the discarding server"
    return text


def _to_collector(batch: int) -> str:
    return f"raw urllib3 POST to the collector, batch {batch}"


def _to_discard(batch: int) -> str:
    return f"raw urllib3 POST to discard, batch {batch}"
