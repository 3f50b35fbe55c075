"""The collector's answers: JSON documents, JSON errors and dashboard pages.

Every error answer is ``{"error": {"code": ..., "message": ...}}``
(docs/protocol.md); every HTML page carries :data:`DASHBOARD_HEADERS`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from telemetry_core.collector.auth import is_ascii_digits
from telemetry_core.collector.dashboard import CONTENT_SECURITY_POLICY
from telemetry_core.collector.ingest import IngestError

__all__ = [
    "DASHBOARD_HEADERS",
    "client_host",
    "declared_length",
    "disconnected",
    "error_response",
    "html_response",
    "json_response",
    "refusal",
    "refusal_headers",
]

log = logging.getLogger("telemetry_core.collector")

_encoder = msgspec.json.Encoder()

#: Defensive headers of every dashboard page (it loads nothing and runs no script).
DASHBOARD_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``body`` (anything msgspec encodes) as a JSON answer."""
    return Response(
        _encoder.encode(body), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The JSON error answer ``{"error": {"code": ..., "message": ...}}``."""
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def html_response(page: str, status: int = 200) -> HTMLResponse:
    """A dashboard page with the defensive headers."""
    return HTMLResponse(page, status_code=status, headers=DASHBOARD_HEADERS)


def refusal_headers(exc: IngestError) -> dict[str, str]:
    """The headers of a request-level refusal, whatever the body's format:
    ``Retry-After`` (429 and 503) and ``Connection: close`` as the error asks."""
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    elif exc.status == 503:
        headers["Retry-After"] = "1"
    if exc.close:
        headers["Connection"] = "close"
    return headers


def refusal(exc: IngestError) -> Response:
    """The JSON error answer of a request-level refusal (headers by :func:`refusal_headers`)."""
    return error_response(exc.status, exc.code, exc.message, refusal_headers(exc))


def disconnected(path: str) -> Response:
    """The answer to a client that went away mid-request.

    Nothing reaches the client; 499 (client closed request) is for the metrics.
    """
    log.info("client disconnected mid-request path=%s", path)
    return error_response(499, "client_disconnected", "the client closed the connection")


def client_host(request: Request) -> str:
    """The client's address, or ``unknown``."""
    return request.client.host if request.client else "unknown"


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` when it is a plain number."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and is_ascii_digits(declared) else None
