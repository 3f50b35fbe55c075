"""Authentication: submission keys and the admin token, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["AdminAuth", "KeyRing", "key_id"]


def key_id(key: str) -> str:
    """A short, non-reversible name for a key, safe for logs and metrics labels."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class KeyRing:
    """The accepted submission keys.

    :meth:`identify` compares the presented key with every configured key using
    :func:`hmac.compare_digest` on SHA-256 digests (equal lengths, no early exit),
    so timing tells nothing about which key or how much of it matched.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys]

    def identify(self, presented: str | None) -> str | None:
        """Return the :func:`key_id` of the matching key, or ``None``."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for known, kid in self._digests:
            if hmac.compare_digest(digest, known):
                found = kid
        return found


class AdminAuth:
    """The admin token, accepted as ``Authorization: Bearer <token>`` or as the
    dashboard session cookie (an HMAC of the token, never the token itself)."""

    COOKIE = "telemetry_admin"

    def __init__(self, token: str | None) -> None:
        self._token = token

    @property
    def enabled(self) -> bool:
        """False when no admin token is configured: admin endpoints then refuse everyone."""
        return self._token is not None

    def check_token(self, presented: str | None) -> bool:
        """True when ``presented`` is the admin token."""
        if self._token is None or presented is None:
            return False
        return hmac.compare_digest(
            hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest(),
            hashlib.sha256(self._token.encode()).digest(),
        )

    def check_header(self, authorization: str | None) -> bool:
        """True when an ``Authorization`` header carries the admin token as a Bearer token."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def session_value(self) -> str:
        """The cookie value that proves a successful dashboard login."""
        assert self._token is not None
        return hmac.new(self._token.encode(), b"dashboard-session-v1", "sha256").hexdigest()

    def check_cookie(self, value: str | None) -> bool:
        """True when ``value`` is the dashboard session cookie."""
        if self._token is None or not value:
            return False
        return hmac.compare_digest(value.encode(), self.session_value().encode())
