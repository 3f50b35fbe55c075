"""One test per hookspec: a real plugin implements it, the host calls it with the
documented arguments, and its result is used.

``tests/unit/test_hook_docs.py`` fails when a hookspec has no ``test_hook_<name>``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from telemetry_core.config import TelemetryConfig
from telemetry_core.errors import EventRejected, PluginError, TransportError
from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo, SubmissionResult
from telemetry_core.plugin_host import DISABLE_ENV, PluginHost
from telemetry_core.schema import Event, PropertyValue, new_event_id


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)


@pytest.fixture
def config(tmp_path: Path) -> TelemetryConfig:
    """A configuration selecting the test providers below by name."""
    return TelemetryConfig(
        app="hooktest",
        db_path=tmp_path / "t.db",
        transport="test-transport",
        storage="test-storage",
        backoff="test-backoff",
        limiter="test-limiter",
        do_not_track=False,
    )


def host_with(plugin: object) -> PluginHost:
    """A host with the bundled defaults plus ``plugin``, strict, no entry points."""
    return PluginHost(strict=True, load_entrypoints=False, plugins=[plugin])


def make_event(**changes: Any) -> Event:
    """A valid event."""
    fields: dict[str, Any] = {
        "id": new_event_id(),
        "type": "command_executed",
        "timestamp": 1_700_000_000_000,
        "install_id": str(uuid.uuid4()),
        "app": "hooktest",
    }
    fields.update(changes)
    return Event(**fields)


class Recorder:
    """Base of the test plugins: remembers every call with its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def record(self, hook: str, **kwargs: Any) -> None:
        """Remember one call."""
        self.calls.append((hook, kwargs))


def test_hook_telemetry_list_providers() -> None:
    class Plugin(Recorder):
        @hookimpl
        def telemetry_list_providers(self) -> list[ProviderInfo]:
            self.record("telemetry_list_providers")
            return [ProviderInfo(kind="transport", name="test-transport", description="test")]

    plugin = Plugin()
    host = host_with(plugin)
    providers = host.providers()
    assert ProviderInfo(kind="transport", name="test-transport", description="test") in providers
    assert plugin.calls == [("telemetry_list_providers", {})]
    record = next(r for r in host.plugins() if not r.bundled)
    assert record.providers == (
        ProviderInfo(kind="transport", name="test-transport", description="test"),
    )
    # The listed names are what an unknown-name error offers instead.
    with pytest.raises(PluginError, match="available: https, otlp, test-transport"):
        host.make_transport(TelemetryConfig(app="hooktest", transport="nope", do_not_track=False))


def test_hook_telemetry_make_transport(config: TelemetryConfig) -> None:
    class Transport:
        def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
            return SubmissionResult(accepted=len(events))

    made = Transport()

    class Plugin(Recorder):
        @hookimpl
        def telemetry_make_transport(self, name: str, config: TelemetryConfig) -> Any:
            self.record("telemetry_make_transport", name=name, config=config)
            return made if name == "test-transport" else None

    plugin = Plugin()
    host = host_with(plugin)
    assert host.make_transport(config) is made
    assert plugin.calls == [
        ("telemetry_make_transport", {"name": "test-transport", "config": config})
    ]
    # Returning None for other names lets other plugins answer (here: none does).
    with pytest.raises(PluginError, match="'nope'"):
        host.make_transport(config.evolve(transport="nope"))
    assert plugin.calls[-1][1]["name"] == "nope"


def test_hook_telemetry_make_storage(config: TelemetryConfig) -> None:
    store, backoff, made = object(), object(), object()

    def clock() -> float:
        return 42.0

    class Plugin(Recorder):
        @hookimpl
        def telemetry_make_storage(
            self, name: str, config: TelemetryConfig, store: Any, backoff: Any, clock: Any
        ) -> Any:
            self.record(
                "telemetry_make_storage",
                name=name,
                config=config,
                store=store,
                backoff=backoff,
                clock=clock,
            )
            return made if name == "test-storage" else None

    plugin = Plugin()
    result = host_with(plugin).make_storage(config, store, backoff, clock)  # type: ignore[arg-type]
    assert result is made
    ((hook, kwargs),) = plugin.calls
    assert hook == "telemetry_make_storage"
    assert kwargs == {
        "name": "test-storage",
        "config": config,
        "store": store,
        "backoff": backoff,
        "clock": clock,
    }


