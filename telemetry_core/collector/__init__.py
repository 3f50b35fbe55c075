"""The collector: the server half of telemetry-core (``telemetry-collector``)."""
