"""Unit tests of how the PostgreSQL store shows a connection string (no server needed)."""

from __future__ import annotations

import pytest

from telemetry_core.collector.postgres_store import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://u:p%40ss@db:5432/x?sslmode=require",
            "user=u password=*** dbname=x host=db port=5432 sslmode=require",
        ),
        ("postgresql://db/x?password=hunter2&user=u", "user=u password=*** dbname=x host=db"),
        ("host=db password=hunter2 dbname=x", "password=*** dbname=x host=db"),
        ("postgresql://u@db/x", "user=u dbname=x host=db"),
    ],
)
def test_a_password_is_masked_in_urls_and_key_value_strings(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "host=db password = secret-1 dbname=x",
        "host=db password= secret-1 dbname=x",
        "host=db password ='secret-1' dbname=x",
        "host=db password = 'secret-1 with spaces' dbname=x",
        "host=db password='it\\'s secret-1' dbname=x",
        "host=db sslpassword=secret-1 dbname=x",
        "postgresql://u:secret-1@db/x",
        "postgresql://db/x?password=secret%2D1",
    ],
)
def test_a_password_with_spaces_around_equals_or_quotes_is_fully_masked(url: str) -> None:
    shown = redact_url(url)
    assert "secret" not in shown
    assert "host=db" in shown


def test_an_unparseable_string_is_not_shown_at_all() -> None:
    assert redact_url("host=db password='unterminated secret-1") == "<unparseable database url>"
