"""Privacy: recognising personal data in property values, and the default scrubber.

:func:`find_pii` is shared by both halves: the client scrubs what it finds
before storage (the bundled ``scrubber`` plugin below), and the collector
re-checks every received value and rejects events where it still finds
something (code ``pii``). Replacements are placeholders such as ``<email>``
that :func:`find_pii` itself never matches, so a scrubbed event is accepted.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
from collections.abc import Iterable
from functools import cache
from typing import Final

from telemetry_core.hookspecs import hookimpl
from telemetry_core.models import ProviderInfo
from telemetry_core.schema import PropertyValue

__all__ = ["PII_PATTERNS", "REDACTED", "find_pii", "local_identifiers", "scrub_text"]

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

#: Kind -> pattern, checked in order. Each kind is also the placeholder name.
PII_PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # IPv4 not glued to a word or a longer dotted number ("v1.2.3.4", "1.2.3.4.5"
    # are versions); IPv6 either in full (8 groups) or compressed with "::",
    # never preceded by a letter, so that times ("12:30:45") and C++ or Rust
    # paths ("std::vector", "a::b") stay.
    "ip": re.compile(
        rf"(?<![\w.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?!\.?\d)"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?"
        r"(?![\w:])"
    ),
    "home_path": re.compile(
        r"(?:/home/|/Users/|/root(?=/|\b)|[A-Za-z]:\\\\?Users\\\\?)[^/\\\s\"']*"
    ),
    "secret": re.compile(
        r"\b(?:sk|pk|rk)[-_](?:live[-_]|test[-_])?[A-Za-z0-9]{16,}"
        r"|\bgh[pousr]_[A-Za-z0-9]{20,}"
        r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
        r"|\bAKIA[0-9A-Z]{16}\b"
        r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
        r"|(?i:bearer\s+)[A-Za-z0-9._~+/=-]{16,}"
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
        r"|(?i:(?:password|passwd|secret|token|api[_-]?key)\s*[=:]\s*)\S{4,}"
        # Long base64/hex-looking tokens with at least three digits (long
        # snake_case identifiers and words have none or few).
        r"|\b(?=(?:[A-Za-z+/_-]*\d){3})[A-Za-z0-9+/_-]{40,}={0,2}"
    ),
}


def find_pii(value: str) -> str | None:
    """Return the kind of personal data found in ``value`` (``email``, ``ip``,
    ``home_path``, ``secret``), or ``None``."""
    for kind, pattern in PII_PATTERNS.items():
        if pattern.search(value):
            return kind
    return None


@cache
def local_identifiers() -> tuple[str, ...]:
    """This machine's user and host names (at least 3 characters), longest first.

    They are masked wherever they appear in a string value; short names would
    mask ordinary words, so they are left to the patterns above.
    """
    names: set[str] = set()
    with contextlib.suppress(Exception):  # no user name is a fine answer here
        names.add(getpass.getuser())
    for name in (socket.gethostname(), os.environ.get("HOSTNAME", "")):
        if name:
            names.add(name)
            names.add(name.split(".")[0])
    return tuple(sorted((n for n in names if len(n) >= 3), key=len, reverse=True))


#: What a value becomes when masking does not converge (see :func:`scrub_text`).
REDACTED: Final = "<redacted>"
_MAX_PASSES: Final = 4


def _mask_patterns(value: str) -> str:
    for kind, pattern in PII_PATTERNS.items():
        if pattern.search(value):
            value = pattern.sub(f"<{kind}>", value)
    return value


def scrub_text(value: str, literals: Iterable[str] = ()) -> str:
    """Replace personal data in ``value`` with placeholders (``<email>``, ``<user>``...).

    ``literals`` (the local user and host names) are masked as ``<user>``
    where they stand as whole words. The result never contains anything
    :func:`find_pii` finds: masking repeats until nothing is found (a
    replacement can complete a new match, as in ``token: <user>``), and a
    value that still does not converge becomes ``<redacted>``.
    """
    literals = tuple(literals)
    for _ in range(_MAX_PASSES):
        masked = _mask_patterns(value)
        for literal in literals:
            if literal in masked:
                masked = re.sub(
                    rf"(?<![A-Za-z0-9]){re.escape(literal)}(?![A-Za-z0-9])", "<user>", masked
                )
        if masked == value:
            return value  # a pass that changes nothing found nothing
        value = masked
    return REDACTED


# -- the bundled default scrubber (registered as plugin "scrubber") -----------


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """The scrubber provides no provider; it only observes."""
    return []


@hookimpl
def telemetry_scrub_event(event_type: str, properties: dict[str, PropertyValue]) -> None:
    """Mask e-mail addresses, IP addresses, home paths, secrets and the local
    user and host names in string property values."""
    literals = local_identifiers()
    for key, value in properties.items():
        if isinstance(value, str) and value:
            cleaned = scrub_text(value, literals)
            if cleaned != value:
                properties[key] = cleaned