def test_hook_telemetry_make_backoff(config: TelemetryConfig) -> None:
    class Backoff:
        def __init__(self, rng: random.Random) -> None:
            self.rng = rng

        def next_retry_delay(self, retry_count: int, retry_after: float | None = None) -> float:
            return self.rng.random()

    class Plugin(Recorder):
        @hookimpl
        def telemetry_make_backoff(
            self, name: str, config: TelemetryConfig, rng: random.Random, clock: Any
        ) -> Any:
            self.record("telemetry_make_backoff", name=name, config=config, rng=rng, clock=clock)
            return Backoff(rng) if name == "test-backoff" else None

    plugin = Plugin()
    rng = random.Random(7)

    def clock() -> float:
        return 1.0

    backoff = host_with(plugin).make_backoff(config, rng, clock)
    assert plugin.calls == [
        (
            "telemetry_make_backoff",
            {"name": "test-backoff", "config": config, "rng": rng, "clock": clock},
        )
    ]
    assert backoff.next_retry_delay(0) == random.Random(7).random()


def test_hook_telemetry_make_limiter(config: TelemetryConfig) -> None:
    class Limiter:
        def __init__(self, clock: Any) -> None:
            self.clock = clock

        def wait_time(self, count: int = 1) -> float:
            return float(self.clock())

    class Plugin(Recorder):
        @hookimpl
        def telemetry_make_limiter(self, name: str, config: TelemetryConfig, clock: Any) -> Any:
            self.record("telemetry_make_limiter", name=name, config=config, clock=clock)
            return Limiter(clock) if name == "test-limiter" else None

    plugin = Plugin()

    def clock() -> float:
        return 3.5

    limiter = host_with(plugin).make_limiter(config, clock)
    assert plugin.calls == [
        ("telemetry_make_limiter", {"name": "test-limiter", "config": config, "clock": clock})
    ]
    assert limiter.wait_time() == 3.5


def test_hook_telemetry_scrub_event() -> None:
    class Plugin(Recorder):
        @hookimpl
        def telemetry_scrub_event(
            self, event_type: str, properties: dict[str, PropertyValue]
        ) -> None:
            self.record("telemetry_scrub_event", event_type=event_type, properties=dict(properties))
            if properties.get("drop"):
                raise EventRejected("test", "dropped by the test plugin")
            properties.pop("customer", None)
            properties["scrubbed"] = True

    plugin = Plugin()
    host = PluginHost(strict=True, load_entrypoints=False, disabled=["scrubber"], plugins=[plugin])
    properties: dict[str, PropertyValue] = {"command": "run", "customer": "acme"}
    host.scrub_event("command_executed", properties)
    assert plugin.calls == [
        (
            "telemetry_scrub_event",
            {
                "event_type": "command_executed",
                "properties": {"command": "run", "customer": "acme"},
            },
        )
    ]
    assert properties == {"command": "run", "scrubbed": True}
    with pytest.raises(EventRejected, match="dropped by the test plugin"):
        host.scrub_event("command_executed", {"drop": True})


def test_hook_telemetry_scrub_event_chain_sees_bundled_scrubber() -> None:
    seen: list[dict[str, PropertyValue]] = []

    class Plugin:
        @hookimpl(trylast=True)
        def telemetry_scrub_event(
            self, event_type: str, properties: dict[str, PropertyValue]
        ) -> None:
            seen.append(dict(properties))

    host = PluginHost(strict=True, load_entrypoints=False, plugins=[Plugin()])
    properties: dict[str, PropertyValue] = {"contact": "someone@example.com"}
    host.scrub_event("signup", properties)
    assert seen == [properties]
    assert "@example.com" not in str(properties["contact"])


def test_hook_telemetry_event_recorded() -> None:
    class Plugin(Recorder):
        @hookimpl
        def telemetry_event_recorded(self, event: Event) -> None:
            self.record("telemetry_event_recorded", event=event)

    plugin = Plugin()
    event = make_event(properties={"command": "run"})
    host_with(plugin).event_recorded(event)
    assert plugin.calls == [("telemetry_event_recorded", {"event": event})]


