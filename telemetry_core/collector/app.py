"""The collector's HTTP application (Starlette), assembled by :func:`create_app`.

Routes: ``POST /v1/submit``, ``GET /ping``, ``GET /v1/info``, ``GET /v1/stats``,
``GET /`` (dashboard) with ``POST /login`` and ``POST /logout``, ``GET /metrics``
(handlers in :mod:`telemetry_core.collector.views`). Every error answer is JSON
``{"error": {"code": ..., "message": ...}}``; docs/protocol.md is the reference.
"""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from telemetry_core.collector.collector import Collector
from telemetry_core.collector.middleware import ConcurrencyCap, RequestMetrics
from telemetry_core.collector.responses import error_response
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.store import CollectorStore
from telemetry_core.collector.views import ROUTES
from telemetry_core.models import Clock

__all__ = ["create_app"]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, so the traceback is still logged
    # (by type and frame: our exceptions never carry keys or event properties).
    return error_response(500, "internal_error", "the collector failed to answer")


def create_app(
    settings: CollectorSettings,
    store: CollectorStore,
    *,
    clock: Clock = time.time,
    monotonic: Clock = time.monotonic,
) -> Starlette:
    """Build the collector application around ``store``.

    The app owns the store from then on: its lifespan runs retention every
    ``settings.cleanup_interval_s`` and closes the store (after in-flight
    batches commit) at shutdown. ``clock`` (wall seconds) dates receptions;
    ``monotonic`` drives the rate limiters. The :class:`Collector` is in
    ``app.state.collector``.
    """
    collector = Collector(settings, store, clock=clock, monotonic=monotonic)
    app = Starlette(
        routes=list(ROUTES),
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lambda _app: collector.running(),
    )
    # No 307 to the slash-less path: every unknown path gets the JSON 404, and
    # a client never has to follow a redirect with its body.
    app.router.redirect_slashes = False
    # Added first, so it runs inside the metrics middleware, which counts its 503s.
    app.add_middleware(ConcurrencyCap, limit=settings.max_concurrent_requests)
    app.add_middleware(
        RequestMetrics, metrics=collector.metrics, paths=[route.path for route in ROUTES]
    )
    app.state.collector = collector
    app.state.metrics = collector.metrics
    return app
