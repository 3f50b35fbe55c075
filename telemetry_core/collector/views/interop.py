"""Foreign ingest formats: OTLP/HTTP logs, PostHog's capture API, Segment's tracking API.

Each route is the ``/v1/submit`` pipeline
(:func:`~telemetry_core.collector.submission.handle_submission`) with the
format's own key, body and answers: the records are translated into our events
(:mod:`~telemetry_core.collector.otlp`,
:mod:`~telemetry_core.collector.analytics_sdks`), then limits, auth, the
schema and PII re-check, rate limits, dedup by id, rollups, stats and metrics
hold as for ``/v1/submit``. docs/protocol.md describes each route.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from telemetry_core.collector import analytics_sdks, otlp
from telemetry_core.collector.auth import bearer_token
from telemetry_core.collector.ingest import IngestError
from telemetry_core.collector.responses import json_response, refusal_headers
from telemetry_core.collector.submission import Submission, handle_submission
from telemetry_core.collector.translation import Translation, first_messages
from telemetry_core.schema import SubmitResponse

__all__ = ["ROUTES", "otlp_logs", "posthog_capture", "segment_batch"]

#: Paths of PostHog's capture API (posthog-python posts to ``/batch/``).
POSTHOG_PATHS = ("/batch/", "/capture/", "/e/", "/i/v0/e/")
#: Paths of Segment's tracking API (analytics-python posts to ``/v1/batch``).
SEGMENT_PATHS = ("/v1/batch", "/v1/track")


def _bearer(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization")) or None


def _basic_user(request: Request) -> str | None:
    """The user name of ``Authorization: Basic`` (Segment sends ``writeKey:``)."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


async def _accept(submission: Submission, kid: str, translation: Translation) -> SubmitResponse:
    """Hand the translated events to the pipeline (which counts the untranslated
    records as rejected too)."""
    settings = submission.collector.settings
    if translation.total > settings.max_events_per_batch:
        raise IngestError(
            413,
            "too_many_events",
            f"{translation.total} records; at most {settings.max_events_per_batch}",
        )
    return await submission.accept_built(kid, translation.events, untranslated=translation.errors)


# -- OTLP/HTTP logs -------------------------------------------------------------------


def _otlp_refusal(encoding: otlp.Encoding | None, exc: IngestError) -> Response:
    body, media = otlp.encode_status(exc.status, exc.message, encoding)
    return Response(body, status_code=exc.status, headers=refusal_headers(exc), media_type=media)


async def otlp_logs(request: Request) -> Response:
    """``POST /v1/logs``: an OTLP ``ExportLogsServiceRequest`` (protobuf or JSON)."""
    encoding = otlp.encoding_of(request.headers.get("content-type"))
    return await handle_submission(
        request,
        functools.partial(_otlp_logs, encoding),
        refuse=functools.partial(_otlp_refusal, encoding),
    )


async def _otlp_logs(encoding: otlp.Encoding | None, submission: Submission) -> Response:
    request = submission.request
    kid = submission.authenticate(
        request.headers.get("x-api-key") or _bearer(request),
        where="key (X-API-Key or Authorization: Bearer)",
    )
    if encoding is None:
        raise IngestError(
            415,
            "unsupported_media_type",
            "Content-Type must be application/x-protobuf or application/json",
        )
    content_encoding = submission.content_encoding()
    submission.admit()
    body = await submission.read_body(content_encoding)
    translation = otlp.translate_logs(body, encoding, received_ms=submission.collector.now_ms())
    verdict = await _accept(submission, kid, translation)
    errors = translation.all_errors(verdict.errors)
    answer = otlp.encode_export_response(len(errors), first_messages(errors), encoding)
    return Response(answer, media_type=encoding)


# -- PostHog and Segment ----------------------------------------------------------------


def _posthog_refusal(exc: IngestError) -> Response:
    # posthog-python reads "detail"; "type" and "code" are PostHog's own names.
    kind = "authentication_error" if exc.status == 401 else "validation_error"
    body = {"type": kind, "code": exc.code, "detail": exc.message, "attr": None}
    return json_response(body, exc.status, refusal_headers(exc))


def _segment_refusal(exc: IngestError) -> Response:
    # analytics-python reads "code" and "message".
    body = {"success": False, "code": exc.code, "message": exc.message}
    return json_response(body, exc.status, refusal_headers(exc))


def _verdict_body(verdict: SubmitResponse, translation: Translation) -> dict[str, object]:
    errors = translation.all_errors(verdict.errors)
    return {
        "accepted": verdict.accepted,
        "duplicates": verdict.duplicates,
        "rejected": len(errors),
        "errors": [{"index": e.index, "code": e.code, "message": e.message} for e in errors],
    }


Decoder = Callable[..., analytics_sdks.AnalyticsBatch]
Translator = Callable[..., Translation]


async def _analytics(
    decode: Decoder, translate: Translator, key_field: str, submission: Submission
) -> tuple[SubmitResponse, Translation]:
    """The steps PostHog and Segment share: the key is in the body (or Basic /
    Bearer auth), so the body is read, within the limits, before it is checked."""
    request = submission.request
    # posthog-js sends its JSON as text/plain (sendBeacon); the body decides.
    submission.require_media_type("application/json", "text/plain")
    content_encoding = submission.content_encoding()
    if request.query_params.get("compression") == "gzip-js":
        # posthog-js gzips in the browser and says so in the query, not in a header.
        content_encoding = "gzip"
    submission.admit()
    body = await submission.read_body(content_encoding)
    collector = submission.collector
    batch = decode(body, max_events=collector.settings.max_events_per_batch)
    kid = submission.authenticate(
        batch.key or _basic_user(request) or _bearer(request),
        where=f"key ({key_field} in the body, or Basic auth)",
    )
    translation = translate(batch, hasher=collector.identity, received_ms=collector.now_ms())
    return await _accept(submission, kid, translation), translation


async def posthog_capture(request: Request) -> Response:
    """PostHog's capture API: a batch, one event, or a list of events."""
    return await handle_submission(request, _posthog, refuse=_posthog_refusal)


async def _posthog(submission: Submission) -> Response:
    verdict, translation = await _analytics(
        analytics_sdks.decode_posthog, analytics_sdks.translate_posthog, "api_key", submission
    )
    return json_response({"status": 1, **_verdict_body(verdict, translation)})


async def segment_batch(request: Request) -> Response:
    """Segment's tracking API: ``/v1/batch`` or one ``/v1/track`` call."""
    return await handle_submission(request, _segment, refuse=_segment_refusal)


async def _segment(submission: Submission) -> Response:
    verdict, translation = await _analytics(
        analytics_sdks.decode_segment, analytics_sdks.translate_segment, "writeKey", submission
    )
    return json_response({"success": True, **_verdict_body(verdict, translation)})


ROUTES = (
    Route("/v1/logs", otlp_logs, methods=["POST"]),
    *(Route(path, posthog_capture, methods=["POST"]) for path in POSTHOG_PATHS),
    *(Route(path, segment_batch, methods=["POST"]) for path in SEGMENT_PATHS),
)
