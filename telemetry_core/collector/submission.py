"""The submission pipeline every ingest route shares.

A route that takes events (``POST /v1/submit`` today; other wire formats join
the same way) hands its request to :func:`handle_submission` with a handler
that gets a :class:`Submission` and calls, in this order::

    kid = submission.authenticate(presented_key)      # 401 unknown key
    submission.require_media_type("application/json") # 415
    encoding = submission.content_encoding()           # 415 (identity or gzip)
    submission.admit()                                 # 413 declared too large, 503 busy
    body = await submission.read_body(encoding)        # 413 / 408, under the in-flight budget
    raws = ...decode the route's format into one JSON event per item...
    result = await submission.accept(kid, raws)        # 429, schema + PII re-check,
                                                       # dedup, rollups, metrics, logs

A foreign format that translates its records into :class:`~telemetry_core.schema.Event`
values hands them to :meth:`Submission.accept_built` instead (the same checks and verdicts).

:func:`handle_submission` holds the in-flight budget lease, turns an
:class:`~telemetry_core.collector.ingest.IngestError` into its JSON answer
(draining a refused body first, so a client still sending can read a 413),
answers a client that went away, and times the request for the metrics.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from telemetry_core.collector.collector import Collector
from telemetry_core.collector.ingest import (
    BudgetLease,
    CheckedBatch,
    IngestError,
    check_built,
    check_events,
    read_body,
)
from telemetry_core.collector.middleware import BodyStream
from telemetry_core.collector.responses import (
    client_host,
    declared_length,
    disconnected,
    refusal,
)
from telemetry_core.collector.store import StoreOverloaded
from telemetry_core.errors import StorageError
from telemetry_core.schema import Event, EventError, SubmitResponse

__all__ = ["Submission", "SubmissionHandler", "fingerprint", "handle_submission", "read_capped"]

log = logging.getLogger("telemetry_core.collector")


def fingerprint(key: str) -> str:
    """A short, non-reversible name of a presented key, for logs: the same as
    :func:`~telemetry_core.collector.auth.key_id` for every configured key,
    and defined for any string a client may send."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class Submission:
    """One submission request on its way through the pipeline (see the module docstring)."""

    def __init__(
        self, collector: Collector, request: Request, lease: BudgetLease, stream: BodyStream
    ) -> None:
        self.collector = collector
        self.request = request
        self.lease = lease
        self.stream = stream
        #: A fingerprint of the key presented (``none`` before :meth:`authenticate`
        #: or without one), for the log lines of this request; never the key.
        self.key = "none"

    def authenticate(self, presented: str | None, *, where: str = "X-API-Key") -> str:
        """The id of the submission key ``presented``; 401 when it is missing or
        unknown (the message names ``where`` the format carries its key)."""
        if presented:
            self.key = fingerprint(presented)
        kid = self.collector.keys.identify(presented)
        if kid is None:
            raise IngestError(401, "unauthorized", f"missing or unknown {where}")
        return kid

    def require_media_type(self, *accepted: str) -> None:
        """415 unless the ``Content-Type`` (without parameters) is one of ``accepted``."""
        media = self.request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in accepted:
            raise IngestError(
                415, "unsupported_media_type", f"Content-Type must be {' or '.join(accepted)}"
            )

    def content_encoding(self) -> str:
        """The body's ``Content-Encoding`` (``identity`` or ``gzip``); 415 otherwise."""
        encoding = self.request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise IngestError(415, "unsupported_encoding", "Content-Encoding must be gzip or none")
        return encoding

    def admit(self) -> None:
        """Refuse before reading: 413 for a declared length past the compressed
        limit, 503 when the store's writer is behind or the in-flight budget is spent."""
        settings = self.collector.settings
        declared = declared_length(self.request)
        if declared is not None and declared > settings.max_compressed_body_bytes:
            raise IngestError(413, "too_large", "request body too large", close=True)
        if self.collector.store.queue_depth >= settings.max_pending_events:
            raise IngestError(503, "overloaded", "the collector is busy; retry later", close=True)
        if not self.lease.fits(declared or 1):
            raise IngestError(
                503, "overloaded", "too many request bodies in flight; retry later", close=True
            )

    async def read_body(self, encoding: str) -> bytes:
        """The whole (inflated) body, within the collector's body limits."""
        settings = self.collector.settings
        return await read_capped(
            self.collector,
            self.stream,
            self.lease,
            encoding=encoding,
            max_compressed=settings.max_compressed_body_bytes,
            max_body=settings.max_body_bytes,
        )

    async def accept(
        self, kid: str, raws: list[msgspec.Raw], *, untranslated: Sequence[EventError] = ()
    ) -> SubmitResponse:
        """Rate-limit, check (schema and PII), deduplicate and store ``raws``, one
        JSON event each; return the per-event verdict. 429 when the key's rate
        limit is spent, 503 when the store is busy or failed.

        ``untranslated`` are the records of a foreign format that never became
        events (no event name, a profile call, ...): they count against the rate
        limit and as rejected in the stats, metrics and log like the events
        rejected here, but the verdict returned covers ``raws`` only (its indexes
        are theirs)."""
        return await self._accept(
            kid, len(raws), functools.partial(check_events, raws), untranslated
        )

    async def accept_built(
        self,
        kid: str,
        events: Sequence[Event],
        *,
        untranslated: Sequence[EventError] = (),
    ) -> SubmitResponse:
        """:meth:`accept` for the events a foreign format was translated into:
        checked by :func:`~telemetry_core.collector.ingest.check_built`, which
        gives the verdict :meth:`accept` gives for them as JSON without encoding
        and decoding them again. Every translation builds its ids, types and
        property keys in their patterns (``translation.Translation`` says how),
        so they are checked as ``normalised``."""
        check = functools.partial(check_built, events, normalised=True)
        return await self._accept(kid, len(events), check, untranslated)

    async def _accept(
        self,
        kid: str,
        count: int,
        check: Callable[..., CheckedBatch],
        untranslated: Sequence[EventError],
    ) -> SubmitResponse:
        collector = self.collector
        settings, store, metrics = collector.settings, collector.store, collector.metrics
        received = collector.now_ms()
        records = count + len(untranslated)
        wait = collector.limiter.acquire(kid, records)
        if wait:
            metrics.events.labels("throttled").inc(records)
            await store.record_outcomes(rejected={}, throttled=records, received_ms=received)
            log.info("submit throttled key=%s events=%d retry_after=%d", kid, records, wait)
            raise IngestError(429, "rate_limited", "rate limit exceeded", retry_after=wait)
        checked = check(
            now_ms=received,
            max_event_bytes=settings.max_event_bytes,
            max_future_skew_ms=settings.max_future_skew_ms,
        )
        try:
            outcome = await store.ingest(checked.events, received)
        except StoreOverloaded as exc:
            raise IngestError(503, "overloaded", str(exc)) from exc
        except StorageError as exc:
            log.error("store write failed error=%s", type(exc).__name__)
            raise IngestError(503, "store_unavailable", "the store failed; retry later") from exc
        codes = Counter(e.code for e in checked.errors)
        codes.update(e.code for e in untranslated)
        if codes:
            await store.record_outcomes(rejected=codes, throttled=0, received_ms=received)
            for code, n in codes.items():
                metrics.rejected.labels(code).inc(n)
            metrics.events.labels("rejected").inc(codes.total())
        metrics.events.labels("accepted").inc(outcome.accepted)
        metrics.events.labels("duplicate").inc(outcome.duplicates)
        log.info(
            "submit ok key=%s events=%d accepted=%d duplicates=%d rejected=%d",
            kid,
            records,
            outcome.accepted,
            outcome.duplicates,
            codes.total(),
        )
        return SubmitResponse(
            success=not checked.errors,
            accepted=outcome.accepted,
            rejected=len(checked.errors),
            duplicates=outcome.duplicates,
            errors=list(checked.errors),
        )


