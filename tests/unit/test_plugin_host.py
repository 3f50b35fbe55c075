"""Tests of telemetry_core.plugin_host: defaults, entry points, isolation, blocking."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from telemetry_core import plugin_host
from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import PluginError, TransportError
from telemetry_core.hookspecs import PROJECT_NAME, hookimpl
from telemetry_core.models import ProviderInfo, SubmissionResult
from telemetry_core.plugin_host import (
    DEFAULT_PLUGINS,
    DISABLE_ENV,
    PluginHost,
    PluginObserverWarning,
)
from telemetry_core.protocols import Backoff, Limiter, Transport
from telemetry_core.schema import Event, new_event_id

GOOD_PLUGIN = """
    from telemetry_core.hookspecs import hookimpl
    from telemetry_core.models import ProviderInfo, SubmissionResult
    from telemetry_core.schema import ServerInfo


    class NullTransport:
        def submit_batch(self, events):
            return SubmissionResult(accepted=len(events))

        def ping(self):
            return True

        def server_info(self):
            return ServerInfo(name="null", version="0")

        def close(self):
            pass


    @hookimpl
    def telemetry_list_providers():
        return [ProviderInfo(kind="transport", name="null", description="drops everything")]


    @hookimpl
    def telemetry_make_transport(name, config):
        return NullTransport() if name == "null" else None
"""

BROKEN_PLUGIN = """
    raise RuntimeError("this plugin is broken on import")
"""

TYPO_PLUGIN = """
    from telemetry_core.hookspecs import hookimpl


    @hookimpl
    def telemetry_make_transprot(name, config):
        return None
"""

BAD_SIGNATURE_PLUGIN = """
    from telemetry_core.hookspecs import hookimpl


    @hookimpl
    def telemetry_list_providers():
        return []


    @hookimpl
    def telemetry_make_transport(name, config, surprise):
        return None
