"""Authentication: submission keys and the admin token, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Final

from telemetry_core.models import Clock

__all__ = [
    "AdminAuth",
    "KeyRing",
    "Session",
    "bearer_token",
    "is_ascii_digits",
    "key_id",
    "same_origin",
]

#: The longest issue time a session may carry (12 digits is past the year 33000).
_MAX_ISSUED_DIGITS: Final = 12
#: Lower-case hexadecimal, the only alphabet of a session's nonce and MAC.
_HEX: Final = frozenset("0123456789abcdef")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header value, stripped (it may be
    empty); ``None`` when the header is absent or names another scheme."""
    scheme, _, value = (authorization or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def is_ascii_digits(text: str) -> bool:
    """True when ``text`` is one or more of the ASCII digits ``0`` to ``9``.

    ``str.isdigit`` also accepts ``'²'``, ``'٣'`` and other Unicode digits, which
    ``int`` then refuses (or reads as a number nobody wrote); every parse of a
    credential uses this instead.
    """
    return text.isascii() and text.isdigit()


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when a browser says the request comes from another site (CSRF).

    Browsers send ``Sec-Fetch-Site`` (``cross-site``, ``same-site``,
    ``same-origin``, ``none``) on every request; when it is there it decides: a
    ``cross-site`` or ``same-site`` post is refused (a sibling subdomain is
    another application). Without it (an older browser) an ``Origin`` naming a
    host other than the request's ``Host`` is refused. ``Origin: null`` is what
    our own pages send, their ``Referrer-Policy`` being ``no-referrer``, so it
    is not held against a request. Clients that send neither header (curl,
    scripts) are not browsers driven by a hostile page and pass. The session
    cookie's ``SameSite=Strict`` is the second line of defence.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() in ("same-origin", "none")
    origin = headers.get("origin", "null").strip().lower()
    if origin == "null":
        return True
    _, sep, rest = origin.partition("://")
    return bool(sep) and rest.rstrip("/") == headers.get("host", "").strip().lower()


class Session(Enum):
    """What a request's session cookie is worth."""

    #: No cookie (or an empty one): nothing was presented.
    ABSENT = "absent"
    #: Authentic, unexpired and not revoked: opens the dashboard.
    VALID = "valid"
    #: Authentic but expired or revoked: an old browser tab, not an attack.
    ENDED = "ended"
    #: Malformed or not signed by us: a refused credential, counted as one.
    FORGED = "forged"


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
    """The admin token, accepted as ``Authorization: Bearer <token>`` or as a
    dashboard session cookie.

    A session cookie is ``<issued_at>.<nonce>.<mac>``: the issue time in whole
    seconds, 16 random bytes, and an HMAC-SHA256 of both keyed by a key derived
    from the token (never the token itself). It is valid for ``session_ttl_s``
    after issue (checked against ``clock``) unless revoked by :meth:`revoke`
    (logout). Being a MAC, a session opens the dashboard on every collector
    sharing the token; revocation is kept in this process's memory, so behind a
    load balancer logout ends the session on the instance that served it and the
    expiry bounds it everywhere else. Revocations are kept until their session
    expires; past ``max_revoked`` of them, every session issued up to the oldest
    dropped one is refused (a forced logout, never a revived session).
    """

    COOKIE = "telemetry_admin"

    def __init__(
        self,
        token: str | None,
        *,
        session_ttl_s: int = 8 * 3600,
        clock: Clock = time.time,
        max_revoked: int = 10_000,
    ) -> None:
        self._token = token
        self._key = (
            hmac.new(token.encode(), b"dashboard-session-key-v2", "sha256").digest()
            if token is not None
            else b""
        )
        self.session_ttl_s = session_ttl_s
        self._clock = clock
        self._max_revoked = max_revoked
        self._revoked: dict[str, int] = {}  # nonce -> issued_at
        self._not_after_issue = -1  # sessions issued at or before this are refused
        self._lock = threading.Lock()

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
        return self.check_token(bearer_token(authorization))

    def _mac(self, issued_at: int, nonce: str) -> str:
        return hmac.new(self._key, f"{issued_at}.{nonce}".encode(), "sha256").hexdigest()

    def new_session(self) -> str:
        """A fresh session cookie value, issued now."""
        assert self._token is not None
        issued_at = int(self._clock())
        nonce = secrets.token_hex(16)
        return f"{issued_at}.{nonce}.{self._mac(issued_at, nonce)}"

    def _parse(self, value: str | None) -> tuple[int, str] | None:
        """``(issued_at, nonce)`` of a well-formed, authentic session value, else None.

        Only ASCII is looked at: the issue time must be ASCII digits (see
        :func:`is_ascii_digits`), the nonce and MAC lower-case hex, so no
        Unicode digit or odd code point reaches ``int`` or ``encode``.
        """
        if self._token is None or not value or not value.isascii():
            return None
        parts = value.split(".")
        if len(parts) != 3:
            return None
        issued, nonce, mac = parts
        if not is_ascii_digits(issued) or len(issued) > _MAX_ISSUED_DIGITS:
            return None
        if not (nonce and mac) or not _HEX.issuperset(nonce) or not _HEX.issuperset(mac):
            return None
        issued_at = int(issued)
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(issued_at, nonce).encode()):
            return None
        return issued_at, nonce

    def session(self, value: str | None) -> Session:
        """Judge a session cookie value; see :class:`Session`. Never raises."""
        if not value:
            return Session.ABSENT
        parsed = self._parse(value)
        if parsed is None:
            return Session.FORGED
        issued_at, nonce = parsed
        now = self._clock()
        if not issued_at <= now + 60 or now >= issued_at + self.session_ttl_s:
            return Session.ENDED
        with self._lock:
            alive = issued_at > self._not_after_issue and nonce not in self._revoked
        return Session.VALID if alive else Session.ENDED

    def check_cookie(self, value: str | None) -> bool:
        """True when ``value`` is an authentic, unexpired, unrevoked session cookie."""
        return self.session(value) is Session.VALID

    def revoke(self, value: str | None) -> None:
        """End the session ``value`` (logout); unknown or forged values are ignored."""
        parsed = self._parse(value)
        if parsed is None:
            return
        issued_at, nonce = parsed
        now = self._clock()
        with self._lock:
            self._revoked[nonce] = issued_at
            if len(self._revoked) > self._max_revoked:
                expired_before = now - self.session_ttl_s
                for n, at in list(self._revoked.items()):
                    if at <= expired_before:
                        del self._revoked[n]
            while len(self._revoked) > self._max_revoked:
                oldest = min(self._revoked, key=self._revoked.__getitem__)
                self._not_after_issue = max(self._not_after_issue, self._revoked.pop(oldest))
