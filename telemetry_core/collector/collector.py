"""The :class:`Collector`: everything one collector app holds, in one object.

:func:`~telemetry_core.collector.app.create_app` builds one and keeps it in
``app.state.collector``; every route handler (``collector/views/``) reads it
with :meth:`Collector.of`. Nothing else holds state between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.requests import Request

from telemetry_core._version import __version__
from telemetry_core.collector.auth import AdminAuth, KeyRing
from telemetry_core.collector.identity import IdentityHasher, new_secret
from telemetry_core.collector.ingest import InFlightBudget
from telemetry_core.collector.limiter import KeyedRateLimiter
from telemetry_core.collector.metrics import CollectorMetrics
from telemetry_core.collector.retention import Retention
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.store import CollectorStore
from telemetry_core.models import Clock
from telemetry_core.schema import ServerInfo

__all__ = ["Collector"]

log = logging.getLogger("telemetry_core.collector")


class Collector:
    """One collector: its settings, store, key ring, admin auth, rate limiters,
    in-flight body budget and metrics.

    ``clock`` (wall seconds) dates receptions and sessions; ``monotonic``
    drives the rate limiters. The collector owns ``store``: :meth:`running`
    closes it at the end.
    """

    def __init__(
        self,
        settings: CollectorSettings,
        store: CollectorStore,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.keys = KeyRing(settings.api_keys)
        self.admin = AdminAuth(
            settings.admin_token, session_ttl_s=settings.session_ttl_s, clock=clock
        )
        #: The submission rate limit, per key.
        self.limiter = KeyedRateLimiter(
            per_minute=settings.rate_limit_per_minute,
            burst=settings.rate_limit_burst,
            clock=monotonic,
        )
        #: Refused admin attempts, per client address.
        self.admin_failures = KeyedRateLimiter(
            per_minute=settings.admin_failures_per_minute,
            burst=settings.admin_failures_per_minute,
            clock=monotonic,
        )
        self.budget = InFlightBudget(settings.inflight_budget_bytes)
        #: Hashes the user ids of PostHog and Segment messages (never stored raw).
        self.identity = IdentityHasher(settings.identity_secret or new_secret())
        self.metrics = CollectorMetrics(lambda: float(store.queue_depth))
        store.add_commit_observer(self.metrics.observe_commit)
        self.info = ServerInfo(
            name=settings.name,
            version=__version__,
            limits=settings.limits(),
            # DESIGN §7: an id is known as a duplicate only while its raw event is kept.
            dedup_window_days=settings.retention_days,
        )

    @staticmethod
    def of(request: Request) -> Collector:
        """The collector serving ``request``."""
        collector = request.app.state.collector
        assert isinstance(collector, Collector)
        return collector

    def now_ms(self) -> int:
        """The wall clock in milliseconds."""
        return int(self.clock() * 1000)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan: retention runs in the background while the app
        serves; at the end the store commits what is in flight and closes."""
        retention = Retention(
            self.store,
            retention_days=self.settings.retention_days,
            interval_s=self.settings.cleanup_interval_s,
            now_ms=self.now_ms,
        )
        task = asyncio.create_task(retention.run_forever())
        log.info("collector started version=%s", __version__)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.store.close()
            log.info("collector stopped")
