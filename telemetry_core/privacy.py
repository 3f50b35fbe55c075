"""Privacy on the client: the default scrubber (registered as plugin ``scrubber``).

Before an event is stored, the bundled scrubber masks what
:func:`telemetry_core.pii.find_pii` recognises (e-mail addresses, IPs, home
paths, secrets) and this machine's user and host names, and drops property keys
that hold personal data. Replacements are placeholders such as ``<email>`` that
:func:`~telemetry_core.pii.find_pii` itself never matches, so a scrubbed event
is accepted by the collector's re-check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Final

from telemetry_core._memo import BoundedSet
from telemetry_core.hookspecs import hookimpl
from telemetry_core.pii import GROUP_KINDS, could_hold_pii, find_pii, pattern_for

if TYPE_CHECKING:
    from telemetry_core.models import ProviderInfo
    from telemetry_core.schema import PropertyValue

__all__ = ["REDACTED", "TELEMETRY_SCRUB_PER_PROPERTY", "local_identifiers", "scrub_text"]

#: Declared to the plugin host: this scrubber decides each property from its key
#: and value alone, and leaves nothing :func:`~telemetry_core.pii.find_pii` finds,
#: so its verdicts may be remembered (see :mod:`telemetry_core.recorder`).
TELEMETRY_SCRUB_PER_PROPERTY: Final = True


@cache
def local_identifiers() -> tuple[str, ...]:
    """This machine's user and host names (at least 3 characters), longest first.

    They are masked wherever they appear in a string value; short names would
    mask ordinary words, so they are left to the patterns above.
    """
    names: set[str] = set()
    # getpass.getuser() reads these variables first; asking them directly spares
    # a short CLI process the import of getpass (and termios) in most sessions.
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if user := os.environ.get(var):
            names.add(user)
            break
    else:
        import contextlib
        import getpass

        with contextlib.suppress(Exception):  # no user name is a fine answer here
            names.add(getpass.getuser())
    if hasattr(os, "uname"):
        host = os.uname().nodename
    else:  # Windows
        import socket

        host = socket.gethostname()
    for name in (host, os.environ.get("HOSTNAME", "")):
        if name:
            names.add(name)
            names.add(name.split(".")[0])
    return tuple(sorted((n for n in names if len(n) >= 3), key=len, reverse=True))


#: What a value becomes when masking does not converge (see :func:`scrub_text`).
REDACTED: Final = "<redacted>"
_MAX_PASSES: Final = 4


def _placeholder(found: re.Match[str]) -> str:
    group = found.lastgroup or ""
    if group == "url_secret":
        text = found.group()
        return f"{text[: text.index('://') + 3]}<secret>@"
    return f"<{GROUP_KINDS[group]}>"


def _mask_patterns(value: str) -> str:
    pattern = pattern_for(value)
    return pattern.sub(_placeholder, value) if pattern is not None else value


@lru_cache(maxsize=64)
def _literal_pattern(literals: tuple[str, ...]) -> re.Pattern[str]:
    longest_first = sorted(literals, key=len, reverse=True)
    alternation = "|".join(re.escape(literal) for literal in longest_first)
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternation})(?![A-Za-z0-9])")


def _mask_literals(value: str, literals: tuple[str, ...]) -> str:
    for literal in literals:
        if literal in value:
            return _literal_pattern(literals).sub("<user>", value)
    return value


def scrub_text(value: str, literals: Iterable[str] = ()) -> str:
    """Replace personal data in ``value`` with placeholders (``<email>``, ``<user>``...).

    ``literals`` (the local user and host names) are masked as ``<user>``
    where they stand as whole words. The result never contains anything
    :func:`find_pii` finds: masking repeats until nothing is found (a
    replacement can complete a new match, as in ``token: <user>``), and a
    value that still does not converge becomes ``<redacted>``.
    """
    literals = tuple(literal for literal in literals if literal)
    if not could_hold_pii(value) and not (literals and _mask_literals(value, literals) != value):
        return value  # the common case: nothing to look for
    for _ in range(_MAX_PASSES):
        masked = _mask_patterns(value)
        if literals:
            masked = _mask_literals(masked, literals)
        if masked == value:
            return value  # a pass that changes nothing found nothing
        value = masked
    return REDACTED


#: Property keys found clean (apps use the same few keys on every event); bounded.
_CLEAN_KEYS_SIZE: Final = 1024
_clean_key_memo = BoundedSet(size=_CLEAN_KEYS_SIZE, max_length=128)
_clean_keys = _clean_key_memo.items


def _is_personal_key(key: str, literals: tuple[str, ...]) -> bool:
    if key in _clean_keys:
        return False
    if find_pii(key) is not None or (literals and _mask_literals(key, literals) != key):
        return True
    _clean_key_memo.remember(key)
    return False


# -- the bundled default scrubber (registered as plugin "scrubber") -----------


@hookimpl
def telemetry_list_providers() -> list[ProviderInfo]:
    """The scrubber provides no provider; it only observes."""
    return []


@hookimpl
def telemetry_scrub_event(event_type: str, properties: dict[str, PropertyValue]) -> None:
    """Mask e-mail addresses, IP addresses, home paths, secrets and the local
    user and host names in string property values, and drop properties whose
    key holds any of them (a key cannot hold a placeholder; the caller counts
    the dropped property)."""
    literals = local_identifiers()
    personal = [
        key for key in properties if isinstance(key, str) and _is_personal_key(key, literals)
    ]
    for key in personal:
        del properties[key]
    for key, value in properties.items():
        if isinstance(value, str) and value:
            cleaned = scrub_text(value, literals)
            if cleaned != value:
                properties[key] = cleaned
