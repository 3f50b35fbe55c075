"""Bundled default plugins of telemetry-core.

Each module is one plugin, registered by the plugin host under a short stable
name: ``https`` (transport), ``sqlite`` (storage and queue),
``exponential-jitter`` (backoff) and ``token-bucket`` (limiter).
"""
