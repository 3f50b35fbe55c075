"""The collector's ASGI middleware and its request-body stream.

:class:`RequestMetrics` counts answers by route and status;
:class:`ConcurrencyCap` answers 503 past a bound on requests in progress;
:class:`BodyStream` reads a request body chunk by chunk so the submission
pipeline can refuse it mid-stream and then drain what is still coming.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry_core.collector.metrics import CollectorMetrics
from telemetry_core.collector.responses import error_response

__all__ = ["BodyStream", "ConcurrencyCap", "RequestMetrics"]


class RequestMetrics:
    """ASGI middleware counting responses by route and status.

    ``paths`` are the routes counted by name; any other path is counted as
    ``other``, so a scan of random paths cannot grow the label set.
    """

    def __init__(self, app: ASGIApp, metrics: CollectorMetrics, paths: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.paths else "other"

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_counted)


class ConcurrencyCap:
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


class BodyStream:
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
