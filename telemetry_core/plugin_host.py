"""The plugin host: one pluggy ``PluginManager`` and a typed facade over its hooks.

Bundled defaults are registered by dotted module name under short stable names;
third-party plugins come from the ``telemetry_core`` entry-point group, each
loaded in isolation so that one broken plugin is skipped with a warning instead
of taking the host application down. Nothing here runs at import time.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import attrs
import pluggy

from telemetry_core import hookspecs
from telemetry_core._log import logger
from telemetry_core._version import __version__
from telemetry_core.errors import PluginError
from telemetry_core.hookspecs import PROJECT_NAME

if TYPE_CHECKING:
    import random
    from importlib.metadata import EntryPoint

    from pluggy import HookCaller

    from telemetry_core.config import TelemetryConfig
    from telemetry_core.errors import TransportError
    from telemetry_core.models import Clock, ProviderInfo, SubmissionResult
    from telemetry_core.protocols import Backoff, Limiter, SQLiteDatabase, Storage, Transport
    from telemetry_core.schema import Event, PropertyValue

__all__ = [
    "DEFAULT_PLUGINS",
    "DISABLE_ENV",
    "PluginHost",
    "PluginLoadWarning",
    "PluginObserverWarning",
    "PluginRecord",
]

#: Bundled plugins: short stable name -> module registered as the plugin.
DEFAULT_PLUGINS: Final[dict[str, str]] = {
    "https": "telemetry_core_plugins.https_transport",
    "otlp": "telemetry_core_plugins.otlp_transport",
    "sqlite": "telemetry_core_plugins.sqlite_storage",
    "exponential-jitter": "telemetry_core_plugins.exponential_jitter",
    "token-bucket": "telemetry_core_plugins.token_bucket",
    "scrubber": "telemetry_core.privacy",
}

#: Comma-separated plugin names that must not be loaded or registered.
DISABLE_ENV: Final = "TELEMETRY_CORE_DISABLE_PLUGINS"
#: File (in the user's state directory) remembering the plugin load problems
#: already reported, so a broken plugin warns once per install.
REPORTED_FILE: Final = "plugin-load-warnings"
_REPORTED_LIMIT: Final = 200


def _first_report(message: str) -> bool:
    """True the first time ``message`` is seen on this machine (for this user);
    remembered in the user state directory. Any file error counts as a first time."""
    import hashlib  # here: only a plugin load problem needs it (libcrypto costs ms to load)

    import platformdirs

    digest = hashlib.sha256(message.encode("utf-8", "replace")).hexdigest()[:32]
    path = os.path.join(platformdirs.user_state_dir("telemetry-core"), REPORTED_FILE)
    try:
        with open(path, encoding="ascii") as file:
            seen = file.read().split()
    except OSError:
        seen = []
    if digest in seen:
        return False
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="ascii") as file:
            file.write("\n".join([*seen[-(_REPORTED_LIMIT - 1) :], digest]) + "\n")
    except OSError:
        pass
    return True


def _may_have_entry_points(group: str) -> bool:
    """Whether any distribution on ``sys.path`` may declare entry points in ``group``.

    ``importlib.metadata`` costs ~30 ms to import (it pulls in ``email``,
    ``zipfile``, ``csv`` and ``inspect``) plus a few ms to read every
    distribution's metadata, on every start of a CLI process, when almost
    always no third-party plugin is installed. This pre-scan only opens the
    ``entry_points.txt`` of ``*.dist-info`` and ``*.egg-info`` folders; it
    answers ``True`` whenever it cannot be sure (a zip or an unusual finder on
    the path), so that ``importlib.metadata`` then decides.
    """
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is not PathFinder and hasattr(finder, "find_distributions"):
            return True
    header = re.compile(rf"^\s*\[\s*{re.escape(group)}\s*\]", re.MULTILINE)
    for entry in sys.path:
        try:
            listing = os.scandir(entry or ".")
        except OSError:
            if os.path.isfile(entry):  # a zip archive may hold distributions
                return True
            continue
        with listing:
            for item in listing:
                if not item.name.endswith((".dist-info", ".egg-info")):
                    continue
                try:
                    with open(os.path.join(item.path, "entry_points.txt"), "rb") as file:
                        text = file.read().decode("utf-8", "replace")
                except OSError:
                    continue
                if group in text and header.search(text):
                    return True
    return False


def _entry_points(group: str) -> Sequence[EntryPoint]:
    """The entry points of ``group``; ``importlib.metadata`` is imported only if
    some distribution may declare one."""
    if not _may_have_entry_points(group):
        return ()
    import importlib.metadata

    return importlib.metadata.entry_points(group=group)


class PluginLoadWarning(UserWarning):
    """Kept for compatibility: load problems are now logged (once per install) and
    listed in :attr:`PluginHost.load_warnings`, not issued as warnings."""


class PluginObserverWarning(UserWarning):
    """An observer hook raised; the event or batch went on without it."""


@attrs.frozen(kw_only=True)
class PluginRecord:
    """A registered plugin, as ``telemetry plugins`` lists it."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    bundled: bool
    hooks: tuple[str, ...]
    providers: tuple[ProviderInfo, ...]


