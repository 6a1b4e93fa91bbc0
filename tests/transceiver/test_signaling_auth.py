"""Signaling needs a credential (issue 8): API keys from a file, single-use client tokens any
transceiver of the cluster verifies, the call's resource URL as the only handle on a call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from lab.peer import CallRefused, auth_header, call, client_token, make_offer
from lab.redis_server import RedisServer
from transceiver.auth import (
    AuthConfigError,
    Authenticator,
    Unauthorized,
    read_key_file,
    write_key_file,
)
from transceiver.cli import main
from transceiver.service import ConfigError, TransceiverService

from .conftest import settings

pytestmark = pytest.mark.timeout(60)

KEY = "test-key-0123456789abcdef"
OTHER = "another-key-0123456789abcdef"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"# the application server's keys\n\n{KEY}\n  {OTHER}  \n")
    return path


@pytest.fixture
async def authed(start_txr, keys_file: Path) -> TransceiverService:
    return await start_txr(no_auth=False, api_keys=str(keys_file))


async def post_offer(http: aiohttp.ClientSession, url: str, headers: dict[str, str]):
    peer = await make_offer()
    try:
        sent = {"Content-Type": "application/sdp", **headers}
        async with http.post(url + "/v1/calls", data=peer.offer_sdp, headers=sent) as resp:
            return resp.status, resp.headers, await resp.text()
    finally:
        await peer.close()


async def test_post_without_or_with_a_bad_credential_is_401(authed, http) -> None:
    for headers in ({}, auth_header("wrong-key-0123456789"), {"Authorization": "Basic eDp5"},
                    {"Authorization": "Bearer"}, auth_header("et1.e30.AAAA")):  # fmt: skip
        status, hdrs, body = await post_offer(http, authed.http_url, headers)
        assert status == 401, (headers, body)
        assert hdrs["WWW-Authenticate"].startswith('Bearer realm="webrtc-edge"')
    assert authed.manager.active == 0
    text = await (await http.get(authed.http_url + "/metrics")).text()
    assert 'txr_http_refused_total{reason="auth_missing"} 3.0' in text
    assert 'txr_http_refused_total{reason="auth_bad_key"} 1.0' in text
    assert 'txr_http_refused_total{reason="auth_bad_token"} 1.0' in text


async def test_an_api_key_places_a_real_call(authed, http) -> None:
    for key in (KEY, OTHER):
        client = await call(http, authed.http_url, want_frames=10, token=key)
        try:
            await client.wait_state("connected")
            await asyncio.wait_for(client.got_frames.wait(), 15)  # the echo comes back
        finally:
            assert await client.hang_up(http) == 204


async def test_a_client_token_places_one_call_only(authed, http) -> None:
    async with http.post(authed.http_url + "/v1/tokens", headers=auth_header(KEY)) as resp:
        assert resp.status == 201
        doc = await resp.json()
    assert set(doc) == {"value", "expires_at"} and doc["value"].startswith("et1.")
    client = await call(http, authed.http_url, want_frames=10, token=doc["value"])
    try:
        await client.wait_state("connected")
        with pytest.raises(CallRefused) as refused:
            await call(http, authed.http_url, token=doc["value"])  # the same token again
        assert refused.value.status == 401 and "already used" in refused.value.body
    finally:
        await client.hang_up(http)


async def test_tokens_are_minted_only_with_an_api_key(authed, http) -> None:
    url = authed.http_url + "/v1/tokens"
    token = await client_token(http, authed.http_url, KEY)
    for headers in ({}, auth_header(token), auth_header("nope-nope-nope-nope")):
        async with http.post(url, headers=headers) as resp:
            assert resp.status == 401 and "WWW-Authenticate" in resp.headers
    for body in ("[", '{"ttl": "x"}', '{"ttl": -1}', '{"ttl": true}'):
        async with http.post(url, data=body, headers=auth_header(KEY)) as resp:
            assert resp.status == 400, body
    async with http.post(url, data='{"ttl": 5}', headers=auth_header(KEY)) as resp:
        doc = await resp.json()
        assert resp.status == 201
    async with http.post(url, data="{}", headers=auth_header(KEY)) as resp:
        longer = await resp.json()
    assert doc["expires_at"] < longer["expires_at"]  # a shorter life was granted


async def test_a_token_minted_by_one_transceiver_is_good_once_in_the_whole_cluster(
    start_txr, keys_file: Path, redis_url: str, http: aiohttp.ClientSession
) -> None:
    a, b = [
        await start_txr(no_auth=False, api_keys=str(keys_file), redis_url=redis_url, txr_id=i)
        for i in (1, 2)
    ]
    token = await client_token(http, a.http_url, KEY)
    client = await call(http, b.http_url, want_frames=10, token=token)  # verified by b
    try:
        await client.wait_state("connected")
        for txr in (a, b):
            with pytest.raises(CallRefused) as refused:
                await call(http, txr.http_url, token=token)
            assert refused.value.status == 401 and "already used" in refused.value.body
    finally:
        await client.hang_up(http)


async def test_with_redis_down_a_token_still_places_one_call_per_transceiver(
    start_txr, keys_file: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The edge takes calls without Redis (as it routes and carries media without it): single
    use falls back to the transceiver's memory while Redis cannot be asked."""
    with RedisServer(workdir=tmp_path) as redis_server:
        txr = await start_txr(no_auth=False, api_keys=str(keys_file), redis_url=redis_server.url)
        redis_server.stop()
        token = await client_token(http, txr.http_url, KEY)
        client = await call(http, txr.http_url, want_frames=10, token=token)
        try:
            await client.wait_state("connected")
            with pytest.raises(CallRefused) as refused:
                await call(http, txr.http_url, token=token)
            assert refused.value.status == 401 and "already used" in refused.value.body
        finally:
            await client.hang_up(http)
    assert txr._spent is not None and txr._spent.fallbacks >= 1


