"""Placeholder: the service helper replaces this module."""

from __future__ import annotations


class TelemetryService:
    """Placeholder."""
