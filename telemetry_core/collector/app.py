"""The collector's HTTP application (Starlette), built by :func:`create_app`.

Routes: ``POST /v1/submit``, ``GET /ping``, ``GET /v1/info``, ``GET /v1/stats``,
``GET /`` (dashboard) with ``POST /login`` and ``POST /logout``, ``GET /metrics``.
Every error answer is JSON ``{"error": {"code": ..., "message": ...}}``;
docs/protocol.md is the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry_core._version import __version__
from telemetry_core.collector.auth import AdminAuth, KeyRing
from telemetry_core.collector.dashboard import LOGIN_TOKEN_FIELD, render_dashboard, render_login
from telemetry_core.collector.ingest import (
    BudgetLease,
    InFlightBudget,
    IngestError,
    check_events,
    decode_envelope,
    read_body,
)
from telemetry_core.collector.limiter import KeyedRateLimiter
from telemetry_core.collector.metrics import CollectorMetrics
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.store import CollectorStore, StatsQuery, StoreOverloaded
from telemetry_core.errors import StorageError
from telemetry_core.models import Clock
from telemetry_core.schema import ServerInfo, SubmitResponse

__all__ = [
    "DASHBOARD_HEADERS",
    "MAX_LOGIN_FORM_BYTES",
    "create_app",
    "error_response",
    "parse_stats_query",
]

log = logging.getLogger("telemetry_core.collector")

#: Shortest pause between two retention runs, so a failing run cannot spin.
_MIN_RETENTION_PAUSE_S = 1.0

_KNOWN_PATHS = frozenset(
    {"/", "/ping", "/login", "/logout", "/metrics", "/v1/info", "/v1/stats", "/v1/submit"}
)
_encoder = msgspec.json.Encoder()

#: The largest ``POST /login`` form read; larger ones get 413 without being read.
MAX_LOGIN_FORM_BYTES = 4096

#: Defensive headers of every dashboard page (it loads nothing and runs no script).
DASHBOARD_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(body), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The JSON error answer ``{"error": {"code": ..., "message": ...}}``."""
    return _json({"error": {"code": code, "message": message}}, status, headers)


