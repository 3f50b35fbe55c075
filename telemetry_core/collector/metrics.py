"""Prometheus metrics of one collector app, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CollectorMetrics"]


class CollectorMetrics:
    """The collector's metrics (never labelled with keys, tokens or properties).

    ``telemetry_collector_requests_total{path,status}``,
    ``telemetry_collector_events_total{outcome}`` (accepted, duplicate, rejected,
    throttled), ``telemetry_collector_rejected_events_total{code}``,
    ``telemetry_collector_ingest_seconds`` (a submit request, end to end),
    ``telemetry_collector_commit_seconds`` (one store transaction) and
    ``telemetry_collector_queue_depth`` (events waiting for the store).
    """

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "telemetry_collector_requests",
            "HTTP requests by route and status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.events = Counter(
            "telemetry_collector_events",
            "Submitted events by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "telemetry_collector_rejected_events",
            "Rejected events by error code.",
            ["code"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "telemetry_collector_ingest_seconds",
            "Time to answer a submit request.",
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "telemetry_collector_commit_seconds",
            "Time of one store commit.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "telemetry_collector_queue_depth",
            "Events waiting for the store's writer.",
            registry=self.registry,
        )
        self.queue_depth.set_function(queue_depth)

    def observe_commit(self, seconds: float, events: int) -> None:
        """Record one store commit (a :data:`~telemetry_core.collector.store.CommitObserver`)."""
        self.commit_seconds.observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
