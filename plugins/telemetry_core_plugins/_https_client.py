"""The urllib3 side of the ``https`` transport, imported on first use only.

:mod:`telemetry_core_plugins.https_transport` holds the hook implementations and
the :class:`~telemetry_core_plugins.https_transport.HttpsTransport` facade; this
module holds everything that needs urllib3, so that importing telemetry-core
never pays for the network stack (DESIGN §2).

How answers map to :class:`~telemetry_core.errors.TransportError`
(DESIGN §7):

- 2xx with a valid ``SubmitResponse`` body -> a
  :class:`~telemetry_core.models.SubmissionResult`. A 2xx whose body is not a
  valid answer for this batch is *retryable*: the collector may have stored the
  batch, and it deduplicates by event id, so resending is the safe side of
  at-least-once.
- Network errors (refused, reset, timeout, truncated answer) and every answer
  :mod:`telemetry_core.delivery` calls transient (408, 425, 429, every 5xx, any
  status it does not know) are retryable, with ``retry_after`` from
  ``Retry-After`` (seconds or HTTP-date, clamped to ``[0, config.max_retry_after]``).
- 413 sets ``too_large`` (the worker splits the batch); it is not retryable as is.
- The permanent refusals of :data:`telemetry_core.delivery.PERMANENT_STATUSES`
  (400, 401, 403, 404, 405, 410, 415, 422) are terminal for the batch.
- A batch that would exceed the collector's body limits is never put on the
  wire: a JSON body over ``max_body_bytes``, a body as sent (after gzip) over
  ``max_compressed_body_bytes`` or more events than ``max_events_per_batch``
  raises ``too_large`` locally (``status`` ``None``), so the worker splits it
  before the collector has to refuse it. The limits are the protocol defaults
  of :mod:`telemetry_core.schema` until :meth:`HttpsClient.server_info` has
  fetched the collector's own (no extra round trip per batch). A connection
  reset or TLS EOF while sending stays a retryable network error: with the
  local cap no conforming body is large enough to be refused that way, and a
  reset is far more often a real network fault, which splitting (and dead
  letters for a single event) would turn into loss.
- A TLS failure (untrusted or expired certificate, wrong host name) is
  *retryable* without a ``retry_after``: it is often transient (a captive
  portal, a proxy, a clock that is off) and events must not be lost to it. The
  worker then treats the collector as offline and only probes it with
  ``ping()`` until the handshake works again, so a misconfigured client neither
  hammers the network nor burns its entries' retries, and a fixed CA bundle
  takes effect at the next cycle.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import logging
import math
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import attrs
import msgspec
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from telemetry_core._version import __version__
from telemetry_core.delivery import is_transient_status, status_error
from telemetry_core.errors import ConfigError, TransportError
from telemetry_core.models import SubmissionResult
from telemetry_core.schema import (
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    MAX_COMPRESSED_BODY_BYTES,
    Event,
    ServerInfo,
    SubmitRequest,
    SubmitResponse,
)

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.models import Clock

__all__ = [
    "MAX_RESPONSE_BYTES",
    "PING_TIMEOUT",
    "USER_AGENT",
    "BodyLimits",
    "HttpsClient",
    "parse_retry_after",
]

logger = logging.getLogger("telemetry_core")

#: ``ping()`` waits at most this many seconds (or ``config.timeout`` if shorter).
PING_TIMEOUT: Final = 5.0
#: Answers larger than this are not read: no valid protocol answer comes close.
MAX_RESPONSE_BYTES: Final = 1024 * 1024
#: Sent with every request.
USER_AGENT: Final = f"telemetry-core/{__version__}"

#: File names of a hashed certificate directory.
_HASHED_NAME: Final = re.compile(r"[0-9a-f]{8}\.[0-9]+")

_response_decoder = msgspec.json.Decoder(SubmitResponse)
_info_decoder = msgspec.json.Decoder(ServerInfo)
_request_encoder = msgspec.json.Encoder()


def _read_answer(response: urllib3.BaseHTTPResponse, what: str) -> bytes:
    """The body of ``response`` (``what``: the request, for the message), its
    connection left clean for the next request; an answer larger than
    :data:`MAX_RESPONSE_BYTES` closes the connection (the rest stays unread)
    and raises a retryable :class:`TransportError`."""
    data = response.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        response.close()
        raise TransportError(
            f"{what}: answer larger than {MAX_RESPONSE_BYTES} bytes",
            retryable=True,
            status=response.status,
        )
    response.drain_conn()
    return data


def parse_retry_after(value: str | None, *, now: float, maximum: float) -> float | None:
    """Parse a ``Retry-After`` header into seconds from ``now``, clamped to ``[0, maximum]``.

    Accepts delta-seconds (``"120"``, also a decimal ``"1.5"``) and an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, RFC 9110 §10.2.3). Returns ``None`` for
    a missing or unparsable value.

    :param value: the raw header value.
    :param now: the current wall-clock time in seconds since the epoch.
    :param maximum: the largest pause honoured (``config.max_retry_after``).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float
    if text.isascii() and text.replace(".", "", 1).isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are always GMT
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), maximum)


