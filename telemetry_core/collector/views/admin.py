"""The operator's routes: ``GET /v1/stats``, the dashboard (``GET /`` with
``POST /login`` and ``POST /logout``) and ``GET /metrics``.

All of them need the admin token (``Authorization: Bearer``); the dashboard
also takes its session cookie. Refused credentials are counted per client
address: past ``admin_failures_per_minute`` the address gets 429.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from telemetry_core.collector.auth import AdminAuth, Session, bearer_token, same_origin
from telemetry_core.collector.collector import Collector
from telemetry_core.collector.dashboard import LOGIN_TOKEN_FIELD, render_dashboard, render_login
from telemetry_core.collector.dashboard_model import previous_query, resolve_range
from telemetry_core.collector.ingest import BudgetLease, IngestError
from telemetry_core.collector.middleware import BodyStream
from telemetry_core.collector.responses import (
    client_host,
    declared_length,
    disconnected,
    error_response,
    html_response,
    json_response,
    refusal,
)
from telemetry_core.collector.stats_query import parse_stats_query
from telemetry_core.collector.store import StatsQuery, StoreUnavailable
from telemetry_core.collector.submission import read_capped

__all__ = ["MAX_LOGIN_FORM_BYTES", "ROUTES"]

log = logging.getLogger("telemetry_core.collector")

#: The largest ``POST /login`` form read; larger ones get 413 without being read.
MAX_LOGIN_FORM_BYTES = 4096


def _throttled(collector: Collector, request: Request) -> Response | None:
    """429 when this client address has used up its refused admin attempts."""
    wait = collector.admin_failures.wait_for(client_host(request))
    if not wait:
        return None
    log.warning("admin attempt throttled path=%s client=%s", request.url.path, client_host(request))
    return error_response(
        429,
        "rate_limited",
        "too many refused admin attempts; retry later",
        {"Retry-After": str(wait)},
    )


def _failed(collector: Collector, request: Request, how: str) -> None:
    """Count and log one refused admin credential (never its content)."""
    collector.admin_failures.acquire(client_host(request), 1)
    log.warning(
        "admin auth refused path=%s via=%s client=%s", request.url.path, how, client_host(request)
    )


def _admitted(collector: Collector, request: Request, *, cookie: bool) -> Response | bool:
    """True when the request carries the admin token (or, with ``cookie``, a valid
    session); a 429 response when its address is throttled; False otherwise
    (a wrong Bearer token counts as a refused attempt)."""
    authorization = request.headers.get("authorization")
    if cookie:
        session = collector.admin.session(request.cookies.get(AdminAuth.COOKIE))
        if session is Session.VALID:
            return True
        if session is Session.FORGED:
            refused = _forged_session(collector, request)
            if refused is not None:
                return refused
    if not authorization:
        return False
    throttled = _throttled(collector, request)
    if throttled is not None:
        return throttled
    if collector.admin.check_header(authorization):
        return True
    _failed(collector, request, "bearer")
    return False


def _forged_session(collector: Collector, request: Request) -> Response | None:
    """Count a malformed or unsigned session cookie as a refused credential;
    429 when the address is throttled, else None (the caller answers 401)."""
    throttled = _throttled(collector, request)
    if throttled is not None:
        return throttled
    _failed(collector, request, "cookie")
    return None


def _cross_site(request: Request) -> Response | None:
    """403 for a form post a browser says came from another site (CSRF)."""
    if same_origin(request.headers):
        return None
    log.warning("cross-site post refused path=%s", request.url.path)
    return error_response(403, "cross_site", "cross-site form posts are refused")


def _refused() -> Response:
    return error_response(
        401,
        "unauthorized",
        "this endpoint needs the admin token (Authorization: Bearer)",
        {"WWW-Authenticate": 'Bearer realm="telemetry-collector"'},
    )


async def _read_stats(collector: Collector, request: Request) -> dict[str, Any]:
    """The stats document the request's query asks for: 400 ``bad_query`` for
    bad parameters, 503 ``store_unavailable`` (with ``Retry-After``) while the
    store cannot be read."""
    return await _read(collector, parse_stats_query(request.query_params))


async def _read(collector: Collector, query: StatsQuery) -> dict[str, Any]:
    """The stats document of ``query``; 503 ``store_unavailable`` (with
    ``Retry-After``) while the store cannot be read."""
    try:
        return await collector.store.stats(query)
    except StoreUnavailable as exc:
        log.warning("stats read failed: the store is unavailable error=%s", exc)
        raise IngestError(
            503, "store_unavailable", "the store cannot be read now; retry later", retry_after=5
        ) from exc


async def stats(request: Request) -> Response:
    """The DESIGN §7 stats document for the query's range and filters."""
    collector = Collector.of(request)
    allowed = _admitted(collector, request, cookie=False)
    if isinstance(allowed, Response):
        return allowed
    if not allowed:
        return _refused()
    try:
        return json_response(await _read_stats(collector, request))
    except IngestError as exc:
        return refusal(exc)


