"""TURN credentials in signaling (issue 11): minted from the shared secret, announced as
`Link: <turns:...>; rel="ice-server"` on OPTIONS (before the client gathers) and on the 201 answer,
to callers who may place a call, and never the secret itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from lab.peer import auth_header, make_offer
from transceiver import turn
from transceiver.cli import main
from transceiver.service import ConfigError, TransceiverService

from .conftest import settings

pytestmark = pytest.mark.timeout(60)

KEY = "test-key-0123456789abcdef"
SECRET = b"edge-turn-test-secret-0123"
URLS = ["turns:turn.example.net:443?transport=tcp", "turn:198.51.100.7:3478?transport=udp"]
# A strict reading of one Link value: <url>; rel="ice-server"; username="..."; credential="...";
# credential-type="password" (RFC 9725 §4.4, quoted-strings without escapes).
LINK = re.compile(
    r'^<(?P<url>[^<>"\s]+)>; rel="ice-server"; username="(?P<user>[^"\\]+)"; '
    r'credential="(?P<cred>[^"\\]+)"; credential-type="password"$'
)


def test_the_password_is_hmac_sha1_of_the_username_in_base64() -> None:
    # Vector from openssl, not from this code:
    #   printf '%s' 1700000000:call-42 | openssl dgst -sha1 -hmac edge-turn-test-secret-0123 \
    #     -binary | base64
    assert turn.password(SECRET, "1700000000:call-42") == "urK0tb504TGKjOPsKwCvbITC9xo="
    servers = turn.TurnServers(URLS, SECRET, ttl=600, clock=lambda: 1_699_999_400.5)
    cred = servers.mint("call-42")
    assert cred == turn.Credential("1700000000:call-42", "urK0tb504TGKjOPsKwCvbITC9xo=", 1700000000)
    # no label (OPTIONS): a random id; a label that is no call id is not put into the username
    for label in (None, "a b", 'x"y', "z" * 65):
        user = servers.mint(label).username
        assert re.fullmatch(r"1700000000:[A-Za-z0-9_-]{16}", user), user
    assert servers.mint().username != servers.mint().username


def test_turn_urls_are_checked() -> None:
    for good in (*URLS, "turn:turn.example.net", "turns:10.0.0.1:5349"):
        assert turn.parse_url(good) == good
    for bad in ("stun:x.example", "turns:x.example?transport=udp", "turn:x.example:0",
                "turn:x.example:70000", "turn:<evil>", 'turn:x.example>; rel="x"',
                "turn:x.example?transport=sctp", "turn:", "turns:x.example:443 extra"):  # fmt: skip
        with pytest.raises(turn.TurnConfigError):
            turn.parse_url(bad)
    with pytest.raises(turn.TurnConfigError, match="at most"):
        turn.TurnServers(["turn:a.example"] * (turn.MAX_URLS + 1), SECRET)
    with pytest.raises(turn.TurnConfigError, match="lifetime"):
        turn.TurnServers(URLS, SECRET, ttl=1)


def test_the_secret_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_bytes(SECRET + b"\n")
    assert turn.read_secret(f, env={}) == SECRET
    assert turn.read_secret(None, env={turn.ENV_SECRET_FILE: str(f)}) == SECRET
    assert turn.read_secret(None, env={turn.ENV_SECRET: SECRET.decode()}) == SECRET
    with pytest.raises(turn.TurnConfigError, match="--turn-secret-file"):
        turn.read_secret(None, env={})
    with pytest.raises(turn.TurnConfigError, match="cannot read"):
        turn.read_secret(tmp_path / "missing", env={})
    f.write_bytes(b"short\n")
    with pytest.raises(turn.TurnConfigError, match=r"16\.\.") as short:
        turn.read_secret(f, env={})
    assert "short" not in str(short.value).replace("16..", "")  # the message never echoes it
    f.write_bytes(b"0123456789abcdef\n0123456789abcdef\n")
    with pytest.raises(turn.TurnConfigError, match="spans lines"):
        turn.read_secret(f, env={})


def _links(headers: object) -> list[re.Match[str]]:
    values = headers.getall("Link", [])  # type: ignore[attr-defined]
    found = [LINK.match(v) for v in values]
    assert all(found), values
    return found  # type: ignore[return-value]


def _check(links: list[re.Match[str]], *, label: str | None = None) -> None:
    assert [m["url"] for m in links] == URLS
    assert len({(m["user"], m["cred"]) for m in links}) == 1  # one credential for all URLs
    user = links[0]["user"]
    expiry, _, name = user.partition(":")
    assert abs(int(expiry) - (time.time() + 600)) < 30
    assert name == label if label else re.fullmatch(r"[A-Za-z0-9_-]{16}", name)
    want = base64.b64encode(hmac.new(SECRET, user.encode(), hashlib.sha1).digest()).decode()
    assert links[0]["cred"] == want


def _no_secret(resp: aiohttp.ClientResponse, body: bytes) -> None:
    everything = b"".join(k.encode() + v.encode() for k, v in resp.headers.items()) + body
    assert SECRET not in everything and base64.b64encode(SECRET) not in everything


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"{KEY}\n")
    return path


async def test_options_and_the_answer_announce_turn_servers(start_txr, http, keys_file) -> None:
    txr = await start_txr(
        no_auth=False, api_keys=str(keys_file), turn_urls=URLS, turn_secret=SECRET, turn_ttl=600
    )
    url = txr.http_url + "/v1/calls"
    # An API key: a fresh credential per request, not cacheable.
    async with http.options(url, headers=auth_header(KEY)) as resp:
        assert resp.status == 204 and resp.headers["Allow"] == "OPTIONS, POST"
        assert resp.headers["Cache-Control"] == "no-store"
        _no_secret(resp, await resp.read())
        first = _links(resp.headers)
    _check(first)
    async with http.options(url, headers=auth_header(KEY)) as resp:
        assert _links(resp.headers)[0]["user"] != first[0]["user"]
    # No credential (a CORS preflight never carries one): 204, nothing handed out.
    async with http.options(url) as resp:
        assert resp.status == 204 and "Link" not in resp.headers
    # A wrong one: 401, nothing handed out.
    for bad in ("wrong-key-0123456789", "et1.e30.AAAA"):
        async with http.options(url, headers=auth_header(bad)) as resp:
            assert resp.status == 401 and "Link" not in resp.headers
    # A client token: OPTIONS checks it without spending it; the POST then spends it.
    async with http.post(txr.http_url + "/v1/tokens", headers=auth_header(KEY)) as resp:
        token = (await resp.json())["value"]
    async with http.options(url, headers=auth_header(token)) as resp:
        assert resp.status == 204
        _check(_links(resp.headers))
    peer = await make_offer()
    try:
        headers = {"Content-Type": "application/sdp", **auth_header(token)}
        async with http.post(url, data=peer.offer_sdp, headers=headers) as resp:
            body = await resp.read()
            assert resp.status == 201, body
            _no_secret(resp, body)
            links = _links(resp.headers)
            call_id = resp.headers["Location"].rsplit("/", 1)[1].split(".")[0]
        _check(links, label=call_id)
        async with http.options(url, headers=auth_header(token)) as resp:
            assert resp.status == 204  # still a valid token (spent only for POST)
        async with http.post(url, data=peer.offer_sdp, headers=headers) as resp:
            assert resp.status == 401 and "Link" not in resp.headers  # spent
    finally:
        await peer.close()
    for path in ("/metrics", "/healthz"):
        async with http.get(txr.http_url + path) as resp:
            _no_secret(resp, await resp.read())


async def test_no_link_headers_without_turn(txr, http) -> None:
    url = txr.http_url + "/v1/calls"
    async with http.options(url) as resp:
        assert resp.status == 204 and "Link" not in resp.headers
    peer = await make_offer()
    try:
        headers = {"Content-Type": "application/sdp"}
        async with http.post(url, data=peer.offer_sdp, headers=headers) as resp:
            assert resp.status == 201 and "Link" not in resp.headers
    finally:
        await peer.close()


def test_the_service_and_cli_refuse_turn_without_a_usable_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--turn-secret-file"):
        TransceiverService(settings(turn_urls=URLS, turn_secret=None))
    with pytest.raises(ConfigError, match=r"16\.\."):
        TransceiverService(settings(turn_urls=URLS, turn_secret=b"short"))
    run = CliRunner(env={turn.ENV_SECRET: None, turn.ENV_SECRET_FILE: None}).invoke
    result = run(main, ["serve", "--no-auth", "--turn-url", URLS[0]])
    assert result.exit_code == 2 and "--turn-secret-file" in result.output
    result = run(main, ["serve", "--no-auth", "--turn-url", "http://x.example"])
    assert result.exit_code == 2 and "not a TURN URL" in result.output
    result = run(main, ["serve", "--no-auth", "--turn-secret", SECRET.decode()])
    assert result.exit_code == 2  # there is no option that takes the secret itself
    bad = tmp_path / "secret"
    bad.write_text("tiny-secret\n")
    result = run(
        main, ["serve", "--no-auth", "--turn-url", URLS[0], "--turn-secret-file", str(bad)]
    )
    assert result.exit_code == 2 and "16.." in result.output and "tiny-secret" not in result.output