def test_hook_telemetry_batch_submitted() -> None:
    class Plugin(Recorder):
        @hookimpl
        def telemetry_batch_submitted(
            self, events: Sequence[Event], result: SubmissionResult
        ) -> None:
            self.record("telemetry_batch_submitted", events=list(events), result=result)

    plugin = Plugin()
    events = [make_event(), make_event()]
    result = SubmissionResult(accepted=1, duplicates=1, latency_ms=3.0)
    host_with(plugin).batch_submitted(events, result)
    assert plugin.calls == [("telemetry_batch_submitted", {"events": events, "result": result})]


def test_hook_telemetry_batch_failed() -> None:
    class Plugin(Recorder):
        @hookimpl
        def telemetry_batch_failed(self, events: Sequence[Event], error: TransportError) -> None:
            self.record("telemetry_batch_failed", events=list(events), error=error)

    plugin = Plugin()
    events = [make_event()]
    error = TransportError("503 overloaded", retryable=True, retry_after=5.0, status=503)
    host_with(plugin).batch_failed(events, error)
    assert plugin.calls == [("telemetry_batch_failed", {"events": events, "error": error})]
    assert plugin.calls[0][1]["error"].retry_after == 5.0


def test_hook_observers_through_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service calls the hooks on its own: scrub -> store -> recorded -> submitted/failed."""
    from telemetry_core.service import TelemetryService

    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    answers: list[SubmissionResult | TransportError] = [
        TransportError("503 overloaded", retryable=True, status=503),
    ]

    class Transport:
        def submit_batch(self, events: Sequence[Event]) -> SubmissionResult:
            answer = answers.pop(0) if answers else SubmissionResult(accepted=len(events))
            if isinstance(answer, TransportError):
                raise answer
            return answer

        def ping(self) -> bool:
            return True

        def server_info(self) -> Any:
            raise NotImplementedError

        def close(self) -> None:
            pass

    class Plugin(Recorder):
        @hookimpl
        def telemetry_make_transport(self, name: str, config: TelemetryConfig) -> Any:
            return Transport() if name == "test-transport" else None

        @hookimpl
        def telemetry_scrub_event(
            self, event_type: str, properties: dict[str, PropertyValue]
        ) -> None:
            self.record("telemetry_scrub_event", event_type=event_type)
            properties["plan"] = "redacted"

        @hookimpl
        def telemetry_event_recorded(self, event: Event) -> None:
            self.record("telemetry_event_recorded", event=event)

        @hookimpl
        def telemetry_batch_submitted(
            self, events: Sequence[Event], result: SubmissionResult
        ) -> None:
            self.record("telemetry_batch_submitted", events=list(events), result=result)

        @hookimpl
        def telemetry_batch_failed(self, events: Sequence[Event], error: TransportError) -> None:
            self.record("telemetry_batch_failed", events=list(events), error=error)

    plugin = Plugin()
    config = TelemetryConfig(
        app="hooktest",
        db_path=tmp_path / "t.db",
        enabled=True,
        remote_enabled=True,
        endpoint="https://127.0.0.1:9/v1/submit",
        transport="test-transport",
        strict=True,
        do_not_track=False,
    )
    clock = [1_700_000_000.0]
    with TelemetryService(config, plugins=[plugin], clock=lambda: clock[0]) as telemetry:
        event_id = telemetry.track("command_executed", {"plan": "enterprise"})
        telemetry.submit_now()  # first attempt: 503
        clock[0] += 3600.0  # past any backoff
        telemetry.submit_now()  # second attempt: accepted

    hooks = [hook for hook, _ in plugin.calls]
    assert hooks == [
        "telemetry_scrub_event",
        "telemetry_event_recorded",
        "telemetry_batch_failed",
        "telemetry_batch_submitted",
    ]
    recorded = plugin.calls[1][1]["event"]
    assert recorded.id == event_id
    assert recorded.properties == {"plan": "redacted"}  # the scrubber's change was stored
    assert plugin.calls[2][1]["events"] == [recorded]
    assert plugin.calls[2][1]["error"].status == 503
    assert plugin.calls[3][1]["events"] == [recorded]
    assert plugin.calls[3][1]["result"] == SubmissionResult(accepted=1)
