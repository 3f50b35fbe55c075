"""Keyed hashing of the user ids that analytics SDKs send.

PostHog's ``distinct_id`` and Segment's ``anonymousId`` / ``userId`` often are
an e-mail address, an account number or a device id: the collector never
stores them. :class:`IdentityHasher` turns each into an HMAC-SHA256 under a
server secret (32 hex digits: stable per user, so distinct installs still
count, and not reversible without the secret, not even by guessing the ids).

The secret is a setting (``--identity-secret`` / ``_FILE`` / environment).
When none is given, :func:`persisted_secret` creates one on first start and
keeps it in the collector's database (table ``collector_secrets``), so every
collector sharing the database, and every restart, hashes alike.
"""

from __future__ import annotations

import hmac
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final

from telemetry_core.errors import StorageError

__all__ = ["SECRET_NAME", "IdentityHasher", "new_secret", "persisted_secret"]

#: Name of the secret in ``collector_secrets``.
SECRET_NAME: Final = "identity_hmac"
_HASH_HEX_DIGITS: Final = 32  # 128 bits; below the length the PII check takes for a token


def new_secret() -> str:
    """A fresh random secret (256 bits, hex)."""
    return secrets.token_hex(32)


class IdentityHasher:
    """HMAC-SHA256 of user ids under a server secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the identity secret must have at least 16 characters")
        self._key = secret.encode()

    def hash(self, value: str) -> str:
        """The keyed hash of ``value``: 32 lowercase hex digits."""
        digest = hmac.digest(self._key, value.encode("utf-8", "surrogatepass"), "sha256")
        return digest.hex()[:_HASH_HEX_DIGITS]

    def memo(self) -> Callable[[str], str]:
        """:meth:`hash` remembering its answers: for one request, whose messages
        mostly come from one user (dropped with the request, like the raw ids)."""
        known: dict[str, str] = {}

        def hash_once(value: str) -> str:
            hashed = known.get(value)
            if hashed is None:
                hashed = known[value] = self.hash(value)
            return hashed

        return hash_once


#: Advisory lock held while the secrets table is created and read (PostgreSQL).
_SECRETS_LOCK_KEY: Final = 0x7465_6C65_5345_4352  # "teleSECR"
_CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS collector_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
)


def persisted_secret(*, db_path: str | Path | None = None, database_url: str | None = None) -> str:
    """The identity secret kept in the collector's database, created on first use.

    Concurrent first starts agree: the insert keeps the first value written
    and every caller reads back the stored one.
    """
    candidate = new_secret()
    if database_url is not None:
        return _postgres_secret(database_url, candidate)
    if db_path is None:
        raise ValueError("persisted_secret needs db_path or database_url")
    try:
        with sqlite3.connect(db_path, timeout=30) as conn:
            conn.execute(_CREATE)
            conn.execute(
                "INSERT OR IGNORE INTO collector_secrets (name, value) VALUES (?, ?)",
                (SECRET_NAME, candidate),
            )
            row = conn.execute(
                "SELECT value FROM collector_secrets WHERE name = ?", (SECRET_NAME,)
            ).fetchone()
        conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot keep the identity secret: {exc}") from exc
    return str(row[0])


def _postgres_secret(database_url: str, candidate: str) -> str:
    import psycopg

    try:
        with psycopg.connect(database_url) as conn:
            # Collectors starting together would race on CREATE TABLE IF NOT
            # EXISTS (not atomic in PostgreSQL): one at a time, for this transaction.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SECRETS_LOCK_KEY,))
            conn.execute(_CREATE)
            conn.execute(
                "INSERT INTO collector_secrets (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (SECRET_NAME, candidate),
            )
            row = conn.execute(
                "SELECT value FROM collector_secrets WHERE name = %s", (SECRET_NAME,)
            ).fetchone()
    except psycopg.Error as exc:
        raise StorageError(f"cannot keep the identity secret: {type(exc).__name__}") from exc
    assert row is not None
    return str(row[0])
