"""The collector's route handlers, one module per audience.

- :mod:`~telemetry_core.collector.views.submission`: apps sending events
  (``POST /v1/submit``), through the shared pipeline of
  :mod:`telemetry_core.collector.submission`.
- :mod:`~telemetry_core.collector.views.interop`: apps speaking OTLP/HTTP
  (``POST /v1/logs``), PostHog's or Segment's API, through the same pipeline.
- :mod:`~telemetry_core.collector.views.public`: anyone (``/ping``, ``/v1/info``).
- :mod:`~telemetry_core.collector.views.admin`: the operator (``/v1/stats``,
  the dashboard with ``/login`` and ``/logout``, ``/metrics``).

Each module lists its routes in ``ROUTES``; :data:`ROUTES` here is what
:func:`~telemetry_core.collector.app.create_app` mounts. A new ingest format
is a new module here whose handler calls
:func:`~telemetry_core.collector.submission.handle_submission`, added to :data:`ROUTES`.
"""

from __future__ import annotations

from starlette.routing import Route

from telemetry_core.collector.views import admin, interop, public, submission

__all__ = ["ROUTES"]

ROUTES: tuple[Route, ...] = (*submission.ROUTES, *interop.ROUTES, *public.ROUTES, *admin.ROUTES)
