"""``python -m bench._http_stack serve ...``: ``telemetry-collector`` with the
HTTP parser and event loop named by ``BENCH_HTTP`` (``h11``, ``httptools``) and
``BENCH_LOOP`` (``asyncio``, ``uvloop``), for the benchmark that compares them.

Only the benchmark uses it: the server's choice is in
``telemetry_core.collector.server`` and docs/performance.md says why.
"""

from __future__ import annotations

import os
from typing import Any

from telemetry_core.collector import server
from telemetry_core.collector.cli import main

_configure = server._uvicorn_config


def _with_stack(settings: Any, app: Any) -> Any:
    config = _configure(settings, app)
    config.http = os.environ.get("BENCH_HTTP", config.http)
    config.loop = os.environ.get("BENCH_LOOP", config.loop)
    return config


server._uvicorn_config = _with_stack

if __name__ == "__main__":
    main()