#: A route's own part of the pipeline: decode its format, call the steps, answer.
SubmissionHandler = Callable[[Submission], Awaitable[Response]]


async def handle_submission(
    request: Request,
    handler: SubmissionHandler,
    *,
    refuse: Callable[[IngestError], Response] = refusal,
) -> Response:
    """Run ``handler`` on ``request`` inside the pipeline's guard (see the module
    docstring); ``refuse`` shapes a refusal in the route's format (default: our
    JSON error)."""
    collector = Collector.of(request)
    started = time.perf_counter()
    stream = BodyStream(request.receive)
    submission: Submission | None = None
    try:
        with collector.budget.lease() as lease:
            submission = Submission(collector, request, lease, stream)
            return await handler(submission)
    except IngestError as exc:
        who = f"client={client_host(request)} key={submission.key if submission else 'none'}"
        if exc.status == 413:
            read_all = await _drained(collector, request, stream)
            log.info(
                "submit refused status=413 code=%s drained=%s bytes=%d %s",
                exc.code,
                "yes" if read_all else "no",
                stream.received,
                who,
            )
        elif exc.status != 429:  # a throttled batch was logged where it was counted
            log.info("submit refused status=%d code=%s %s", exc.status, exc.code, who)
        return refuse(exc)
    except ClientDisconnect:
        return disconnected(request.url.path)
    finally:
        collector.metrics.ingest_seconds.observe(time.perf_counter() - started)


async def read_capped(
    collector: Collector,
    stream: BodyStream,
    lease: BudgetLease,
    *,
    encoding: str,
    max_compressed: int,
    max_body: int,
) -> bytes:
    """Read a body under the in-flight budget and the body deadline (408 past it)."""
    timeout = collector.settings.body_timeout_s
    try:
        async with asyncio.timeout(timeout):
            return await read_body(
                stream.chunks(),
                encoding=encoding,
                max_compressed_bytes=max_compressed,
                max_body_bytes=max_body,
                lease=lease,
            )
    except TimeoutError:
        raise IngestError(
            408, "request_timeout", f"request body not received within {timeout:g} s", close=True
        ) from None
    except IngestError as exc:
        exc.close = True  # the rest of the body was not read
        raise


async def _drained(collector: Collector, request: Request, stream: BodyStream) -> bool:
    """Read and discard what is left of a refused body, within the drain bounds.

    A client sends its whole body before it reads the answer; a connection
    closed under it while it sends turns the answer into a reset or a TLS
    EOF, which it cannot tell from a network fault (a 413 would then never
    make it split its batch). A declared length past the bound is not read.
    """
    if stream.complete:
        return True
    settings = collector.settings
    declared = declared_length(request)
    if declared is not None and declared > settings.drain_bytes:
        return False
    return await stream.drain(settings.drain_bytes, settings.drain_seconds)
