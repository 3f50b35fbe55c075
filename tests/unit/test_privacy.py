"""Tests of the personal-data detectors, the scrubber and its hook."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry_core.privacy import (
    REDACTED,
    find_pii,
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
    assert privacy.scrub_text("x", ["y"]) == REDACTED


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


def test_scrub_hook_masks_local_user_and_host() -> None:
    names = local_identifiers()
    if not names:
        pytest.skip("no user or host name of 3+ characters here")
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
