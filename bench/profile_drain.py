"""Profile ``submit_now()`` draining recorded events to a real collector.

``python -m bench.profile_drain [events] [batch]`` starts ``telemetry-collector
serve`` (SQLite, TLS on loopback, a throwaway CA), records the events (not
profiled), drains them with ``submit_now()`` under pyinstrument and prints the
profile; ``docs/performance.md`` cites its output
(``bench/results/profile-end_to_end-client.txt``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench import _ours
from bench._tls import Certs

API_KEY = "bench-submission-key"


def main(events: int = 2000, batch: int = 100) -> None:
    """Run the profile and print it."""
    from pyinstrument import Profiler

    with tempfile.TemporaryDirectory(prefix="telemetry-profile-") as tmp:
        work = Path(tmp)
        certs = Certs(work / "tls")
        with _ours.collector(work, cert=certs.cert, key=certs.key, api_key=API_KEY) as base:
            svc = _ours.service(
                work / "client.db",
                remote_enabled=True,
                endpoint=f"{base}/v1/submit",
                api_key=API_KEY,
                ca_bundle=str(certs.ca),
                submission_batch_size=batch,
                submission_interval=3600.0,
            )
            try:
                for _ in range(300):  # warm-up: connection, TLS, the collector's caches
                    _ours.track(svc)
                svc.submit_now()
                for _ in range(events):
                    _ours.track(svc)
                svc.queue_stats()  # recording ends with the events stored (the journal merged)
                profiler = Profiler(interval=0.0005)
                profiler.start()
                t0 = time.perf_counter()
                svc.submit_now()
                elapsed = time.perf_counter() - t0
                profiler.stop()
            finally:
                _ours.close_service(svc)
    print(
        f"# submit_now() of {events} events, batch {batch}: {elapsed * 1e3:.0f} ms wall "
        f"({elapsed / events * 1e6:.1f} us/event)"
    )
    print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
