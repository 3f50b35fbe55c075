"""``POST /v1/submit``: a batch of events in the native protocol (docs/protocol.md)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from telemetry_core.collector.ingest import decode_envelope
from telemetry_core.collector.responses import json_response
from telemetry_core.collector.submission import Submission, handle_submission

__all__ = ["ROUTES", "submit"]


async def submit(request: Request) -> Response:
    """Take a ``{"events": [...]}`` batch keyed by ``X-API-Key``; answer the per-event verdict."""
    return await handle_submission(request, _submit)


async def _submit(submission: Submission) -> Response:
    kid = submission.authenticate(submission.request.headers.get("x-api-key"))
    submission.require_media_type("application/json")
    encoding = submission.content_encoding()
    submission.admit()
    body = await submission.read_body(encoding)
    max_events = submission.collector.settings.max_events_per_batch
    raws = decode_envelope(body, max_events=max_events)
    return json_response(await submission.accept(kid, raws))


ROUTES = (Route("/v1/submit", submit, methods=["POST"]),)
