"""Collector settings: one frozen value built by the command line or by tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from telemetry_core import schema
from telemetry_core.errors import ConfigError

__all__ = ["CollectorSettings"]


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ConfigError(attribute.name, "must be positive")


@attrs.frozen(kw_only=True)
class CollectorSettings:
    """Everything a collector app needs besides its store.

    ``api_keys`` are the submission keys (public: they ship inside apps);
    ``admin_token`` guards stats, dashboard and metrics (``None`` disables them).
    Limits default to the protocol's (:mod:`telemetry_core.schema`); the rate
    limit is a token bucket per submission key, in events per minute with
    ``rate_limit_burst`` events of burst. ``max_pending_events`` bounds events
    waiting for the store's writer (503 past it). ``retention_days`` is how long
    raw events are kept (rollups are kept forever); ``cleanup_interval_s`` how
    often retention runs. ``tls`` tells whether the server runs HTTPS;
    ``secure_cookies`` forces the ``Secure`` flag of the dashboard cookie without
    it (behind a TLS-terminating proxy); the flag is set when either is true.

    ``max_inflight_bytes`` bounds the request-body bytes (compressed and
    inflated) all requests being read hold together (503 past it; default
    ``max_pending_events x max_event_bytes``, at least one full request, at most
    256 MiB unless given). ``body_timeout_s`` is the deadline for reading one
    request body (408 past it). ``session_ttl_s`` is the lifetime of a dashboard
    session; ``admin_failures_per_minute`` the refused admin attempts one client
    address may make per minute (burst of the same size) before 429.

    ``metrics_token`` is a scrape credential of its own for ``GET /metrics``
    (``Authorization: Bearer``), besides the admin token.

    ``max_concurrent_requests`` bounds the requests being handled at once;
    past it a request is answered 503 ``overloaded`` with ``Retry-After``
    without being read. A submission refused 413 before its body was read to
    its end first has the rest of its body read and discarded, at most
    ``drain_max_bytes`` (default twice the largest body a conforming client can
    build: ``max_events_per_batch x max_event_bytes``) within
    ``drain_timeout_s`` (at most ``body_timeout_s``), so the client, still
    sending, can read the answer; past either bound the connection is closed.

    ``identity_secret`` keys the hash that replaces the user ids of PostHog and
    Segment messages (:mod:`~telemetry_core.collector.identity`); without one
    the app makes a random one, good for its own lifetime only (the command
    line keeps one in the database).
    """

    api_keys: tuple[str, ...] = attrs.field(converter=_str_tuple, repr=False)
    admin_token: str | None = attrs.field(default=None, repr=False)
    name: str = "telemetry-core-collector"
    max_events_per_batch: int = attrs.field(default=schema.MAX_BATCH_EVENTS, validator=_positive)
    max_body_bytes: int = attrs.field(default=schema.MAX_BODY_BYTES, validator=_positive)
    max_compressed_body_bytes: int = attrs.field(
        default=schema.MAX_COMPRESSED_BODY_BYTES, validator=_positive
    )
    max_event_bytes: int = attrs.field(default=schema.MAX_EVENT_BYTES, validator=_positive)
    max_future_skew_ms: int = attrs.field(default=schema.MAX_FUTURE_SKEW_MS, validator=_positive)
    rate_limit_per_minute: int = attrs.field(default=60_000, validator=_positive)
    rate_limit_burst: int = attrs.field(default=10_000, validator=_positive)
    max_pending_events: int = attrs.field(default=50_000, validator=_positive)
    retention_days: int = attrs.field(default=90, validator=_positive)
    cleanup_interval_s: float = 3600.0
    tls: bool = False
    secure_cookies: bool = False
    max_inflight_bytes: int | None = None
    body_timeout_s: float = 30.0
    session_ttl_s: int = attrs.field(default=8 * 3600, validator=_positive)
    admin_failures_per_minute: int = attrs.field(default=10, validator=_positive)
    max_concurrent_requests: int = attrs.field(default=1000, validator=_positive)
    drain_max_bytes: int | None = None
    drain_timeout_s: float = 5.0
    metrics_token: str | None = attrs.field(default=None, repr=False)
    identity_secret: str | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if any(not k for k in self.api_keys):
            raise ConfigError("api_keys", "an API key must not be empty")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ConfigError("admin_token", "must be at least 8 characters")
        if self.metrics_token is not None and len(self.metrics_token) < 8:
            raise ConfigError("metrics_token", "must be at least 8 characters")
        if self.rate_limit_burst < self.max_events_per_batch:
            raise ConfigError(
                "rate_limit_burst",
                f"must hold at least one full batch: {self.max_events_per_batch} events or more "
                f"(got {self.rate_limit_burst})",
            )
        if self.max_inflight_bytes is not None and self.max_inflight_bytes < self.one_request_bytes:
            raise ConfigError(
                "max_inflight_bytes",
                f"must hold at least one full request ({self.one_request_bytes} bytes)",
            )
        if not self.body_timeout_s > 0:
            raise ConfigError("body_timeout_s", "must be positive")
        if self.drain_max_bytes is not None and self.drain_max_bytes < 0:
            raise ConfigError("drain_max_bytes", "must not be negative")
        if not self.drain_timeout_s >= 0:
            raise ConfigError("drain_timeout_s", "must not be negative")
        if self.identity_secret is not None and len(self.identity_secret) < 16:
            raise ConfigError("identity_secret", "must be at least 16 characters")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CollectorSettings:
        """The settings named by ``TELEMETRY_COLLECTOR_*`` variables (``os.environ``
        by default; see :mod:`telemetry_core.collector.options` for the names)."""
        from telemetry_core.collector.options import collector_settings, load_values

        return collector_settings(load_values(environ=environ))

    @classmethod
    def from_file(
        cls, path: str | Path, environ: Mapping[str, str] | None = None
    ) -> CollectorSettings:
        """The settings of the TOML file ``path`` (the environment's win over it)."""
        from telemetry_core.collector.options import collector_settings, load_values

        return collector_settings(load_values(config_file=path, environ=environ))

    @property
    def one_request_bytes(self) -> int:
        """The most one request body can reserve: its compressed and inflated bytes."""
        return self.max_compressed_body_bytes + self.max_body_bytes

    @property
    def inflight_budget_bytes(self) -> int:
        """The effective in-flight body budget (see ``max_inflight_bytes``)."""
        if self.max_inflight_bytes is not None:
            return self.max_inflight_bytes
        implied = min(self.max_pending_events * self.max_event_bytes, 256 * 1024 * 1024)
        return max(implied, self.one_request_bytes)

    @property
    def drain_bytes(self) -> int:
        """The effective drain bound in bytes (see ``drain_max_bytes``)."""
        if self.drain_max_bytes is not None:
            return self.drain_max_bytes
        return 2 * self.max_events_per_batch * self.max_event_bytes

    @property
    def drain_seconds(self) -> float:
        """The effective drain deadline: ``drain_timeout_s``, at most ``body_timeout_s``."""
        return min(self.drain_timeout_s, self.body_timeout_s)

    def limits(self) -> schema.Limits:
        """The limits published by ``GET /v1/info``."""
        return schema.Limits(
            max_events_per_batch=self.max_events_per_batch,
            max_body_bytes=self.max_body_bytes,
            max_compressed_body_bytes=self.max_compressed_body_bytes,
            max_event_bytes=self.max_event_bytes,
            max_future_skew_ms=self.max_future_skew_ms,
            rate_limit_per_minute=self.rate_limit_per_minute,
            rate_limit_burst=self.rate_limit_burst,
        )
