"""The identity secret kept in PostgreSQL: collectors sharing a database hash user ids alike."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest
import trustme
import urllib3

from telemetry_core.collector.identity import persisted_secret
from tests.integration.collector_process import API_KEY, CollectorProcess
from tests.integration.pg import fresh_database

pytestmark = pytest.mark.postgres


def test_concurrent_first_starts_agree_on_one_secret() -> None:
    with fresh_database() as url:
        found: list[str] = []
        threads = [
            threading.Thread(target=lambda: found.append(persisted_secret(database_url=url)))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(found) == 4
        assert len(set(found)) == 1
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT name, value FROM collector_secrets").fetchall()
        assert rows == [("identity_hmac", found[0])]


def test_two_collectors_on_one_database_count_one_posthog_user_once(
    tls_ca: trustme.CA, tmp_path: Path
) -> None:
    with fresh_database() as url:
        store = ["--database-url", url]
        with (
            CollectorProcess(tls_ca, tmp_path / "a", store) as first,
            CollectorProcess(tls_ca, tmp_path / "b", store) as second,
        ):
            for index, collector in enumerate((first, second)):
                body = {
                    "api_key": API_KEY,
                    "batch": [{"event": f"step_{index}", "distinct_id": "ann@example.com"}],
                }
                with urllib3.PoolManager(ssl_context=collector.ssl_context()) as pool:
                    answer = pool.request(
                        "POST",
                        collector.base_url + "/batch/",
                        body=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json"},
                    )
                assert answer.status == 200, answer.data
            with urllib3.PoolManager(ssl_context=first.ssl_context()) as pool:
                stats = pool.request(
                    "GET",
                    first.base_url + "/v1/stats",
                    headers={"Authorization": f"Bearer {first.admin_token}"},
                )
            totals = json.loads(stats.data)["totals"]
            assert totals["by_type"] == {"step_0": 1, "step_1": 1}
            assert totals["installs"] == 1
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT install_id FROM events").fetchall()
        assert {row[0] for row in stored} != {"ann@example.com"}
        assert len({row[0] for row in stored}) == 1
