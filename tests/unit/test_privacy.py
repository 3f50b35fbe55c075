"""Tests of the personal-data detectors (telemetry_core.pii), the scrubber and its hook
(telemetry_core.privacy)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core.pii import PII_PATTERNS, find_pii
from telemetry_core.privacy import (
    REDACTED,
    local_identifiers,
    scrub_text,
    telemetry_scrub_event,
)
from telemetry_core.schema import PropertyValue


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("contact jane.doe+tag@example.co.uk now", "email"),
        ("from 192.168.1.20 port 22", "ip"),
        ("peer 10.0.0.1.", "ip"),
        ("addr 2001:db8:85a3:0:0:8a2e:370:7334", "ip"),
        ("link fe80::1ff:fe23:4567:890a%eth0", "ip"),
        ("/home/alice/project/run.py", "home_path"),
        ("/Users/bob/Library", "home_path"),
        (r"C:\Users\carol\AppData", "home_path"),
        ("/root/.config", "home_path"),
        ("key sk_live_abcdefghijklmnop1234", "secret"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123", "secret"),
        ("AKIAABCDEFGHIJKLMNOP", "secret"),
        ("Authorization: Bearer abcdefghijklmnop.qrstu", "secret"),
        ("password=hunter22", "secret"),
        ("api_key: 0123abcd", "secret"),
        ("eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.sig", "secret"),
        ("-----BEGIN RSA PRIVATE KEY-----", "secret"),
        ("0123456789abcdef0123456789abcdef01234567", "secret"),
        ("dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZSAx2345==", "secret"),
        ("postgresql://app:s3cret@db/prod", "secret"),
        ("redis://:p4ssw0rd@cache:6379/0", "secret"),
        ("https://deploy:hunter2@ci-host/r", "secret"),
        ("clone git+ssh://u:x@h/r", "secret"),
        ("token=abcd", "secret"),
    ],
)
def test_find_pii_finds(value: str, kind: str) -> None:
    assert find_pii(value) == kind
    scrubbed = scrub_text(value)
    assert find_pii(scrubbed) is None
    assert f"<{kind}>" in scrubbed


@pytest.mark.parametrize(
    "value",
    [
        "",
        "run",
        "command_executed",
        "1.2.3",
        "v1.2.3.4",
        "2.31.0.post1",
        "1.2.3.4.5",
        "12:30:45",
        "2024-05-01T12:30:45Z",
        "std::vector<int>",
        "crate::module::Type",
        "aa:bb:cc",
        "deadbeef",
        "a1b2c3",
        "some_very_long_snake_case_identifier_name_for_a_flag",
        "The quick brown fox jumps over the lazy dog again and again",
        "src/telemetry_core/worker.py",
        "https://example.org/docs/install",
        "user@",
        "@decorator",
        "token",
        "password",
        "<email> <ip> <home_path> <secret> <user> <redacted>",
        "/usr/local/bin/python3",
        "/homework/notes",
        "ssh://git@host/repo.git",
        "see http://example.org:8080/a:b@c",
        "a:b",
        "key=val",
    ],
)
def test_find_pii_leaves_ordinary_values(value: str) -> None:
    assert find_pii(value) is None
    assert scrub_text(value) == value


def test_scrub_text_keeps_the_rest() -> None:
    assert (
        scrub_text("mail a@b.io from 8.8.8.8 in /home/al/x")
        == "mail <email> from <ip> in <home_path>/x"
    )


def test_literals_are_masked_as_whole_words() -> None:
    assert scrub_text("ran on myhost by zed", ["myhost", "zed"]) == "ran on <user> by <user>"
    assert scrub_text("myhosting zedd", ["myhost", "zed"]) == "myhosting zedd"


def test_a_replacement_that_completes_a_match_is_masked_again() -> None:
    # "abc" alone is too short to be a secret; "<user>" is long enough.
    out = scrub_text("token: abc", ["abc"])
    assert find_pii(out) is None
    assert "abc" not in out


def test_non_converging_values_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from telemetry_core import privacy

    monkeypatch.setattr(privacy, "_mask_patterns", lambda value: value + "!")
    monkeypatch.setattr(privacy, "find_pii", lambda value: "secret")
    assert privacy.scrub_text("x@y", ["y"]) == REDACTED


def test_local_identifiers_are_long_enough() -> None:
    names = local_identifiers()
    assert all(len(n) >= 3 for n in names)
    assert list(names) == sorted(names, key=len, reverse=True)


def test_scrub_hook_masks_in_place() -> None:
    props: dict[str, PropertyValue] = {
        "email": "x@example.com",
        "count": 3,
        "ok": True,
        "none": None,
        "plain": "run",
    }
    telemetry_scrub_event(event_type="t", properties=props)
    assert props == {
        "email": "<email>",
        "count": 3,
        "ok": True,
        "none": None,
        "plain": "run",
    }


@pytest.fixture
def known_user(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user name this process is known by (set, so no machine lacks one)."""
    monkeypatch.setenv("LOGNAME", "zebulon-tester")
    local_identifiers.cache_clear()
    yield "zebulon-tester"
    local_identifiers.cache_clear()