@attrs.frozen
class BodyLimits:
    """The collector's request limits a batch is checked against before sending."""

    max_events_per_batch: int = MAX_BATCH_EVENTS
    max_body_bytes: int = MAX_BODY_BYTES
    max_compressed_body_bytes: int = MAX_COMPRESSED_BODY_BYTES

    @classmethod
    def of(cls, info: ServerInfo) -> BodyLimits:
        """The limits ``info`` publishes; a non-positive value keeps the protocol default."""
        limits = info.limits
        default = cls()

        def pick(value: int, fallback: int) -> int:
            return value if value > 0 else fallback

        return cls(
            pick(limits.max_events_per_batch, default.max_events_per_batch),
            pick(limits.max_body_bytes, default.max_body_bytes),
            pick(limits.max_compressed_body_bytes, default.max_compressed_body_bytes),
        )


def _base_url(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def _hashed_ca_dir() -> str | None:
    """The system's hashed certificate directory (``c_rehash`` links such as
    ``1a2b3c4d.0``), unless the environment names a CA file or directory.

    OpenSSL reads a certificate from such a directory only when a handshake
    needs it, instead of parsing the whole system bundle (about 150
    certificates, 1.5 MiB of heap and tens of milliseconds) up front.
    """
    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_cafile_env) or os.environ.get(paths.openssl_capath_env):
        return None
    capath = paths.capath
    if not capath or not os.path.isdir(capath):
        return None
    try:
        with os.scandir(capath) as entries:
            hashed = any(_HASHED_NAME.fullmatch(e.name) for e in entries)
    except OSError:
        return None
    return capath if hashed else None


