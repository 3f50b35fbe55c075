"""``python -m telemetry_core.collector`` runs ``telemetry-collector``."""

from telemetry_core.collector.cli import main

if __name__ == "__main__":
    main()