def test_scrub_hook_masks_local_user_and_host(known_user: str) -> None:
    names = local_identifiers()
    assert known_user in names
    props: dict[str, PropertyValue] = {"where": f"built by {names[-1]} today"}
    telemetry_scrub_event(event_type="t", properties=props)
    assert names[-1] not in str(props["where"]).split()


_pieces = st.sampled_from(
    [
        "a@b.co",
        "x.y@z.example",
        "1.2.3.4",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "1:2:3:4:5:6:7:8",
        "/home/",
        "/Users/x",
        "C:\\Users\\",
        "/root",
        "sk_test_",
        "ghp_",
        "AKIA",
        "password=",
        "token:",
        "Bearer ",
        "eyJ",
        "@",
        ".",
        ":",
        "/",
        "=",
        " ",
        "-",
        "_",
        "0123456789",
        "abcdefABCDEF",
        "<user>",
        "<ip>",
    ]
)
_texty = st.lists(st.one_of(_pieces, st.text(max_size=12)), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(_texty)
def test_scrub_text_output_has_nothing_find_pii_finds(value: str) -> None:
    assert find_pii(scrub_text(value)) is None


@settings(max_examples=200, deadline=None)
@given(_texty, st.lists(st.text(alphabet="abcxyz0", min_size=3, max_size=6), max_size=3))
def test_scrub_text_with_literals_has_nothing_find_pii_finds(
    value: str, literals: list[str]
) -> None:
    out = scrub_text(value, literals)
    assert find_pii(out) is None


@settings(max_examples=200, deadline=None)
@given(_texty)
def test_scrub_text_is_idempotent_on_clean_output(value: str) -> None:
    once = scrub_text(value)
    assert scrub_text(once) == once


def test_url_credentials_are_masked_and_the_scheme_kept() -> None:
    assert scrub_text("db postgresql://app:s3cret@db/prod") == "db postgresql://<secret>@db/prod"
    assert scrub_text("redis://:p4ssw0rd@cache:6379/0") == "redis://<secret>@cache:6379/0"


def test_kinds_are_reported_in_pattern_order_wherever_they_stand() -> None:
    # The IP comes first in the text; the e-mail kind is checked first.
    assert find_pii("10.0.0.1 and a@b.io") == "email"
    assert find_pii("/home/x 10.0.0.1") == "ip"


@settings(max_examples=500, deadline=None)
@given(_texty)
def test_find_pii_agrees_with_each_pattern_on_its_own(value: str) -> None:
    """The combined, gated scan finds exactly what the per-kind patterns find."""
    expected = next((kind for kind, p in PII_PATTERNS.items() if p.search(value)), None)
    assert find_pii(value) == expected


# Inputs that made the former patterns rescan a run from each of its positions
# (the e-mail pattern took ~6 s on 40k characters). The bound is only there to
# catch catastrophic backtracking: linear scans of 100k characters take well
# under a tenth of it even on a loaded machine.
_ADVERSARIAL = [
    "a.",
    "aaaa@",
    "1.2",
    "1.",
    "x",
    "a:b@",
    "ab:",
    "a-",
    "eyJ-",
    "xoxb-",
    "sk_",
    "a://",
    "::1:",
    "/home/",
    "password",
    "-----BEGIN A",
    "bearer ",
    "a1-",
]


@pytest.mark.parametrize("unit", _ADVERSARIAL)
def test_long_adversarial_values_are_scanned_in_linear_time(unit: str) -> None:
    import time

    value = (unit * (100_000 // len(unit) + 1))[:100_000]
    start = time.perf_counter()
    find_pii(value)
    scrub_text(value, ["abc"])
    telemetry_scrub_event(event_type="t", properties={value[:1000]: value})
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize(
    "key",
    [
        "a:10.1.2.3",
        "ghp_abcdefghijklmnopqrstuvwxyz012345",
        "sk_live_abcdefghijklmnop1234",
        "contact_a@b.io",
    ],
)
def test_scrub_hook_drops_properties_whose_key_holds_personal_data(key: str) -> None:
    props: dict[str, PropertyValue] = {key: 1, "kept": "run", "n": 2}
    telemetry_scrub_event(event_type="t", properties=props)
    assert props == {"kept": "run", "n": 2}


def test_scrub_hook_drops_keys_naming_the_local_user_or_host(known_user: str) -> None:
    names = local_identifiers()
    assert known_user in names
    props: dict[str, PropertyValue] = {f"by:{names[-1]}": 1, "ok": 1}
    telemetry_scrub_event(event_type="t", properties=props)
    assert props == {"ok": 1}


def test_patterns_are_compiled_on_first_use_not_at_import() -> None:
    import subprocess
    import sys

    code = (
        "import telemetry_core.pii as p\n"
        "print(p._combined.cache_info().currsize, p._patterns.cache_info().currsize)\n"
        "p.find_pii('at 10.0.0.1')\n"
        "print(p._combined.cache_info().currsize, p._patterns.cache_info().currsize)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["0", "0", "1", "1"]


def test_local_identifiers_take_the_user_name_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "zelda-the-tester")
    local_identifiers.cache_clear()
    try:
        assert "zelda-the-tester" in local_identifiers()
    finally:
        monkeypatch.undo()
        local_identifiers.cache_clear()