async def test_only_the_holder_of_the_resource_url_ends_a_call(authed, http) -> None:
    client = await call(http, authed.http_url, token=KEY)
    try:
        location = client.location or ""
        call_id, _, secret = location.rpartition("/")[2].partition(".")
        assert call_id in authed.manager.sessions and len(secret) >= 20
        bare = f"{authed.http_url}/v1/calls/{call_id}"
        forged = bare + "." + ("A" * len(secret))
        for method in ("DELETE", "PATCH"):
            for url in (bare, forged):
                async with http.request(method, url) as resp:
                    assert resp.status == 401, (method, url)
                    assert "WWW-Authenticate" in resp.headers
        async with http.patch(authed.http_url + location) as resp:
            assert resp.status == 415  # the holder: allowed, but a PATCH body is an sdpfrag
        assert call_id in authed.manager.sessions
        async with http.delete(authed.http_url + location) as resp:
            assert resp.status == 204
        assert call_id not in authed.manager.sessions
        async with http.delete(authed.http_url + location) as resp:
            assert resp.status == 404
    finally:
        await client.close()


async def test_an_api_key_may_end_any_call_by_id(authed, http) -> None:
    client = await call(http, authed.http_url, token=KEY)
    try:
        call_id = (client.location or "").rpartition("/")[2].partition(".")[0]
        url = f"{authed.http_url}/v1/calls/{call_id}"
        async with http.delete(url, headers=auth_header("wrong-wrong-wrong-wrong")) as resp:
            assert resp.status == 401
        async with http.delete(url, headers=auth_header(OTHER)) as resp:
            assert resp.status == 204
    finally:
        await client.close()


def test_tokens_expire_and_do_not_survive_tampering_or_key_removal() -> None:
    now = [1_000_000.0]
    auth = Authenticator([KEY, OTHER], token_ttl=30, clock=lambda: now[0])
    kid = auth.api_key(KEY).kid
    token, exp = auth.mint(kid=kid)
    assert exp == now[0] + 30
    body, mac = token[4:].split(".")
    payload = json.loads(__import__("base64").urlsafe_b64decode(body + "=="))
    payload["exp"] += 3600
    raw = json.dumps(payload, separators=(",", ":")).encode()
    longer = "et1." + __import__("base64").urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac
    for bad in (longer, token[:-2] + "AA", token + "x", "et1." + "A" * 600):
        with pytest.raises(Unauthorized, match="invalid"):
            auth._token(bad)
    assert auth._token(token)[0] == kid
    now[0] += 31
    with pytest.raises(Unauthorized, match="expired"):
        auth._token(token)
    now[0] -= 31
    without = Authenticator([OTHER], clock=lambda: now[0])  # the minting key was removed
    with pytest.raises(Unauthorized, match="invalid"):
        without._token(token)


def test_key_files(tmp_path: Path) -> None:
    assert read_key_file(_w(tmp_path, f"#x\n{KEY}\n")) == [KEY]
    for bad in (
        "",
        "# only a comment\n",
        "short\n",
        "has a space in it 0123\n",
        "et1.abcdefghijklmnop\n",
    ):
        with pytest.raises(AuthConfigError) as err:
            read_key_file(_w(tmp_path, bad))
        assert "has a space" not in str(err.value)  # never echo a line that may be a key
    with pytest.raises(AuthConfigError, match="cannot read"):
        read_key_file(tmp_path / "missing")
    fresh = tmp_path / "fresh"
    key = write_key_file(fresh)
    assert read_key_file(fresh) == [key] and fresh.stat().st_mode & 0o077 == 0
    assert write_key_file(fresh) == key


def _w(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"keys-{abs(hash(text))}"
    path.write_text(text)
    return path


def test_the_service_refuses_to_start_without_keys_or_no_auth() -> None:
    with pytest.raises(ConfigError, match="--api-keys"):
        TransceiverService(settings(no_auth=False))
    with pytest.raises(ConfigError, match="exclude"):
        TransceiverService(settings(no_auth=True, api_keys="/dev/null"))


def test_the_cli_takes_keys_from_a_file_or_the_environment_never_an_argument(
    keys_file: Path,
) -> None:
    result = CliRunner().invoke(main, ["serve", "--udp=127.0.0.1:0", "--listen=127.0.0.1:1"])
    assert result.exit_code != 0 and "--api-keys" in result.output
    result = CliRunner().invoke(main, ["serve", "--api-key", KEY])
    assert result.exit_code != 0
    bad = keys_file.with_name("bad")
    bad.write_text("short\n")
    result = CliRunner(env={"TXR_API_KEYS_FILE": str(bad)}).invoke(main, ["serve"])
    assert result.exit_code != 0 and "printable characters" in result.output
    assert "short" not in result.output


async def test_no_auth_is_loud(start_txr, http, caplog: pytest.LogCaptureFixture) -> None:
    txr = await start_txr()  # conftest: no_auth=True
    assert any("--no-auth" in r.message and r.levelname == "WARNING" for r in caplog.records)
    async with http.post(txr.http_url + "/v1/tokens") as resp:
        assert resp.status == 404  # no keys, so no tokens
