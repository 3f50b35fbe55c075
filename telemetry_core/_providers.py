"""Opening a service's providers: the local store and the storage, backoff and
limiter plugins, as one value (:class:`Opened`).

:func:`open_providers` opens them for recording (creating and migrating the
file, the install id made on first use) or, ``read_only``, as a view of an
existing file (no migration, no write; a file this code would have to migrate
is refused). Every database method is wrapped by the fork guard
(:func:`~telemetry_core._forksafe.guarded`); the storage is also kept unwrapped
for the recording path, which must not wait for a lock (it spills instead).
"""

from __future__ import annotations

import random
import sqlite3
from typing import TYPE_CHECKING

import attrs

from telemetry_core._forksafe import fork_guard, guarded
from telemetry_core._log import logger
from telemetry_core.errors import ConfigError, PluginError, TelemetryError

if TYPE_CHECKING:
    from telemetry_core.config import TelemetryConfig
    from telemetry_core.local_store import LocalStore
    from telemetry_core.models import Clock
    from telemetry_core.plugin_host import PluginHost
    from telemetry_core.protocols import Backoff, Limiter, Storage

__all__ = [
    "Opened",
    "ProviderRequest",
    "open_or_report",
    "open_providers",
]


@attrs.frozen(kw_only=True)
class Opened:
    """The providers of an open service (one per process)."""

    store: LocalStore
    storage: Storage
    #: The storage without the fork-guard wrapper's lock retries.
    raw_storage: Storage
    backoff: Backoff
    limiter: Limiter
    install_id: str
    #: Every scrubber's verdicts may be remembered and its output needs no
    #: PII re-check (see :meth:`PluginHost.scrub_verdicts_reusable`).
    scrubbed_clean: bool


@attrs.frozen(kw_only=True)
class ProviderRequest:
    """What providers are made from."""

    config: TelemetryConfig
    host: PluginHost
    clock: Clock
    monotonic: Clock
    rng: random.Random
    #: How long the app's connection waits in SQLite for another writer.
    busy_timeout_ms: int


def open_providers(request: ProviderRequest, *, read_only: bool) -> Opened:
    """Open the store and make the providers; the store is closed again if a
    provider cannot be made (an unknown name raises PluginError)."""
    from telemetry_core.local_store import LocalStore

    config, host = request.config, request.host
    if read_only:
        store = LocalStore(
            config.db_path,
            clock=request.clock,
            busy_timeout_ms=request.busy_timeout_ms,
            read_only=True,
        )
    else:
        store = LocalStore(config.db_path, clock=request.clock)
    try:
        backoff = host.make_backoff(config, request.rng, request.clock)
        limiter = host.make_limiter(config, request.monotonic)
        storage = host.make_storage(config, store, backoff, request.clock)
        if not read_only:
            # Opening (the core's and the storage's migrations) may wait the
            # default busy timeout once; after that, the app-facing connection
            # waits only briefly for a lock.
            store.busy_timeout_ms = request.busy_timeout_ms
            store.connection().execute(f"PRAGMA busy_timeout = {request.busy_timeout_ms}")
        install_id = (store.get_config("install-id") or "") if read_only else store.install_id()
    except BaseException:
        store.close()
        raise
    return Opened(
        store=guarded(store),
        storage=guarded(storage),
        raw_storage=storage,
        backoff=backoff,
        limiter=limiter,
        install_id=install_id,
        scrubbed_clean=not read_only and host.scrub_verdicts_reusable(),
    )


def open_or_report(request: ProviderRequest, *, read_only: bool) -> Opened | str:
    """:func:`open_providers` inside a fork-guard section; on failure one warning
    and the reason as a string (telemetry is a no-op for the run), unless
    ``config.strict``, which raises."""
    try:
        with fork_guard.section():
            return open_providers(request, read_only=read_only)
    except (TelemetryError, sqlite3.Error, OSError) as exc:
        if request.config.strict:
            raise
        db_path = request.config.db_path
        if read_only:
            logger.warning("telemetry-core: cannot read the local store %s: %s", db_path, exc)
        elif isinstance(exc, (PluginError, ConfigError)):
            # A misspelled provider name is not a storage problem.
            logger.warning("telemetry-core: telemetry is disabled for this run: %s", exc)
        else:
            logger.warning(
                "telemetry-core: telemetry is disabled for this run, the local store %s "
                "could not be opened: %s",
                db_path,
                exc,
            )
        return f"{type(exc).__name__}: {exc}"
