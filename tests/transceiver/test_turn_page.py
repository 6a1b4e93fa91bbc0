"""The demo page reads the ICE servers `OPTIONS /v1/calls` announces (issue 11): the Link headers
of a real `transceiver serve --turn-url ...` become RTCPeerConnection's iceServers, and its Link
parser keeps what it must from hostile or unusual header values."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterator

import pytest

from bench.calls import Running, transceiver_server
from lab.browsercall import ARGS as CHROMIUM_ARGS
from lab.browsercall import CHROMIUM, mint_token
from transceiver import turn

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

SECRET = "page-test-turn-secret-0123456789"
URLS = ["turns:turn.example.net:443?transport=tcp", "turn:198.51.100.7:3478?transport=udp"]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """`transceiver serve` with two TURN URLs, the secret in its environment (never argv)."""
    monkeypatch.setenv(turn.ENV_SECRET, SECRET)
    monkeypatch.delenv(turn.ENV_SECRET_FILE, raising=False)
    base = transceiver_server("echo", 2)
    argv = [*base.argv, *(f"--turn-url={u}" for u in URLS)]
    running = Running(dataclasses.replace(base, argv=argv))
    with running as (_pid, url):
        assert running.api_key is not None
        yield url, running.api_key


@pytest.fixture
def page(served: tuple[str, str]) -> Iterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    url, _ = served
    with tempfile.TemporaryDirectory(prefix="edge-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = ctx.new_page()
            page.goto(f"{url}/")
            yield page
        finally:
            ctx.close()


def test_the_page_takes_its_ice_servers_from_options(served, page) -> None:
    url, key = served
    token = mint_token(url, key)
    servers = page.evaluate("(t) => fetchIceServers(t)", token)
    assert [s["urls"] for s in servers] == URLS
    assert len({(s["username"], s["credential"]) for s in servers}) == 1
    user, cred = servers[0]["username"], servers[0]["credential"]
    mac = hmac.new(SECRET.encode(), user.encode(), hashlib.sha1).digest()
    assert cred == base64.b64encode(mac).decode()
    # Without a credential OPTIONS hands out nothing, and the page gathers with no ICE servers.
    assert page.evaluate("fetchIceServers(null)") == []
    # ...as with a server that has no OPTIONS at all (a 404/405 is "none", not an error).
    assert page.evaluate("(t) => fetchIceServers(t)", "wrong-key-0123456789") == []


def test_the_link_parser_keeps_ice_servers_and_only_them(page) -> None:
    cases = {
        # two links in one header value, as fetch() joins repeated headers
        '<turns:a.example:443?transport=tcp>; rel="ice-server"; username="1:x"; '
        'credential="p,q;r="; credential-type="password", <stun:b.example>; rel="ice-server"': [
            {"url": "turns:a.example:443?transport=tcp", "user": "1:x", "cred": "p,q;r="},
            {"url": "stun:b.example", "user": None, "cred": None},
        ],
        # other relations are not ICE servers; a token rel and an escaped quote
        '<https://x.example/>; rel="preconnect", <turn:c.example>; rel=ice-server; '
        'username="a\\"b"; credential=tok': [
            {"url": "turn:c.example", "user": 'a"b', "cred": "tok"},
        ],
        '<turn:d.example>; REL="ice-server other"': [
            {"url": "turn:d.example", "user": None, "cred": None},
        ],
        "": [],
        "garbage without brackets": [],
        "<unterminated": [],
    }
    for header, want in cases.items():
        got = page.evaluate(
            """(h) => parseLinks(h)
                .filter((l) => (l.params.rel || "").split(/\\s+/).includes("ice-server"))
                .map((l) => ({url: l.url, user: l.params.username ?? null,
                              cred: l.params.credential ?? null}))""",
            header,
        )
        assert got == want, header