class PluginHost:
    """Owns one :class:`pluggy.PluginManager` for one service or CLI invocation.

    :param strict: re-raise plugin load errors and observer-hook errors instead
        of warning (meant for tests and plugin development).
    :param disabled: plugin names to block; defaults to the comma-separated
        ``TELEMETRY_CORE_DISABLE_PLUGINS`` environment variable.
    :param load_entrypoints: load third-party plugins from the ``telemetry_core``
        entry-point group.
    :param plugins: extra plugin objects to register (tests, embedding apps).
    """

    def __init__(
        self,
        *,
        strict: bool = False,
        disabled: Iterable[str] | None = None,
        load_entrypoints: bool = True,
        plugins: Sequence[object] = (),
    ) -> None:
        self.strict = strict
        if disabled is None:
            disabled = os.environ.get(DISABLE_ENV, "").split(",")
        self.disabled = frozenset(name.strip() for name in disabled if name.strip())
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        #: Every third-party plugin load problem of this host (``telemetry plugins``
        #: repeats them); each is logged only the first time on this install.
        self.load_warnings: list[str] = []
        for name in self.disabled:
            self.pm.set_blocked(name)
        for name, module in DEFAULT_PLUGINS.items():
            if name not in self.disabled:
                self.pm.register(importlib.import_module(module), name=name)
        if load_entrypoints:
            self._load_entrypoints()
        try:
            for plugin in plugins:
                self.pm.register(plugin)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            # Plugins passed in by the embedding app are its own code: fail loudly.
            raise PluginError(f"invalid plugin: {exc}") from exc
        # Hook callers are looked up once: a caller object stays valid (and sees
        # plugins registered later), and the per-event paths skip the lookup.
        hook = self.pm.hook
        self._scrub_caller: HookCaller = hook.telemetry_scrub_event
        self._recorded_caller: HookCaller = hook.telemetry_event_recorded
        self._submitted_caller: HookCaller = hook.telemetry_batch_submitted
        self._failed_caller: HookCaller = hook.telemetry_batch_failed

    def _load_entrypoints(self) -> None:
        seen: set[str] = set()
        for ep in _entry_points(PROJECT_NAME):
            # The same distribution can be visible twice on sys.path (editable
            # installs); its first entry point wins, the copy is not an error.
            if ep.name in seen or ep.name in self.disabled:
                continue
            seen.add(ep.name)
            if self.pm.has_plugin(ep.name):
                self._skip(ep, PluginError(f"the name {ep.name!r} is already taken"))
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:
                # register() validates hook by hook: undo a half-registered plugin.
                if self.pm.get_plugin(ep.name) is not None:
                    self.pm.unregister(name=ep.name)
                self._skip(ep, exc)
                continue
            try:
                # A misspelled hook (telemetry_make_transprot) is only found here.
                self.pm.check_pending()
            except pluggy.PluginValidationError as exc:
                self.pm.unregister(name=ep.name)
                self._skip(ep, exc)
                continue
            dist = ep.dist
            self._dists[ep.name] = (
                dist.name if dist else None,
                dist.version if dist else None,
            )

    def _skip(self, ep: EntryPoint, exc: Exception) -> None:
        """Warn about (or, in strict mode, raise) a third-party plugin that failed."""
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        if self.strict:
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {why}") from exc
        dist = ep.dist
        version = f" {dist.name} {dist.version}" if dist is not None else ""
        message = f"telemetry-core: skipping plugin {ep.name!r} ({ep.value}{version}): {why}"
        self.load_warnings.append(message)
        # A plain log line, once per install: not a `warnings` report with a
        # source line, and not again on every command of a CLI app.
        if _first_report(message):
            logger.warning("%s (reported once; `telemetry plugins` lists it)", message)
        else:
            logger.debug("%s", message)

    # -- inspection ---------------------------------------------------------

    def providers(self) -> list[ProviderInfo]:
        """Every provider offered by a registered plugin."""
        return [info for infos in self.pm.hook.telemetry_list_providers() for info in infos]

    def plugins(self) -> list[PluginRecord]:
        """Registered plugins with their hooks and providers, bundled ones first."""
        records = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            impls = [hook.name for hook in self.pm.get_hookcallers(plugin) or ()]
            providers: tuple[ProviderInfo, ...] = ()
            if hasattr(plugin, "telemetry_list_providers"):
                providers = tuple(plugin.telemetry_list_providers())
            module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
            dist, version = self._dists.get(name, (None, None))
            records.append(
                PluginRecord(
                    name=name,
                    module=module,
                    distribution=dist
                    if dist
                    else ("telemetry-core" if name in DEFAULT_PLUGINS else None),
                    version=version
                    if version
                    else (__version__ if name in DEFAULT_PLUGINS else None),
                    bundled=name in DEFAULT_PLUGINS,
                    hooks=tuple(sorted(impls)),
                    providers=providers,
                )
            )
        records.sort(key=lambda r: (not r.bundled, r.name))
        return records

    def _missing(self, kind: str, name: str) -> PluginError:
        names = sorted(p.name for p in self.providers() if p.kind == kind)
        return PluginError(
            f"no {kind} plugin named {name!r} (available: {', '.join(names) or 'none'}); "
            f"check the {kind} setting"
        )

    # -- providers ------------------------------------------------------------

    def make_transport(self, config: TelemetryConfig) -> Transport:
        """The transport named by ``config.transport``; :class:`PluginError` if none."""
        result: Transport | None = self.pm.hook.telemetry_make_transport(
            name=config.transport, config=config
        )
        if result is None:
            raise self._missing("transport", config.transport)
        return result

    def make_backoff(self, config: TelemetryConfig, rng: random.Random, clock: Clock) -> Backoff:
        """The backoff named by ``config.backoff``; :class:`PluginError` if none."""
        result: Backoff | None = self.pm.hook.telemetry_make_backoff(
            name=config.backoff, config=config, rng=rng, clock=clock
        )
        if result is None:
            raise self._missing("backoff", config.backoff)
        return result

    def make_limiter(self, config: TelemetryConfig, clock: Clock) -> Limiter:
        """The limiter named by ``config.limiter``; :class:`PluginError` if none."""
        result: Limiter | None = self.pm.hook.telemetry_make_limiter(
            name=config.limiter, config=config, clock=clock
        )
        if result is None:
            raise self._missing("limiter", config.limiter)
        return result

    def make_storage(
        self, config: TelemetryConfig, store: SQLiteDatabase, backoff: Backoff, clock: Clock
    ) -> Storage:
        """The storage named by ``config.storage``; :class:`PluginError` if none."""
        result: Storage | None = self.pm.hook.telemetry_make_storage(
            name=config.storage, config=config, store=store, backoff=backoff, clock=clock
        )
        if result is None:
            raise self._missing("storage", config.storage)
        return result

    def register(self, plugin: object) -> None:
        """Register an embedding app's own plugin object (validated at once)."""
        try:
            self.pm.register(plugin)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"invalid plugin: {exc}") from exc

    # -- observers ------------------------------------------------------------

    def scrub_verdicts_reusable(self) -> bool:
        """True when every ``telemetry_scrub_event`` implementation declares
        ``TELEMETRY_SCRUB_PER_PROPERTY = True`` on its plugin: its verdict on a
        property depends on that key and value alone, and what it leaves never
        holds what :func:`telemetry_core.pii.find_pii` finds. The recorder may
        then remember verdicts and skip the re-check (see
        :mod:`telemetry_core.recorder`)."""
        impls = self._scrub_caller.get_hookimpls()
        return bool(impls) and all(
            getattr(impl.plugin, "TELEMETRY_SCRUB_PER_PROPERTY", False) is True for impl in impls
        )

    def scrub_event(self, event_type: str, properties: dict[str, PropertyValue]) -> None:
        """Run the scrubbing chain over ``properties`` in place.

        :class:`~telemetry_core.errors.EventRejected` propagates (the caller
        counts the rejection); any other plugin error does too, since an event
        that could not be scrubbed must not be stored.
        """
        self._scrub_caller(event_type=event_type, properties=properties)

    def _observe(self, caller: HookCaller, **kwargs: Any) -> None:
        if not caller.get_hookimpls():
            return  # nobody listens: skip pluggy's call machinery
        try:
            caller(**kwargs)
        except Exception as exc:
            if self.strict:
                raise
            warnings.warn(
                f"telemetry-core: observer hook {caller.name} raised {exc!r}",
                PluginObserverWarning,
                stacklevel=3,
            )

    def event_recorded(self, event: Event) -> None:
        """Notify observers that ``event`` is stored."""
        self._observe(self._recorded_caller, event=event)

    def batch_submitted(self, events: Sequence[Event], result: SubmissionResult) -> None:
        """Notify observers that a batch was acknowledged."""
        self._observe(self._submitted_caller, events=events, result=result)

    def batch_failed(self, events: Sequence[Event], error: TransportError) -> None:
        """Notify observers that a batch failed."""
        self._observe(self._failed_caller, events=events, error=error)
