"""Routes anyone may call: ``GET /ping`` (liveness) and ``GET /v1/info`` (name,
version and the limits a client must respect)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from telemetry_core.collector.collector import Collector
from telemetry_core.collector.responses import json_response

__all__ = ["ROUTES", "ping", "server_info"]


async def ping(request: Request) -> Response:
    """``{"status": "ok"}`` while the collector serves."""
    return json_response({"status": "ok"})


async def server_info(request: Request) -> Response:
    """The collector's :class:`~telemetry_core.schema.ServerInfo`."""
    return json_response(Collector.of(request).info)


ROUTES = (
    Route("/ping", ping, methods=["GET", "HEAD"]),
    Route("/v1/info", server_info, methods=["GET"]),
)
