"""One delivery attempt as the submission log records it, and errors made safe to record.

:func:`attempt_fields` turns an attempt's outcome (an answer or a transport
error) into the fields of the local submission log, from which
:class:`~telemetry_core.models.SubmissionStats` are computed; :func:`redacted`
masks the API key in every form an exception message may quote it, before an
error reaches that log, ``last_error`` or ``stats --json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from telemetry_core.errors import TransportError

if TYPE_CHECKING:
    from telemetry_core.models import SubmissionResult

__all__ = ["attempt_fields", "redacted"]


def attempt_fields(
    started: float,
    latency_ms: float,
    batch_size: int,
    *,
    retry: bool,
    result: SubmissionResult | None,
    error: TransportError | None,
) -> dict[str, Any]:
    """The submission-log row of one attempt (``result`` or ``error`` is set)."""
    fields: dict[str, Any] = {
        "started_at": started,
        "latency_ms": latency_ms,
        "batch_size": batch_size,
        "retry": retry,
    }
    if result is not None:
        fields.update(
            accepted=result.accepted,
            rejected=result.rejected,
            duplicates=result.duplicates,
            status=result.status,
            error=None,
            network_error=False,
        )
    else:
        assert error is not None
        fields.update(
            accepted=0,
            rejected=0,
            duplicates=0,
            status=error.status,
            error=str(error),
            network_error=error.retryable and error.status is None,
        )
    return fields


def redacted(error: TransportError, secret: str | None) -> TransportError:
    """``error`` with every form of ``secret`` (the API key: as text, repr or
    bytes repr, as an exception message may quote a header) masked, so that
    it never reaches the submission log, ``last_error`` or ``stats --json``."""
    text = str(error)
    if not secret:
        return error
    forms = {secret, repr(secret)[1:-1]}
    for codec in ("utf-8", "latin-1"):
        forms.add(repr(secret.encode(codec, "replace"))[2:-1])
    # The same quoted once more, as in the repr of an exception holding one.
    forms |= {repr(form)[1:-1] for form in forms}
    cleaned = text
    for form in sorted(forms, key=len, reverse=True):
        if form:
            cleaned = cleaned.replace(form, "***")
    if cleaned == text:
        return error
    return TransportError(
        cleaned,
        retryable=error.retryable,
        retry_after=error.retry_after,
        status=error.status,
        too_large=error.too_large,
    )
