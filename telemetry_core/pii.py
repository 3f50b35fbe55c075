"""Recognising personal data: the patterns both halves of telemetry-core share.

:func:`find_pii` is used by the client's scrubber (:mod:`telemetry_core.privacy`,
which masks what it finds before storage) and by the collector, which re-checks
every received value and rejects events where it still finds something (code
``pii``). This module only recognises; it changes nothing and knows no hook.

All patterns run in linear time: a match may only start where a run of its
characters starts (a look-behind), and runs are consumed possessively, so no
input makes the engine rescan a run from each of its positions. The patterns
are compiled on first use, not at import: a CLI process that never records an
event does not pay for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache, lru_cache
from typing import Final

__all__ = ["GROUP_KINDS", "PII_PATTERNS", "could_hold_pii", "find_pii", "pattern_for"]

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

#: Characters of an e-mail local part; a match starts only where a run of them starts.
_LOCAL = r"A-Za-z0-9._%+-"
#: Characters of a token (base64, base64url, hex); same rule.
_TOKEN = r"A-Za-z0-9+/_-"
#: Characters of a URL scheme (RFC 3986); same rule.
_SCHEME = r"A-Za-z0-9+.-"

#: URL user information with a password (``scheme://user:password@``): a secret.
#: Kept apart from the other secrets so that the scrubber keeps the scheme.
_URL_CREDENTIALS: Final = rf"(?<![{_SCHEME}])[A-Za-z][{_SCHEME}]*+://[^\s/:@]*+:[^\s/@]++@"

#: Kind -> pattern source, checked in this order. Each kind is also the placeholder name.
_SOURCES: Final[dict[str, str]] = {
    "email": (rf"(?<![{_LOCAL}])[{_LOCAL}]++@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,}}"),
    # IPv4 not glued to a word or a longer dotted number ("v1.2.3.4", "1.2.3.4.5"
    # are versions); IPv6 either in full (8 groups) or compressed with "::",
    # never preceded by a letter, so that times ("12:30:45") and C++ or Rust
    # paths ("std::vector", "a::b") stay.
    "ip": (
        rf"(?<![\w.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?!\.?\d)"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*+)?"
        r"(?![\w:])"
    ),
    "home_path": r"(?:/home/|/Users/|/root(?=/|\b)|[A-Za-z]:\\\\?Users\\\\?)[^/\\\s\"']*+",
    "secret": (
        r"\b(?:sk|pk|rk)[-_](?:live[-_]|test[-_])?[A-Za-z0-9]{16,}"
        r"|\bgh[pousr]_[A-Za-z0-9]{20,}"
        r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
        r"|\bAKIA[0-9A-Z]{16}\b"
        # A JWT's header is short; the bound keeps "eyJ-eyJ-eyJ-..." linear.
        r"|\beyJ[A-Za-z0-9_-]{8,512}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+"
        r"|(?i:bearer\s++)[A-Za-z0-9._~+/=-]{16,}"
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
        r"|(?i:(?:password|passwd|secret|token|api[_-]?key)\s*+[=:]\s*+)\S{4,}"
        # Long base64/hex-looking tokens with at least three digits (long
        # snake_case identifiers and words have none or few).
        rf"|(?<![{_TOKEN}])(?=(?:[A-Za-z+/_-]*+\d){{3}})[{_TOKEN}]{{40,}}+={{0,2}}"
        rf"|{_URL_CREDENTIALS}"
    ),
}

#: Group names of the combined pattern -> the kind they report.
_GROUP_KINDS: Final[dict[str, str]] = {
    "email": "email",
    "ip": "ip",
    "home_path": "home_path",
    "secret": "secret",
    "url_secret": "secret",
}
_KIND_ORDER: Final = tuple(_SOURCES)


@cache
def _patterns() -> dict[str, re.Pattern[str]]:
    return {kind: re.compile(source) for kind, source in _SOURCES.items()}


_URL: Final = 1
_EMAIL: Final = 2
_IP: Final = 4
_HOME: Final = 8
_SECRET: Final = 16


def _possible(value: str) -> int:
    """The kinds whose characters occur in ``value`` (a bit mask); a cheap gate.

    Each kind needs a character that most ordinary values lack: ``@`` (and
    ``.``) for an e-mail, ``://`` and ``@`` for URL credentials, ``.`` or ``:``
    for an IP address, ``/`` or ``\\`` for a home path; a secret needs 15
    characters or a ``=``/``:`` (``token=abcd``).
    """
    mask = 0
    if "@" in value:
        mask = _URL | _EMAIL if "://" in value else _EMAIL
    if ":" in value:
        mask |= _IP | _SECRET
    elif "." in value:
        mask |= _IP
    if "/" in value or "\\" in value:
        mask |= _HOME
    if len(value) >= 15 or "=" in value:
        mask |= _SECRET
    return mask


@lru_cache(maxsize=32)
def _combined(mask: int) -> re.Pattern[str] | None:
    # One alternation of the kinds that can occur, so that a value costs one
    # scan. URL credentials come first: where they start, they win over the
    # e-mail shape "password@host" found later in the same URL.
    secret = _SOURCES["secret"].removesuffix(f"|{_URL_CREDENTIALS}")
    groups = [
        (_URL, "url_secret", _URL_CREDENTIALS),
        (_EMAIL, "email", _SOURCES["email"]),
        (_IP, "ip", _SOURCES["ip"]),
        (_HOME, "home_path", _SOURCES["home_path"]),
        (_SECRET, "secret", secret),
    ]
    branches = [f"(?P<{name}>{source})" for bit, name, source in groups if mask & bit]
    return re.compile("|".join(branches)) if branches else None


class _LazyPatterns(Mapping[str, re.Pattern[str]]):
    """The per-kind patterns, compiled when first looked at."""

    def __getitem__(self, kind: str) -> re.Pattern[str]:
        return _patterns()[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(_KIND_ORDER)

    def __len__(self) -> int:
        return len(_KIND_ORDER)


#: Kind -> compiled pattern, in the order :func:`find_pii` reports kinds.
PII_PATTERNS: Final[Mapping[str, re.Pattern[str]]] = _LazyPatterns()


def find_pii(value: str) -> str | None:
    """Return the kind of personal data found in ``value`` (``email``, ``ip``,
    ``home_path``, ``secret``), or ``None``.

    When several kinds occur, the first in :data:`PII_PATTERNS` order is
    reported, wherever it stands in ``value``.
    """
    pattern = _combined(_possible(value))
    found = pattern.search(value) if pattern is not None else None
    if found is None:
        return None
    kind = _GROUP_KINDS[found.lastgroup or ""]
    index = _KIND_ORDER.index(kind)
    if index:  # rare: something was found; an earlier kind may stand further on
        patterns = _patterns()
        for earlier in _KIND_ORDER[:index]:
            if patterns[earlier].search(value):
                return earlier
    return kind


#: The kind of personal data each named group of :func:`pattern_for`'s patterns finds.
GROUP_KINDS: Final[Mapping[str, str]] = _GROUP_KINDS


def could_hold_pii(value: str) -> bool:
    """False when a cheap look at ``value``'s characters rules out every kind."""
    return bool(_possible(value))


def pattern_for(value: str) -> re.Pattern[str] | None:
    """One compiled pattern of every kind ``value`` could hold (named groups, see
    :data:`GROUP_KINDS`), or None when it can hold none: for masking in one pass."""
    return _combined(_possible(value))
