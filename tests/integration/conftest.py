"""Fixtures for integration tests: a throwaway CA, a real HTTPS fake collector, and a
fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from tests.fake_collector import FakeCollector


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A throwaway certificate authority, shared by the whole session."""
    return trustme.CA()


@pytest.fixture
def fake_collector_factory(tls_ca: trustme.CA) -> Iterator[Callable[..., FakeCollector]]:
    """Start extra fake collectors with custom options: ``factory(api_keys=["k"], max_events=10)``.

    Every collector started through it is closed at teardown.
    """
    started: list[FakeCollector] = []

    def factory(**options: Any) -> FakeCollector:
        ca = options.pop("ca", tls_ca)
        collector = FakeCollector(ca, **options)
        started.append(collector)
        return collector

    yield factory
    for collector in started:
        collector.close()


@pytest.fixture
def fake_collector(fake_collector_factory: Callable[..., FakeCollector]) -> FakeCollector:
    """A real HTTPS collector on 127.0.0.1 (see :mod:`tests.fake_collector`).

    Point a client at ``fake_collector.submit_url`` with ``ca_bundle=fake_collector.ca_path``;
    set ``api_keys`` / ``max_events`` on it, or ``script(...)`` canned answers.
    """
    return fake_collector_factory()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test (see
    :mod:`tests.integration.pg`: skipped without a server, failed under ``CI=true``)."""
    from tests.integration.pg import fresh_database

    with fresh_database() as url:
        yield url
