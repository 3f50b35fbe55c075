"""Transport plugin ``otlp``: events as OTLP/HTTP log records (DESIGN §10).

Selected with ``TelemetryConfig(transport="otlp", endpoint="https://host:4318/v1/logs")``,
it sends every batch as one OpenTelemetry ``ExportLogsServiceRequest`` (protobuf)
to any OTLP/HTTP receiver: an OpenTelemetry Collector, a vendor's endpoint, or
the telemetry-core collector's own ``/v1/logs``. An endpoint without a path
gets ``/v1/logs``.

Delivery follows the ``https`` transport exactly (the wire client extends
:class:`~telemetry_core_plugins._https_client.HttpsClient`): the same transient
and permanent answers, ``Retry-After``, batch splitting on 413, verified TLS.
The API key, when set, is sent as ``Authorization: Bearer KEY``. More headers
come from ``options["otlp.headers"]``, else the ``OTEL_EXPORTER_OTLP_LOGS_HEADERS``
or ``OTEL_EXPORTER_OTLP_HEADERS`` environment variable, all in the
OpenTelemetry format ``name=value,name2=value2`` (values percent-encoded).

Like the ``https`` plugin, this module imports nothing heavy: the protobuf
classes (the ``otlp`` extra) and urllib3 are imported on the first send.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from telemetry_core.errors import ConfigError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo
from telemetry_core_plugins.https_transport import HttpsTransport

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock
    from telemetry_core_plugins._https_client import HttpsClient

__all__ = ["HEADERS_OPTION", "NAME", "OtlpTransport", "parse_headers"]

#: The name configuration selects this provider by (``transport = "otlp"``).
NAME: Final = "otlp"
#: The ``TelemetryConfig.options`` key holding extra request headers.
HEADERS_OPTION: Final = "otlp.headers"
_HEADER_ENV: Final = ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
_DEFAULT_PATH: Final = "/v1/logs"


def parse_headers(text: str) -> dict[str, str]:
    """Headers written as ``name=value,name2=value2`` (values percent-decoded);
    entries without ``=`` or without a name are ignored."""
    headers: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            headers[name.strip()] = unquote(value.strip())
    return headers


def _headers(config: TelemetryConfig) -> dict[str, str]:
    text = config.options.get(HEADERS_OPTION)
    if text is None:
        text = next((os.environ[v] for v in _HEADER_ENV if os.environ.get(v)), "")
    return parse_headers(text)


def _logs_endpoint(endpoint: str | None) -> str | None:
    if not endpoint:
        return endpoint
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=_DEFAULT_PATH))
    return endpoint


class OtlpTransport(HttpsTransport):
    """Sends batches to an OTLP/HTTP logs endpoint (see the module docstring).

    :param config: endpoint, API key, CA bundle, timeout, gzip threshold,
        ``max_retry_after`` and ``options["otlp.headers"]``.
    :param clock: wall clock in seconds, for HTTP-date ``Retry-After`` values.
    """

    def __init__(self, config: TelemetryConfig, clock: Clock | None = None) -> None:
        import importlib.util

        import attrs

        if importlib.util.find_spec("opentelemetry.proto") is None:
            raise ConfigError(
                "transport",
                "the otlp transport needs the otlp extra: pip install 'telemetry-core[otlp]'",
            )
        endpoint = _logs_endpoint(config.endpoint)
        if endpoint != config.endpoint:
            config = attrs.evolve(config, endpoint=endpoint)
        if clock is None:
            super().__init__(config)
        else:
            super().__init__(config, clock)
        self._extra_headers = _headers(config)
        if any("\r" in v or "\n" in v for v in self._extra_headers.values()):
            raise ConfigError(HEADERS_OPTION, "a header value must not hold a line break")

    def __repr__(self) -> str:
        return f"OtlpTransport(endpoint={self.endpoint!r})"

    def _get_client(self) -> HttpsClient:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                from telemetry_core_plugins._otlp_client import OtlpClient

                self._client = OtlpClient(self._config, self._clock, self._extra_headers)
            return self._client


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """Offer the ``otlp`` transport."""
    return [
        ProviderInfo(
            kind="transport",
            name=NAME,
            description="OTLP/HTTP log records (protobuf) to any OpenTelemetry receiver",
        )
    ]


@hookimpl
def telemetry_make_transport(name: str, config: TelemetryConfig) -> OtlpTransport | None:
    """Build the ``otlp`` transport for ``config.endpoint`` when ``name`` is ``otlp``."""
    if name != NAME:
        return None
    return OtlpTransport(config)
