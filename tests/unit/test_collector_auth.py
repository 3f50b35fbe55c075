"""Unit tests of the collector's admin credentials: session cookies judged
without ever raising, refused ones counted, and cross-site posts refused."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.exceptions import StarletteDeprecationWarning

from telemetry_core.collector.app import create_app
from telemetry_core.collector.auth import AdminAuth, Session, is_ascii_digits, same_origin
from telemetry_core.collector.settings import CollectorSettings
from telemetry_core.collector.sqlite_store import SQLiteStore
from tests.conftest import COLLECTOR_NOW_MS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

ADMIN = "admin-token-123"
NOW_S = COLLECTOR_NOW_MS / 1000
#: Unicode digits that ``str.isdigit`` accepts and ``int`` refuses or misreads.
UNICODE_DIGITS = ["\xb2", "\u00b9", "\u0663", "\u2460", "\uff11"]


def _auth(now: float = NOW_S) -> AdminAuth:
    return AdminAuth(ADMIN, clock=lambda: now)


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
def test_unicode_digits_are_not_ascii_digits(digit: str) -> None:
    assert digit.isdigit() or digit.isdecimal() or digit.isnumeric()
    assert not is_ascii_digits(digit)
    assert not is_ascii_digits(f"17{digit}")
    assert is_ascii_digits("0123456789")
    assert not is_ascii_digits("")


@pytest.mark.parametrize(
    "value",
    [
        "\xb2.n.m",
        "\u0663\u0663.abc.def",
        "1\xb2.ab.cd",
        "12.ab",
        "12.ab.cd.ef",
        "1234567890123.ab.cd",
        "12.AB.cd",
        "12..cd",
        "-1.ab.cd",
        " 12.ab.cd",
        "12.ab.cd\u00e9",
        "12.\ud800.cd",
    ],
)
def test_malformed_sessions_are_forged_not_errors(value: str) -> None:
    auth = _auth()
    assert auth.session(value) is Session.FORGED
    assert not auth.check_cookie(value)
    auth.revoke(value)  # ignored, never raises


@given(st.text(max_size=120))
def test_no_cookie_text_makes_the_session_check_raise(value: str) -> None:
    assert _auth().session(value) in (Session.ABSENT, Session.FORGED)


def test_session_states_over_a_sessions_life() -> None:
    now = [NOW_S]
    auth = AdminAuth(ADMIN, clock=lambda: now[0], session_ttl_s=100)
    assert auth.session(None) is Session.ABSENT
    assert auth.session("") is Session.ABSENT
    value = auth.new_session()
    assert auth.session(value) is Session.VALID
    issued, nonce, mac = value.split(".")
    other = "1" if mac[-1] == "0" else "0"
    assert auth.session(f"{issued}.{nonce}.{mac[:-1]}{other}") is Session.FORGED
    assert auth.session(f"{int(issued) + 1}.{nonce}.{mac}") is Session.FORGED
    now[0] += 100
    assert auth.session(value) is Session.ENDED
    fresh = auth.new_session()
    auth.revoke(fresh)
    assert auth.session(fresh) is Session.ENDED
    assert AdminAuth("another-token", clock=lambda: now[0]).session(fresh) is Session.FORGED


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),
        ({"host": "127.0.0.1:8443"}, True),
        ({"host": "127.0.0.1:8443", "origin": "https://127.0.0.1:8443"}, True),
        ({"host": "127.0.0.1:8443", "sec-fetch-site": "same-origin"}, True),
        ({"host": "127.0.0.1:8443", "sec-fetch-site": "none"}, True),
        ({"host": "127.0.0.1:8443", "origin": "https://evil.example"}, False),
        ({"host": "127.0.0.1:8443", "origin": "null", "sec-fetch-site": "same-origin"}, True),
        ({"host": "127.0.0.1:8443", "origin": "null"}, True),
        ({"host": "127.0.0.1:8443", "origin": "null", "sec-fetch-site": "cross-site"}, False),
        ({"host": "127.0.0.1:8443", "sec-fetch-site": "bogus"}, False),
        ({"host": "127.0.0.1:8443", "sec-fetch-site": "cross-site"}, False),
        ({"host": "a.example.com", "sec-fetch-site": "same-site"}, False),
    ],
)
def test_same_origin_refuses_what_a_browser_marks_cross_site(
    headers: dict[str, str], allowed: bool
) -> None:
    assert same_origin(headers) is allowed


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = SQLiteStore(tmp_path / "c.db")
    app = create_app(
        CollectorSettings(api_keys=("submit-key-1",), admin_token=ADMIN),
        store,
        clock=lambda: NOW_S,
        monotonic=lambda: 1000.0,
    )
    with TestClient(app, base_url="http://127.0.0.1:8080") as c:
        yield c


def _raw_cookie(value: bytes) -> dict[str, bytes]:
    return {"cookie": b"telemetry_admin=" + value}


@pytest.mark.parametrize("path", ["/", "/logout"])
def test_a_superscript_digit_session_is_401_and_counted(
    client: TestClient, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``\\xb2.n.m`` (``'²'.isdigit()`` is true) answered 500 with a traceback."""
    caplog.set_level(logging.WARNING, "telemetry_core.collector")
    send = client.get if path == "/" else client.post
    response = send(path, headers=_raw_cookie(b"\xb2.n.m"), follow_redirects=False)
    assert response.status_code == 401
    assert "<form" in response.text
    refused = [r.getMessage() for r in caplog.records if "via=cookie" in r.getMessage()]
    assert refused == [f"admin auth refused path={path} via=cookie client=testclient"]


def test_forged_sessions_are_throttled_like_wrong_tokens(client: TestClient) -> None:
    statuses = [client.get("/", headers=_raw_cookie(b"1.ab.cd")).status_code for _ in range(11)]
    assert statuses == [401] * 10 + [429]
    # The right token is throttled too, as for a wrong Bearer token.
    assert client.post("/login", data={"token": ADMIN}).status_code == 429


def test_logout_ends_the_session_and_it_is_refused_after(client: TestClient) -> None:
    login = client.post("/login", data={"token": ADMIN}, follow_redirects=False)
    cookie = login.cookies["telemetry_admin"]
    client.cookies.clear()
    headers = {"cookie": f"telemetry_admin={cookie}"}
    assert client.get("/", headers=headers).status_code == 200
    out = client.post(
        "/logout",
        headers={**headers, "origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"},
        follow_redirects=False,
    )
    assert out.status_code == 303 and out.headers["location"] == "/"
    assert 'telemetry_admin=""' in out.headers["set-cookie"]
    assert client.get("/", headers=headers).status_code == 401


def test_cross_site_logout_and_login_are_refused(client: TestClient) -> None:
    login = client.post("/login", data={"token": ADMIN}, follow_redirects=False)
    cookie = login.cookies["telemetry_admin"]
    client.cookies.clear()
    headers = {"cookie": f"telemetry_admin={cookie}"}
    hostile = {"origin": "https://evil.example"}
    out = client.post("/logout", headers={**headers, **hostile}, follow_redirects=False)
    assert out.status_code == 403 and out.json()["error"]["code"] == "cross_site"
    assert client.get("/", headers=headers).status_code == 200  # not signed out
    planted = client.post("/login", data={"token": ADMIN}, headers=hostile)
    assert planted.status_code == 403 and "set-cookie" not in planted.headers