def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    try:
        capath = None if ca_bundle else _hashed_ca_dir()
        if capath is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(capath=capath)
        else:
            context = ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("ca_bundle", f"cannot load CA bundle {ca_bundle!r}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class HttpsClient:
    """One keep-alive urllib3 pool to one collector; thread-safe.

    :param config: endpoint, API key, CA bundle, timeout, gzip threshold and
        ``max_retry_after`` come from here.
    :param clock: wall clock in seconds, to turn an HTTP-date ``Retry-After``
        into a delay.
    """

    def __init__(self, config: TelemetryConfig, clock: Clock) -> None:
        if config.endpoint is None:
            raise ConfigError("endpoint", "the https transport needs an endpoint")
        self._endpoint = config.endpoint
        self._base = _base_url(config.endpoint)
        parts = urlsplit(config.endpoint)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._api_key = config.api_key
        self._gzip_threshold = config.gzip_threshold
        self._max_retry_after = config.max_retry_after
        self._timeout = config.timeout
        self._clock = clock
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if config.api_key:
            headers["X-API-Key"] = config.api_key
        self._headers = headers
        self._ca_bundle = config.ca_bundle
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._limits = BodyLimits()

    def __repr__(self) -> str:
        return f"HttpsClient(endpoint={self._endpoint!r})"

    def _manager(self) -> urllib3.PoolManager:
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(
                    num_pools=2,
                    maxsize=4,
                    block=False,
                    retries=False,
                    timeout=urllib3.Timeout(total=self._timeout),
                    ssl_context=_ssl_context(self._ca_bundle),
                    cert_reqs="CERT_REQUIRED",
                    headers=self._headers,
                )
            return self._pool

    @property
    def limits(self) -> BodyLimits:
        """The body limits batches are checked against (learned by :meth:`server_info`)."""
        return self._limits

    def close(self) -> None:
        """Drop pooled connections; the next request opens a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.clear()

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes, urllib3.HTTPHeaderDict]:
        """Send one request; return (status, body, headers) or raise TransportError."""
        merged = dict(self._headers)
        if headers:
            merged.update(headers)
        kwargs: dict[str, object] = {}
        if timeout is not None:
            kwargs["timeout"] = urllib3.Timeout(total=timeout)
        try:
            response = self._manager().request(
                method,
                url,
                body=body,
                headers=merged,
                retries=False,
                redirect=False,
                preload_content=False,
                **kwargs,  # type: ignore[arg-type]
            )
            try:
                data = _read_answer(response, f"{method} {url}")
            finally:
                response.release_conn()
        except TransportError:
            raise
        except Exception as exc:
            raise self._failure(method, url, exc) from None
        return response.status, data, response.headers

    def _failure(self, method: str, url: str, exc: Exception) -> Exception:
        """The TransportError of a request that failed before an answer (else ``exc``)."""
        if isinstance(exc, ConfigError):
            # An unreadable ca_bundle: a configuration problem that a fix on
            # disk resolves without a restart, so the events wait for it.
            return TransportError(str(exc), retryable=True)
        if isinstance(exc, (SSLError, ssl.SSLError, ssl.CertificateError)):
            return TransportError(
                self._redact(f"{method} {url}: TLS failure: {exc}"), retryable=True
            )
        if isinstance(exc, NewConnectionError):
            # Checked before the timeout branch: urllib3 derives it from
            # ConnectTimeoutError, but a refused connection is not a timeout.
            return TransportError(
                self._redact(f"{method} {url}: cannot connect: {exc}"), retryable=True
            )
        if isinstance(exc, (Urllib3TimeoutError, TimeoutError)):
            return TransportError(self._redact(f"{method} {url}: timed out: {exc}"), retryable=True)
        if isinstance(exc, (HTTPError, OSError, http.client.HTTPException)):
            return TransportError(
                self._redact(f"{method} {url}: network error: {type(exc).__name__}: {exc}"),
                retryable=True,
            )
        return exc

    def _status_error(
        self, method: str, url: str, status: int, data: bytes, headers: urllib3.HTTPHeaderDict
    ) -> TransportError:
        snippet = self._redact(data[:200].decode("utf-8", "replace"))
        message = f"{method} {url}: collector answered {status}: {snippet}"
        retry_after = None
        if is_transient_status(status):
            retry_after = parse_retry_after(
                headers.get("Retry-After"), now=self._clock(), maximum=self._max_retry_after
            )
            if retry_after is not None:
                message += f" (the collector asks to retry after {retry_after:g} s)"
        return status_error(message, status, retry_after)

    def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
        """``POST`` ``events`` to the endpoint as one request (see the module docstring)."""
        return self.begin_batch(events)()

    def begin_batch(self, events: Sequence[Event]) -> Callable[[], SubmissionResult]:
        """Put ``events`` on the wire (one ``POST``) and return at once; the
        returned call waits for the answer (and must be called).

        The request has a keep-alive connection of the pool to itself until
        then, so the caller can do other work while the collector handles it.
        """
        body, extra = self._body(events)
        url = self._endpoint
        try:
            pool = self._manager().connection_from_url(url)
            # The pool's own checkout: a connection the server dropped is closed here.
            conn = pool._get_conn()
        except Exception as exc:
            raise self._failure("POST", url, exc) from None
        started = time.perf_counter()
        try:
            conn.timeout = self._timeout
            if conn.is_closed:
                conn.connect()
            conn.request(
                "POST",
                self._path,
                body=body,
                headers={**self._headers, **extra},
                preload_content=False,
            )
        except Exception as exc:
            conn.close()
            pool._put_conn(conn)
            raise self._failure("POST", url, exc) from None

        def answer() -> SubmissionResult:
            try:
                response = conn.getresponse()
                data = _read_answer(response, f"POST {url}")
            except TransportError:
                raise
            except Exception as exc:
                conn.close()
                raise self._failure("POST", url, exc) from None
            finally:
                pool._put_conn(conn)
            return self._answer(len(events), response.status, data, response.headers, started)

        return answer

    def _body(self, events: Sequence[Event]) -> tuple[bytes, dict[str, str]]:
        """The request body of ``events`` and its extra headers, checked against the limits."""
        limits = self._limits
        if len(events) > limits.max_events_per_batch:
            raise self._too_large(
                f"{len(events)} events; the collector takes at most {limits.max_events_per_batch}"
            )
        body = _request_encoder.encode(SubmitRequest(events=list(events)))
        if len(body) > limits.max_body_bytes:
            raise self._too_large(
                f"{len(events)} events encode to {len(body)} bytes; "
                f"the collector takes at most {limits.max_body_bytes}"
            )
        extra: dict[str, str] = {}
        if len(body) > self._gzip_threshold:
            # Level 1: telemetry JSON is repetitive, so it already shrinks ~12x,
            # at under half the CPU of the default level (measured on 100 events).
            body = gzip.compress(body, compresslevel=1, mtime=0)
            extra["Content-Encoding"] = "gzip"
        if len(body) > limits.max_compressed_body_bytes:
            raise self._too_large(
                f"{len(events)} events make a {len(body)}-byte body as sent; "
                f"the collector takes at most {limits.max_compressed_body_bytes}"
            )
        return body, extra

    def _answer(
        self,
        count: int,
        status: int,
        data: bytes,
        headers: urllib3.HTTPHeaderDict,
        started: float,
    ) -> SubmissionResult:
        """The result of a batch of ``count`` events from the collector's answer."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        if not 200 <= status < 300:
            raise self._status_error("POST", self._endpoint, status, data, headers)
        try:
            answer = _response_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise TransportError(
                f"POST {self._endpoint}: invalid answer to a {status}: {exc}",
                retryable=True,
                status=status,
            ) from None
        counts = (answer.accepted, answer.rejected, answer.duplicates)
        if (
            min(counts) < 0
            or sum(counts) != count
            or any(not 0 <= e.index < count for e in answer.errors)
        ):
            raise TransportError(
                f"POST {self._endpoint}: answer does not match the batch of {count} "
                f"(accepted={answer.accepted}, rejected={answer.rejected}, "
                f"duplicates={answer.duplicates})",
                retryable=True,
                status=status,
            )
        return SubmissionResult(
            accepted=answer.accepted,
            rejected=answer.rejected,
            duplicates=answer.duplicates,
            errors=tuple(answer.errors),
            status=status,
            latency_ms=latency_ms,
        )

    def _too_large(self, reason: str) -> TransportError:
        """The local refusal of a batch the collector would answer 413 (never sent)."""
        return TransportError(
            f"POST {self._endpoint}: not sent, too large: {reason}",
            retryable=False,
            too_large=True,
        )

    def ping(self) -> bool:
        """``GET /ping``: True on a 2xx, False otherwise; never raises."""
        try:
            status, _, _ = self._request(
                "GET", f"{self._base}/ping", timeout=min(self._timeout, PING_TIMEOUT)
            )
        except Exception as exc:
            # The type only: a message could quote the request (and its key).
            logger.debug("telemetry-core: GET /ping failed: %s", type(exc).__name__)
            return False
        return 200 <= status < 300

    def server_info(self) -> ServerInfo:
        """``GET /v1/info`` decoded to :class:`~telemetry_core.schema.ServerInfo`.

        Its limits replace the protocol defaults that later batches are checked against.
        """
        url = f"{self._base}/v1/info"
        status, data, headers = self._request("GET", url)
        if not 200 <= status < 300:
            raise self._status_error("GET", url, status, data, headers)
        try:
            info = _info_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise TransportError(
                f"GET {url}: invalid server info: {exc}", retryable=True, status=status
            ) from None
        self._limits = BodyLimits.of(info)
        return info