async def dashboard(request: Request) -> Response:
    """The dashboard page (the login page without a session): the query's range
    (or a ``range`` preset) and, when it has a start, the period just before it."""
    collector = Collector.of(request)
    title = collector.settings.name
    allowed = _admitted(collector, request, cookie=True)
    if isinstance(allowed, Response):
        return allowed
    if not allowed:
        return html_response(render_login(None, title=title), 401)
    now = collector.now_ms()
    try:
        params = resolve_range(request.query_params, now)
        query = parse_stats_query(params)
        document = await _read(collector, query)
        before = previous_query(query, now)
        previous = await _read(collector, before) if before is not None else None
    except IngestError as exc:
        return refusal(exc)
    page = render_dashboard(
        document,
        previous=previous,
        title=title,
        filters=params,
        generated_at_ms=now,
        sign_out=AdminAuth.COOKIE in request.cookies,
    )
    return html_response(page)


async def login(request: Request) -> Response:
    """Check the posted token; on success set the session cookie and go to ``/``."""
    collector = Collector.of(request)
    try:
        with collector.budget.lease() as lease:
            return await _login(collector, request, lease)
    except IngestError as exc:
        log.info("login refused status=%d code=%s", exc.status, exc.code)
        return refusal(exc)
    except ClientDisconnect:
        return disconnected("/login")


async def _login(collector: Collector, request: Request, lease: BudgetLease) -> Response:
    refused = _cross_site(request)
    if refused is not None:
        return refused
    throttled = _throttled(collector, request)
    if throttled is not None:
        return throttled
    declared = declared_length(request)
    if declared is not None and declared > MAX_LOGIN_FORM_BYTES:
        raise IngestError(413, "too_large", "form too large", close=True)
    body = await read_capped(
        collector,
        BodyStream(request.receive),
        lease,
        encoding="identity",
        max_compressed=MAX_LOGIN_FORM_BYTES,
        max_body=MAX_LOGIN_FORM_BYTES,
    )
    token = parse_qs(body.decode("utf-8", "replace")).get(LOGIN_TOKEN_FIELD, [""])[0]
    settings = collector.settings
    if not collector.admin.check_token(token):
        _failed(collector, request, "login")
        return html_response(render_login("Wrong token.", title=settings.name), 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        AdminAuth.COOKIE,
        collector.admin.new_session(),
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=settings.tls or settings.secure_cookies,
    )
    log.info("dashboard login client=%s", client_host(request))
    return response


async def logout(request: Request) -> Response:
    """End the session (its cookie is revoked and deleted) and go to ``/``.

    A forged session cookie is a refused credential (401, counted); a post a
    browser marks as cross-site is refused (403) and ends nothing."""
    collector = Collector.of(request)
    refused = _cross_site(request)
    if refused is not None:
        return refused
    value = request.cookies.get(AdminAuth.COOKIE)
    if collector.admin.session(value) is Session.FORGED:
        title = collector.settings.name
        return _forged_session(collector, request) or html_response(
            render_login(None, title=title), 401
        )
    collector.admin.revoke(value)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(
        AdminAuth.COOKIE,
        httponly=True,
        samesite="strict",
        secure=collector.settings.tls or collector.settings.secure_cookies,
    )
    return response


def _scrape_credential(collector: Collector, request: Request) -> bool:
    """True when the request carries the metrics token (``Authorization: Bearer``)."""
    token = collector.settings.metrics_token
    presented = bearer_token(request.headers.get("authorization"))
    if not token or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), token.encode())


async def prometheus(request: Request) -> Response:
    """The collector's metrics in the Prometheus text format (the metrics
    token or the admin token)."""
    collector = Collector.of(request)
    allowed = _scrape_credential(collector, request) or _admitted(collector, request, cookie=False)
    if isinstance(allowed, Response):
        return allowed
    if not allowed:
        return _refused()
    return Response(
        collector.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


ROUTES = (
    Route("/v1/stats", stats, methods=["GET"]),
    Route("/", dashboard, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/metrics", prometheus, methods=["GET"]),
)
