"""Transport plugin ``https``: batches over HTTPS to a collector (DESIGN §7).

This module only holds the hook implementations and a thin facade. The urllib3
implementation lives in :mod:`telemetry_core_plugins._https_client` and is
imported on first use, so importing telemetry-core (and this plugin) never
imports urllib3. See that module for how each answer maps to
:class:`~telemetry_core.errors.TransportError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from telemetry_core.config import complete_endpoint, validate_endpoint
from telemetry_core.errors import ConfigError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock, SubmissionResult
    from telemetry_core.schema import Event, ServerInfo
    from telemetry_core_plugins._https_client import HttpsClient

__all__ = ["NAME", "HttpsTransport"]

#: The name configuration selects this provider by (``transport = "https"``).
NAME: Final = "https"


def _check_endpoint(endpoint: str | None) -> str:
    if not endpoint:
        raise ConfigError("endpoint", "the https transport needs an endpoint URL")
    # The configuration's own check, again: a config object may bypass it.
    validate_endpoint(endpoint)
    return endpoint


class HttpsTransport:
    """Submits batches to ``config.endpoint`` (the full ``.../v1/submit`` URL; an
    empty path is completed to ``/v1/submit``).

    Certificates are always verified, against ``config.ca_bundle`` when set,
    else the system's trust store. Plain ``http://`` is refused except to
    loopback hosts. The API key is sent as ``X-API-Key`` and never appears in
    a repr, a log line or an error message. One keep-alive connection pool is
    created on first use and shared by all threads.

    :param config: endpoint, API key, CA bundle, timeout, gzip threshold and
        ``max_retry_after``.
    :param clock: wall clock in seconds, for HTTP-date ``Retry-After`` values.
    """

    def __init__(self, config: TelemetryConfig, clock: Clock = time.time) -> None:
        # An endpoint without a path (https://host:8787) means the protocol's
        # submit path (DESIGN §5), not "POST /" (a 405 for every batch).
        self._endpoint = complete_endpoint(_check_endpoint(config.endpoint))
        self._config = attrs.evolve(config, endpoint=self._endpoint)
        self._clock = clock
        self._lock = threading.Lock()
        self._client: HttpsClient | None = None

    def __repr__(self) -> str:
        return f"HttpsTransport(endpoint={self._endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The submit URL."""
        return self._endpoint

    def _get_client(self) -> HttpsClient:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                from telemetry_core_plugins._https_client import HttpsClient

                self._client = HttpsClient(self._config, self._clock)
            return self._client

    def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
        """Send ``events`` as one ``POST``; return the collector's counts.

        :raises TransportError: for anything but a valid 2xx answer, with
            ``retryable``, ``retry_after``, ``status`` and ``too_large`` set.
        """
        return self._get_client().submit_batch(events)

    def begin_batch(self, events: Sequence[Event]) -> Callable[[], SubmissionResult]:
        """Put ``events`` on the wire and return a call that waits for the
        answer (what :meth:`submit_batch` returns or raises), so the worker can
        do its database work while the collector handles the batch.

        :raises TransportError: when the batch cannot be sent at all.
        """
        return self._get_client().begin_batch(events)

    def ping(self) -> bool:
        """True when ``GET /ping`` answers 2xx; never raises."""
        try:
            return self._get_client().ping()
        except Exception as exc:
            import logging  # here: a process that records and exits never logs

            # The type only: a message could quote the request (and its key).
            logging.getLogger("telemetry_core").debug(
                "telemetry-core: https ping failed: %s", type(exc).__name__
            )
            return False

    def server_info(self) -> ServerInfo:
        """The collector's ``GET /v1/info`` document.

        :raises TransportError: when it cannot be fetched or decoded.
        """
        return self._get_client().server_info()

    def release_idle(self) -> None:
        """Drop the connection pool and its TLS context while the worker waits
        (it calls this before a long pause); the next request builds them again."""
        self.close()

    def close(self) -> None:
        """Close pooled connections; the transport reconnects on next use."""
        client = self._client
        if client is not None:
            client.close()


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """Offer the ``https`` transport."""
    return [
        ProviderInfo(
            kind="transport",
            name=NAME,
            description="protocol v1 over HTTPS (urllib3, keep-alive, gzip, verified TLS)",
        )
    ]


@hookimpl
def telemetry_make_transport(name: str, config: TelemetryConfig) -> HttpsTransport | None:
    """Build the ``https`` transport for ``config.endpoint`` when ``name`` is ``https``."""
    if name != NAME:
        return None
    return HttpsTransport(config)
