"""A ``file-drop`` transport for telemetry-core: batches become JSON lines in a file.

Registered through the ``telemetry_core`` entry-point group (see pyproject.toml).
The plugin is this module: the two ``@hookimpl`` functions below are all
telemetry-core needs to list the provider and build it when a configuration
says ``transport="file-drop"``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from telemetry_core import TelemetryConfig, hookimpl
from telemetry_core.models import ProviderInfo, SubmissionResult
from telemetry_core.schema import Event, ServerInfo

__all__ = ["NAME", "FileDropTransport", "telemetry_list_providers", "telemetry_make_transport"]

__version__ = "0.1.0"

#: The name configuration selects this transport by.
NAME: Final = "file-drop"
#: ``config.options`` key for the output file.
PATH_OPTION: Final = "file_drop.path"
#: Environment fallback for the output file.
PATH_ENV: Final = "TELEMETRY_FILE_DROP_PATH"


class FileDropTransport:
    """Appends each batch to ``path``, one JSON event per line.

    A batch is written with a single ``write`` on a file opened in append mode,
    so concurrent senders never interleave half lines on POSIX.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()

    def __repr__(self) -> str:
        return f"FileDropTransport(path={str(self.path)!r})"

    def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
        """Append ``events``; every one counts as accepted."""
        data = b"".join(self._encoder.encode(event) + b"\n" for event in events)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        return SubmissionResult(accepted=len(events))

    def ping(self) -> bool:
        """True when the output directory exists or can be created."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        return os.access(self.path.parent, os.W_OK)

    def server_info(self) -> ServerInfo:
        """Describe this transport as if it were a collector."""
        return ServerInfo(name=NAME, version=__version__)

    def close(self) -> None:
        """Nothing to release: the file is opened per batch."""


def output_path(config: TelemetryConfig) -> Path:
    """Where batches go: the plugin option ``file-drop.path`` (in code, from
    ``<APP>_TELEMETRY_FILE_DROP_PATH`` or ``telemetry config set file-drop.path``),
    then ``$TELEMETRY_FILE_DROP_PATH``, then next to the database."""
    configured = config.plugin_option(NAME, "path") or os.environ.get(PATH_ENV)
    if configured:
        return Path(configured).expanduser()
    return config.db_path.with_name("file-drop.jsonl")


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """Offer one transport, ``file-drop``."""
    return [
        ProviderInfo(
            kind="transport",
            name=NAME,
            description="append batches as JSON lines to a local file",
        )
    ]


@hookimpl
def telemetry_make_transport(name: str, config: TelemetryConfig) -> FileDropTransport | None:
    """Build the transport when configuration asks for ``file-drop``; else ``None``."""
    if name != NAME:
        return None
    return FileDropTransport(output_path(config))