def _html(page: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(page, status_code=status, headers=DASHBOARD_HEADERS)


def _client_host(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


def _parse_time(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise IngestError(
            400, "bad_query", f"{name} must be milliseconds or ISO-8601: {value[:40]!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def parse_stats_query(params: Mapping[str, str]) -> StatsQuery:
    """Build a :class:`StatsQuery` from ``from``, ``to`` (ms or ISO-8601; naive
    means UTC), ``app``, ``type`` and ``bucket`` (``hour``/``day``); 400 on bad input."""
    from_ms = _parse_time("from", params["from"]) if params.get("from") else 0
    to_ms = _parse_time("to", params["to"]) if params.get("to") else 2**62
    bucket = params.get("bucket") or "hour"
    if bucket not in ("hour", "day"):
        raise IngestError(400, "bad_query", "bucket must be hour or day")
    if not 0 <= from_ms < to_ms <= 2**62:
        raise IngestError(400, "bad_query", "need 0 <= from < to")
    return StatsQuery(
        from_ms=from_ms,
        to_ms=to_ms,
        app=params.get("app") or None,
        event_type=params.get("type") or None,
        bucket="day" if bucket == "day" else "hour",
    )


class _RequestMetrics:
    """ASGI middleware counting responses by route and status."""

    def __init__(self, app: ASGIApp, metrics: CollectorMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_counted)


class _ConcurrencyCap:
    """ASGI middleware bounding the HTTP requests handled at once.

    A request past ``limit`` is answered at once, without reading its body:
    503 ``overloaded`` with ``Retry-After: 1`` and ``Connection: close``, the
    JSON error of every other refusal. It runs on the event loop's one thread,
    so a plain counter suffices.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            refused = error_response(
                503,
                "overloaded",
                "too many requests in progress; retry later",
                {"Retry-After": "1", "Connection": "close"},
            )
            await refused(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class _BodyStream:
    """A request body read straight from ASGI ``receive``, remembering how far it got.

    Unlike ``Request.stream()`` it knows, after a refusal mid-body, whether the
    last chunk has arrived, so :meth:`drain` reads only what is still coming.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.received = 0
        self.complete = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks; raise ``ClientDisconnect`` if the client goes away."""
        while not self.complete:
            message = await self._receive()
            if message["type"] != "http.request":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            self.received += len(chunk)
            self.complete = not message.get("more_body", False)
            if chunk:
                yield chunk

    async def drain(self, max_bytes: int, seconds: float) -> bool:
        """Read and discard the rest of the body while the whole body stays within
        ``max_bytes`` and ``seconds``; True when it was read to its end."""
        try:
            async with asyncio.timeout(seconds):
                while not self.complete and self.received <= max_bytes:
                    message = await self._receive()
                    if message["type"] != "http.request":
                        return False
                    self.received += len(message.get("body", b""))
                    self.complete = not message.get("more_body", False)
        except TimeoutError:
            return False
        return self.complete and self.received <= max_bytes


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
    ``monotonic`` drives the rate limiters.
    """
    keys = KeyRing(settings.api_keys)
    admin = AdminAuth(settings.admin_token, session_ttl_s=settings.session_ttl_s, clock=clock)
    limiter = KeyedRateLimiter(
        per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst, clock=monotonic
    )
    admin_failures = KeyedRateLimiter(
        per_minute=settings.admin_failures_per_minute,
        burst=settings.admin_failures_per_minute,
        clock=monotonic,
    )
    budget = InFlightBudget(settings.inflight_budget_bytes)
    metrics = CollectorMetrics(lambda: float(store.queue_depth))
    store.add_commit_observer(metrics.observe_commit)
    info = ServerInfo(name=settings.name, version=__version__, limits=settings.limits())

    def now_ms() -> int:
        return int(clock() * 1000)

    def refusal(exc: IngestError) -> Response:
        headers: dict[str, str] = {}
        if exc.status == 503:
            headers["Retry-After"] = "1"
        if exc.close:
            headers["Connection"] = "close"
        return error_response(exc.status, exc.code, exc.message, headers)

    def disconnected(path: str) -> Response:
        # Nothing reaches the client; 499 (client closed request) is for the metrics.
        log.info("client disconnected mid-request path=%s", path)
        return error_response(499, "client_disconnected", "the client closed the connection")

    async def read_capped(
        body: _BodyStream, lease: BudgetLease, *, encoding: str, max_compressed: int, max_body: int
    ) -> bytes:
        """Read the body under the in-flight budget and the body deadline."""
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                return await read_body(
                    body.chunks(),
                    encoding=encoding,
                    max_compressed_bytes=max_compressed,
                    max_body_bytes=max_body,
                    lease=lease,
                )
        except TimeoutError:
            raise IngestError(
                408,
                "request_timeout",
                f"request body not received within {settings.body_timeout_s:g} s",
                close=True,
            ) from None
        except IngestError as exc:
            exc.close = True  # the rest of the body was not read
            raise

    async def drained(request: Request, body: _BodyStream) -> bool:
        """Read and discard what is left of a refused body, within the drain bounds.

        A client sends its whole body before it reads the answer; a connection
        closed under it while it sends turns the answer into a reset or a TLS
        EOF, which it cannot tell from a network fault (a 413 would then never
        make it split its batch). A declared length past the bound is not read.
        """
        if body.complete:
            return True
        declared = _declared_length(request)
        if declared is not None and declared > settings.drain_bytes:
            return False
        return await body.drain(settings.drain_bytes, settings.drain_seconds)

    async def submit(request: Request) -> Response:
        started = time.perf_counter()
        body = _BodyStream(request.receive)
        try:
            with budget.lease() as lease:
                return await _submit(request, lease, body)
        except IngestError as exc:
            if exc.status == 413:
                read_all = await drained(request, body)
                log.info(
                    "submit refused status=413 code=%s drained=%s bytes=%d",
                    exc.code,
                    "yes" if read_all else "no",
                    body.received,
                )
            else:
                log.info("submit refused status=%d code=%s", exc.status, exc.code)
            return refusal(exc)
        except ClientDisconnect:
            return disconnected("/v1/submit")
        finally:
            metrics.ingest_seconds.observe(time.perf_counter() - started)

    async def _submit(request: Request, lease: BudgetLease, stream: _BodyStream) -> Response:
        kid = keys.identify(request.headers.get("x-api-key"))
        if kid is None:
            raise IngestError(401, "unauthorized", "missing or unknown X-API-Key")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise IngestError(
                415, "unsupported_media_type", "Content-Type must be application/json"
            )
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            raise IngestError(415, "unsupported_encoding", "Content-Encoding must be gzip or none")
        declared = _declared_length(request)
        if declared is not None and declared > settings.max_compressed_body_bytes:
            raise IngestError(413, "too_large", "request body too large", close=True)
        if store.queue_depth >= settings.max_pending_events:
            raise IngestError(503, "overloaded", "the collector is busy; retry later", close=True)
        if not lease.fits(declared or 1):
            raise IngestError(
                503, "overloaded", "too many request bodies in flight; retry later", close=True
            )
        body = await read_capped(
            stream,
            lease,
            encoding=encoding,
            max_compressed=settings.max_compressed_body_bytes,
            max_body=settings.max_body_bytes,
        )
        raws = decode_envelope(body, max_events=settings.max_events_per_batch)
        received = now_ms()
        wait = limiter.acquire(kid, len(raws))
        if wait:
            metrics.events.labels("throttled").inc(len(raws))
            await store.record_outcomes(rejected={}, throttled=len(raws), received_ms=received)
            log.info("submit throttled key=%s events=%d retry_after=%d", kid, len(raws), wait)
            return error_response(
                429, "rate_limited", "rate limit exceeded", {"Retry-After": str(wait)}
            )
        checked = check_events(
            raws,
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
        if codes:
            await store.record_outcomes(rejected=codes, throttled=0, received_ms=received)
            for code, n in codes.items():
                metrics.rejected.labels(code).inc(n)
            metrics.events.labels("rejected").inc(len(checked.errors))
        metrics.events.labels("accepted").inc(outcome.accepted)
        metrics.events.labels("duplicate").inc(outcome.duplicates)
        log.info(
            "submit ok key=%s events=%d accepted=%d duplicates=%d rejected=%d",
            kid,
            len(raws),
            outcome.accepted,
            outcome.duplicates,
            len(checked.errors),
        )
        response = SubmitResponse(
            success=not checked.errors,
            accepted=outcome.accepted,
            rejected=len(checked.errors),
            duplicates=outcome.duplicates,
            errors=list(checked.errors),
        )
        return _json(response)

    async def ping(request: Request) -> Response:
        return _json({"status": "ok"})

    async def server_info(request: Request) -> Response:
        return _json(info)

    def throttled_admin(request: Request) -> Response | None:
        """429 when this client address has used up its refused admin attempts."""
        wait = admin_failures.wait_for(_client_host(request))
        if not wait:
            return None
        log.warning(
            "admin attempt throttled path=%s client=%s", request.url.path, _client_host(request)
        )
        return error_response(
            429,
            "rate_limited",
            "too many refused admin attempts; retry later",
            {"Retry-After": str(wait)},
        )

    def admin_failed(request: Request, how: str) -> None:
        """Count and log one refused admin credential (never its content)."""
        admin_failures.acquire(_client_host(request), 1)
        log.warning(
            "admin auth refused path=%s via=%s client=%s",
            request.url.path,
            how,
            _client_host(request),
        )

    def admin_check(request: Request, *, cookie: bool) -> Response | bool:
        """True when the request carries the admin token (or, with ``cookie``, a valid
        session); a 429 response when its address is throttled; False otherwise
        (a wrong Bearer token counts as a refused attempt)."""
        authorization = request.headers.get("authorization")
        if cookie and admin.check_cookie(request.cookies.get(AdminAuth.COOKIE)):
            return True
        if not authorization:
            return False
        throttled = throttled_admin(request)
        if throttled is not None:
            return throttled
        if admin.check_header(authorization):
            return True
        admin_failed(request, "bearer")
        return False

    def admin_refused() -> Response:
        return error_response(
            401,
            "unauthorized",
            "this endpoint needs the admin token (Authorization: Bearer)",
            {"WWW-Authenticate": 'Bearer realm="telemetry-collector"'},
        )

    async def stats(request: Request) -> Response:
        allowed = admin_check(request, cookie=False)
        if isinstance(allowed, Response):
            return allowed
        if not allowed:
            return admin_refused()
        try:
            query = parse_stats_query(request.query_params)
        except IngestError as exc:
            return error_response(exc.status, exc.code, exc.message)
        return _json(await store.stats(query))

    async def dashboard(request: Request) -> Response:
        allowed = admin_check(request, cookie=True)
        if isinstance(allowed, Response):
            return allowed
        if not allowed:
            return _html(render_login(None, title=settings.name), 401)
        try:
            query = parse_stats_query(request.query_params)
        except IngestError as exc:
            return error_response(exc.status, exc.code, exc.message)
        page = render_dashboard(
            await store.stats(query),
            title=settings.name,
            filters=dict(request.query_params),
            generated_at_ms=now_ms(),
        )
        return _html(page)

    async def login(request: Request) -> Response:
        try:
            with budget.lease() as lease:
                return await _login(request, lease)
        except IngestError as exc:
            log.info("login refused status=%d code=%s", exc.status, exc.code)
            return refusal(exc)
        except ClientDisconnect:
            return disconnected("/login")

    async def _login(request: Request, lease: BudgetLease) -> Response:
        throttled = throttled_admin(request)
        if throttled is not None:
            return throttled
        declared = _declared_length(request)
        if declared is not None and declared > MAX_LOGIN_FORM_BYTES:
            raise IngestError(413, "too_large", "form too large", close=True)
        body = await read_capped(
            _BodyStream(request.receive),
            lease,
            encoding="identity",
            max_compressed=MAX_LOGIN_FORM_BYTES,
            max_body=MAX_LOGIN_FORM_BYTES,
        )
        token = parse_qs(body.decode("utf-8", "replace")).get(LOGIN_TOKEN_FIELD, [""])[0]
        if not admin.check_token(token):
            admin_failed(request, "login")
            return _html(render_login("Wrong token.", title=settings.name), 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            AdminAuth.COOKIE,
            admin.new_session(),
            max_age=settings.session_ttl_s,
            httponly=True,
            samesite="strict",
            secure=settings.tls or settings.secure_cookies,
        )
        log.info("dashboard login client=%s", _client_host(request))
        return response

    async def logout(request: Request) -> Response:
        admin.revoke(request.cookies.get(AdminAuth.COOKIE))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(
            AdminAuth.COOKIE,
            httponly=True,
            samesite="strict",
            secure=settings.tls or settings.secure_cookies,
        )
        return response

    async def prometheus(request: Request) -> Response:
        allowed = admin_check(request, cookie=False)
        if isinstance(allowed, Response):
            return allowed
        if not allowed:
            return admin_refused()
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this answer, so the traceback is still logged
        # (by type and frame: our exceptions never carry keys or event properties).
        return error_response(500, "internal_error", "the collector failed to answer")

    async def retention() -> None:
        while True:
            try:
                deleted = await store.cleanup(settings.retention_days, now_ms())
                log.info("retention deleted=%d", deleted)
            except StorageError as exc:
                log.warning("retention failed error=%s", exc)
            except Exception:
                # a bug in one run must not end retention for the life of the process
                log.exception("retention failed unexpectedly")
            await asyncio.sleep(max(_MIN_RETENTION_PAUSE_S, settings.cleanup_interval_s))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(retention())
        log.info("collector started version=%s", __version__)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()
            log.info("collector stopped")

    app = Starlette(
        routes=[
            Route("/v1/submit", submit, methods=["POST"]),
            Route("/ping", ping, methods=["GET", "HEAD"]),
            Route("/v1/info", server_info, methods=["GET"]),
            Route("/v1/stats", stats, methods=["GET"]),
            Route("/", dashboard, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    # No 307 to the slash-less path: every unknown path gets the JSON 404, and
    # a client never has to follow a redirect with its body.
    app.router.redirect_slashes = False
    # Added first, so it runs inside the metrics middleware, which counts its 503s.
    app.add_middleware(_ConcurrencyCap, limit=settings.max_concurrent_requests)
    app.add_middleware(_RequestMetrics, metrics=metrics)
    app.state.metrics = metrics
    return app