"""

EntryPointFactory = Callable[..., None]


@pytest.fixture
def config(tmp_path: Path) -> TelemetryConfig:
    """A configuration that touches nothing outside ``tmp_path``."""
    return TelemetryConfig(app="hosttest", db_path=tmp_path / "t.db", do_not_track=False)


@pytest.fixture
def entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, str]], list[str]]]:
    """Install fake ``telemetry_core`` entry points: ``{ep name: module source}``.

    Each source becomes a uniquely named module under ``tmp_path``; returns the
    module names. ``importlib.metadata.entry_points`` is replaced so that the
    group lists exactly these (nothing installed on the machine leaks in).
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    # The host reads entry_points.txt files before it imports importlib.metadata.
    dist_info = tmp_path / "fake_plugins-0.dist-info"
    dist_info.mkdir()
    (dist_info / "entry_points.txt").write_text(f"[{PROJECT_NAME}]\n")
    created: list[str] = []
    eps: list[importlib.metadata.EntryPoint] = []

    def install(plugins: dict[str, str]) -> list[str]:
        names = []
        for ep_name, source in plugins.items():
            module = f"fake_plugin_{uuid.uuid4().hex[:12]}"
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            eps.append(importlib.metadata.EntryPoint(ep_name, module, PROJECT_NAME))
            created.append(module)
            names.append(module)
        return names

    def fake_entry_points(**params: str) -> list[importlib.metadata.EntryPoint]:
        assert params == {"group": PROJECT_NAME}
        return list(eps)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    yield install
    for module in created:
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def _no_env_blocking(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    # Each test is a fresh install: load problems already reported are kept here.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


# -- defaults ------------------------------------------------------------------


def test_defaults_registered_under_short_names(entry_points: EntryPointFactory) -> None:
    host = PluginHost()
    assert set(DEFAULT_PLUGINS) == {
        "https",
        "otlp",
        "sqlite",
        "exponential-jitter",
        "token-bucket",
        "scrubber",
    }
    for name, module in DEFAULT_PLUGINS.items():
        plugin = host.pm.get_plugin(name)
        assert plugin is not None, name
        assert plugin.__name__ == module
    records = {r.name: r for r in host.plugins()}
    assert set(records) == set(DEFAULT_PLUGINS)
    assert all(r.bundled and r.distribution == "telemetry-core" for r in records.values())


def test_default_providers_listed_by_kind(entry_points: EntryPointFactory) -> None:
    provided = {(p.kind, p.name) for p in PluginHost().providers()}
    assert {
        ("transport", "https"),
        ("storage", "sqlite"),
        ("backoff", "exponential-jitter"),
        ("limiter", "token-bucket"),
    } <= provided


def test_default_providers_are_built_by_name(
    entry_points: EntryPointFactory, config: TelemetryConfig
) -> None:
    import random

    host = PluginHost()
    now = 1_700_000_000.0
    backoff = host.make_backoff(config, random.Random(1), lambda: now)
    limiter = host.make_limiter(config, lambda: 0.0)
    assert isinstance(backoff, Backoff)
    assert isinstance(limiter, Limiter)
    assert backoff.should_retry(0)
    assert limiter.consume(1)


def test_no_global_manager_is_created_per_host(entry_points: EntryPointFactory) -> None:
    assert PluginHost().pm is not PluginHost().pm


# -- third-party entry points -------------------------------------------------


def test_entry_point_plugin_is_loaded_and_selectable(
    entry_points: Callable[[dict[str, str]], list[str]], config: TelemetryConfig
) -> None:
    (module,) = entry_points({"null-transport": GOOD_PLUGIN})
    host = PluginHost(strict=True)
    record = next(r for r in host.plugins() if r.name == "null-transport")
    assert record.module == module
    assert not record.bundled
    assert record.hooks == ("telemetry_list_providers", "telemetry_make_transport")
    assert record.providers == (
        ProviderInfo(kind="transport", name="null", description="drops everything"),
    )
    transport = host.make_transport(config.evolve(transport="null"))
    assert isinstance(transport, Transport)
    assert transport.submit_batch([]) == SubmissionResult(accepted=0)
    https = host.make_transport(config.evolve(endpoint="https://127.0.0.1:9/v1/submit"))
    assert type(https).__module__ == DEFAULT_PLUGINS["https"]
    https.close()


def test_broken_entry_point_is_skipped_with_exactly_one_warning(
    entry_points: Callable[[dict[str, str]], list[str]], config: TelemetryConfig
) -> None:
    entry_points({"broken": BROKEN_PLUGIN, "null-transport": GOOD_PLUGIN})
    host = PluginHost()
    assert len(host.load_warnings) == 1
    message = host.load_warnings[0]
    assert "'broken'" in message
    assert "broken on import" in message
    names = {r.name for r in host.plugins()}
    assert "broken" not in names
    # The healthy plugin next to it still works.
    assert "null-transport" in names
    assert host.make_transport(config.evolve(transport="null")).ping()


def test_broken_entry_point_raises_in_strict_mode(
    entry_points: Callable[[dict[str, str]], list[str]],
) -> None:
    entry_points({"broken": BROKEN_PLUGIN})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict mode must raise, not warn
        with pytest.raises(PluginError, match="broken") as info:
            PluginHost(strict=True)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_misspelled_hook_is_caught_by_check_pending(
    entry_points: Callable[[dict[str, str]], list[str]],
) -> None:
    entry_points({"typo": TYPO_PLUGIN})
    host = PluginHost()
    assert len(host.load_warnings) == 1
    assert "telemetry_make_transprot" in host.load_warnings[0]
    assert "typo" not in {r.name for r in host.plugins()}
    host.pm.check_pending()  # nothing left half-registered

    with pytest.raises(PluginError, match="telemetry_make_transprot"):
        PluginHost(strict=True)


def test_misspelled_hook_in_explicit_plugin_raises(entry_points: EntryPointFactory) -> None:
    class Typo:
        @hookimpl
        def telemetry_batch_submited(self, events: object, result: object) -> None:
            """Misspelled on purpose."""

    with pytest.raises(PluginError, match="telemetry_batch_submited"):
        PluginHost(plugins=[Typo()])


def test_wrong_hook_signature_is_skipped_and_not_half_registered(
    entry_points: Callable[[dict[str, str]], list[str]],
) -> None:
    entry_points({"bad-signature": BAD_SIGNATURE_PLUGIN})
    host = PluginHost()
    assert len(host.load_warnings) == 1
    assert "surprise" in host.load_warnings[0]
    assert host.pm.get_plugin("bad-signature") is None
    # Its valid first hook must not linger either.
    assert all(r.name != "bad-signature" for r in host.plugins())


def test_entry_point_cannot_take_a_bundled_name(
    entry_points: Callable[[dict[str, str]], list[str]],
) -> None:
    entry_points({"https": GOOD_PLUGIN})
    host = PluginHost()
    assert "already taken" in host.load_warnings[0]
    assert host.pm.get_plugin("https").__name__ == DEFAULT_PLUGINS["https"]


def test_entry_points_can_be_turned_off(
    entry_points: Callable[[dict[str, str]], list[str]],
) -> None:
    entry_points({"broken": BROKEN_PLUGIN})
    host = PluginHost(load_entrypoints=False)
    assert {r.name for r in host.plugins()} == set(DEFAULT_PLUGINS)


# -- blocking -------------------------------------------------------------------


def test_env_blocks_plugins_by_name(
    entry_points: Callable[[dict[str, str]], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (module,) = entry_points({"broken": BROKEN_PLUGIN})
    monkeypatch.setenv(DISABLE_ENV, " broken , scrubber,")
    host = PluginHost()  # no warning: the broken plugin is never imported
    names = {r.name for r in host.plugins()}
    assert names == set(DEFAULT_PLUGINS) - {"scrubber"}
    assert module not in sys.modules
    assert host.disabled == frozenset({"broken", "scrubber"})
    assert host.pm.is_blocked("scrubber")


def test_disabled_argument_overrides_env(
    entry_points: Callable[[dict[str, str]], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    config: TelemetryConfig,
) -> None:
    entry_points({"null-transport": GOOD_PLUGIN})
    monkeypatch.setenv(DISABLE_ENV, "scrubber")
    host = PluginHost(disabled=["null-transport", "https"])
    names = {r.name for r in host.plugins()}
    assert names == set(DEFAULT_PLUGINS) - {"https"}
    with pytest.raises(PluginError, match="no transport plugin named 'https'"):
        host.make_transport(config)


# -- provider selection -----------------------------------------------------------


def test_unknown_provider_name_lists_available_names(
    entry_points: Callable[[dict[str, str]], list[str]], config: TelemetryConfig
) -> None:
    entry_points({"null-transport": GOOD_PLUGIN})
    host = PluginHost()
    with pytest.raises(PluginError) as info:
        host.make_transport(config.evolve(transport="carrier-pigeon"))
    message = str(info.value)
    assert message.startswith(
        "no transport plugin named 'carrier-pigeon' (available: https, null, otlp)"
    )
    with pytest.raises(
        PluginError, match=r"no limiter plugin named 'leaky' \(available: token-bucket\)"
    ):
        host.make_limiter(config.evolve(limiter="leaky"), lambda: 0.0)


def test_first_plugin_that_answers_wins(
    entry_points: EntryPointFactory, config: TelemetryConfig
) -> None:
    class Shadow:
        """Answers for "https", registered last, so pluggy calls it first."""

        @hookimpl
        def telemetry_make_transport(self, name: str, config: TelemetryConfig) -> object:
            return "shadow" if name == "https" else None

    host = PluginHost(plugins=[Shadow()])
    assert host.make_transport(config) == "shadow"


# -- observers ----------------------------------------------------------------------


def _event() -> Event:
    return Event(
        id=new_event_id(),
        type="command_executed",
        timestamp=1_700_000_000_000,
        install_id=str(uuid.uuid4()),
        app="hosttest",
    )


class _Exploding:
    @hookimpl
    def telemetry_event_recorded(self, event: Event) -> None:
        raise ValueError("observer bug")

    @hookimpl
    def telemetry_batch_failed(self, events: list[Event], error: TransportError) -> None:
        raise ValueError("observer bug")


def test_observer_errors_are_warned_not_raised(entry_points: EntryPointFactory) -> None:
    host = PluginHost(plugins=[_Exploding()])
    with pytest.warns(PluginObserverWarning, match="telemetry_event_recorded.*observer bug"):
        host.event_recorded(_event())
    error = TransportError("down", retryable=True)
    with pytest.warns(PluginObserverWarning, match="telemetry_batch_failed"):
        host.batch_failed([_event()], error)


def test_observer_errors_raise_in_strict_mode(entry_points: EntryPointFactory) -> None:
    host = PluginHost(strict=True, plugins=[_Exploding()])
    with pytest.raises(ValueError, match="observer bug"):
        host.event_recorded(_event())


def test_plugin_records_are_values(entry_points: EntryPointFactory) -> None:
    record = PluginHost().plugins()[0]
    with pytest.raises(AttributeError):
        record.name = "other"  # type: ignore[misc]
    assert type(record) is plugin_host.PluginRecord


# -- entry-point discovery without importlib.metadata -----------------------------


def _dist_info(root: Path, name: str, entry_points: str) -> Path:
    folder = root / f"{name}-1.2.3.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (folder / "entry_points.txt").write_text(entry_points)
    return folder


def test_pre_scan_sees_only_the_telemetry_core_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    _dist_info(tmp_path, "other", "[console_scripts]\ntelemetry_core = x:y\n")
    assert plugin_host._may_have_entry_points(PROJECT_NAME) is False
    _dist_info(tmp_path, "mine", f"[console_scripts]\na = b\n\n[ {PROJECT_NAME} ]\nx = y\n")
    assert plugin_host._may_have_entry_points(PROJECT_NAME) is True


def test_pre_scan_defers_to_importlib_metadata_for_zips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "plugins.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setattr(sys, "path", [str(archive)])
    assert plugin_host._may_have_entry_points(PROJECT_NAME) is True


def test_installed_distribution_plugin_is_found_with_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: TelemetryConfig
) -> None:
    """A real dist-info folder on sys.path, read by the real importlib.metadata."""
    module = f"fake_plugin_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(GOOD_PLUGIN))
    _dist_info(tmp_path, "telemetry-null", f"[{PROJECT_NAME}]\nnull = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        host = PluginHost()
        assert host.make_transport(config.evolve(transport="null")).ping()
        (record,) = [r for r in host.plugins() if r.name == "null"]
        assert (record.distribution, record.version, record.bundled) == (
            "telemetry-null",
            "1.2.3",
            False,
        )
    finally:
        sys.modules.pop(module, None)


def test_no_candidate_means_no_importlib_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin_host, "_may_have_entry_points", lambda group: False)

    def fail(**params: str) -> list[importlib.metadata.EntryPoint]:
        raise AssertionError("importlib.metadata consulted")

    monkeypatch.setattr(importlib.metadata, "entry_points", fail)
    assert [r.name for r in PluginHost().plugins()] == sorted(DEFAULT_PLUGINS)


def test_observer_hooks_run_only_when_implemented(entry_points: EntryPointFactory) -> None:
    calls: list[str] = []

    class Observer:
        @hookimpl
        def telemetry_event_recorded(self, event: Event) -> None:
            calls.append(event.id)

    event = Event(id=new_event_id(), type="t", timestamp=1, install_id="i", app="a")
    host = PluginHost()
    host.event_recorded(event)  # no observer: nothing to call, nothing raised
    host.pm.register(Observer())  # registered after construction: still seen
    host.event_recorded(event)
    assert calls == [event.id]


def test_a_broken_plugin_is_logged_once_per_install_in_one_plain_line(
    entry_points: Callable[[dict[str, str]], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry_points({"broken": BROKEN_PLUGIN})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no `warnings` report (with its source line)
        with caplog.at_level("DEBUG", logger="telemetry_core"):
            first = PluginHost()
            second = PluginHost()  # the next command of a CLI app
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1
    assert "\n" not in warned[0].getMessage()
    assert "skipping plugin 'broken'" in warned[0].getMessage()
    # Both hosts still know about it (`telemetry plugins` lists it every time).
    assert first.load_warnings == second.load_warnings
