"""The client's address behind trusted proxies (transceiver/clientaddr.py, --trusted-proxy):
the parsing function alone (with hypothesis), then real parts: a real transceiver (POST budget
on), the front's app on a real socket, clients on distinct loopback addresses (127.0.0.2, .3),
the front on 127.0.0.1. Two clients behind a trusted front get their own budgets; a forged
X-Forwarded-For (straight to the transceiver, or through a front that does not trust the client)
is keyed on the sender's real address; malformed headers never get a 5xx."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from transceiver.clientaddr import (
    MAX_HOPS,
    client_address,
    forward_chain,
    networks,
    parse_entry,
)
from transceiver.front import FleetView, FrontMetrics, Locator, make_front_app
from transceiver.service import TransceiverService
from wire import registry
from wire.registry import ClusterRecord

FRONT = "127.0.0.1"  # the front's address (and its source address toward the transceiver)
ALICE, BOB = "127.0.0.2", "127.0.0.3"  # two clients
CDN = "127.0.0.4"  # a load balancer in front of the front
TRUST_FRONT = networks([FRONT])
US = ClusterRecord(1, "us-east", 40.7, -74.0)
BURST = 2


# --- the function ---------------------------------------------------------------------------

P = networks(["10.0.0.0/8", "2001:db8::/32"])


def test_an_untrusted_peers_header_is_ignored() -> None:
    assert client_address("192.0.2.1", ["198.51.100.9"], P) == ("192.0.2.1", False)
    assert client_address("192.0.2.1", ["198.51.100.9"], ()) == ("192.0.2.1", False)
    assert client_address("192.0.2.1", ["garbage"], P) == ("192.0.2.1", False)  # not counted
    assert client_address(None, ["198.51.100.9"], P) == ("?", False)


def test_a_trusted_peers_header_is_walked_from_the_right() -> None:
    assert client_address("10.1.1.1", ["198.51.100.9"], P) == ("198.51.100.9", False)
    # the client's own (forged) entry left of its real address is never reached
    assert client_address("10.1.1.1", ["6.6.6.6, 198.51.100.9, 10.2.2.2"], P).address == (
        "198.51.100.9"
    )
    # several header lines are one list, in order
    assert client_address("10.1.1.1", ["6.6.6.6", "198.51.100.9"], P).address == "198.51.100.9"
    assert client_address("10.1.1.1", [], P) == ("10.1.1.1", False)  # the proxy's own request
    assert client_address("10.1.1.1", ["10.3.3.3, 10.2.2.2"], P) == ("10.3.3.3", False)
    assert client_address("10.1.1.1", ["2001:db8::1, 2001:db9::5"], P).address == "2001:db9::5"
    assert client_address("10.1.1.1", ["[2001:db9::5]:443"], P).address == "2001:db9::5"
    assert client_address("10.1.1.1", ["192.0.2.7:5000"], P).address == "192.0.2.7"
    assert client_address("::ffff:10.1.1.1", ["::ffff:192.0.2.7"], P).address == "192.0.2.7"


@pytest.mark.parametrize(
    "header",
    [
        "",
        " ",
        "garbage",
        "192.0.2.1, garbage",
        "192.0.2.1,",
        "1.2.3.4.5",
        "256.1.1.1",
        "fe80::1%eth0",
        "[1.2.3.4]",
        "[::1",
        "[::1]x",
        "1.2.3.4:port",
        "unknown",
        "1" * 10000,
        ", ".join(["10.0.0.1"] * (MAX_HOPS + 1)),
    ],
)
def test_a_malformed_header_from_a_trusted_peer_keys_on_the_peer(header: str) -> None:
    assert client_address("10.1.1.1", [header], P) == ("10.1.1.1", True)


def test_a_long_chain_is_fine_if_the_client_is_near_the_right() -> None:
    header = ", ".join(["garbage"] * 100 + ["192.0.2.5", "10.0.0.1"])
    assert client_address("10.1.1.1", [header], P) == ("192.0.2.5", False)


@given(st.lists(st.text(max_size=80), max_size=5), st.sampled_from(["10.1.1.1", "192.0.2.1"]))
def test_any_header_gives_the_peer_or_an_address_it_holds(headers: list[str], peer: str) -> None:
    got = client_address(peer, headers, P)
    if got.address != peer:
        assert not got.malformed
        ip = ipaddress.ip_address(got.address)  # always a real address, one the header held
        assert any(parse_entry(e) == ip for e in ",".join(headers).split(","))
        assert peer == "10.1.1.1"  # only a trusted peer's header is ever read


@given(
    st.lists(st.ip_addresses(), max_size=MAX_HOPS - 1),
    st.ip_addresses(),
)
def test_the_rightmost_untrusted_entry_is_the_client(
    proxies: list[Any], client: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    """A chain [client, proxies...] where the proxies are all trusted: the client, unless it is
    a trusted proxy itself (then the leftmost)."""
    trusted = networks([str(p) for p in proxies] + ["10.1.1.1"])
    got = client_address("10.1.1.1", [", ".join(str(a) for a in [client, *proxies])], trusted)
    assert not got.malformed
    want = client.ipv4_mapped if getattr(client, "ipv4_mapped", None) else client
    assert ipaddress.ip_address(got.address) == want


@given(st.text(max_size=100))
def test_parse_entry_never_raises(s: str) -> None:
    ip = parse_entry(s)
    assert ip is None or isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)


def test_the_front_appends_its_peer_to_a_trusted_chain_only() -> None:
    cdn = networks([CDN])
    assert forward_chain(ALICE, ["6.6.6.6"], cdn) == ALICE  # a client's own: dropped
    assert forward_chain(ALICE, [], ()) == ALICE
    assert forward_chain(CDN, ["198.51.100.7"], cdn) == f"198.51.100.7, {CDN}"
    assert forward_chain(CDN, [], cdn) == CDN
    assert forward_chain(None, ["6.6.6.6"], cdn) == ""
    long = forward_chain(CDN, [", ".join(["192.0.2.1"] * 100), "x" * 5000], cdn)
    assert long.count(",") == MAX_HOPS - 1 and len(long) < 1000


def test_networks_names_a_bad_cidr() -> None:
    assert networks(["10.0.0.1", "10.0.0.0/8", "::1"])[0].num_addresses == 1
    with pytest.raises(ValueError, match="nope"):
        networks(["nope"])


# --- real parts -----------------------------------------------------------------------------


class Chain:
    """A transceiver with a POST budget (BURST at once, then 1 a minute) behind a front."""

    def __init__(self, txr: TransceiverService, front_url: str) -> None:
        self.txr, self.front_url = txr, front_url

    def count(self, name: str, **labels: str) -> float:
        value = self.txr.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0


@pytest.fixture
async def chain(redis_url: str, start_txr: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    views: list[FleetView] = []

    async def start(
        txr_trusts: tuple = TRUST_FRONT, front_trusts: tuple = (), post_rate: float = 1 / 60
    ) -> Chain:
        r = redis.Redis.from_url(redis_url)
        registry.put_cluster(r, US)
        r.close()
        txr = await start_txr(
            cluster=1,
            txr_id=7,
            redis_url=redis_url,
            registry_refresh=0.2,
            post_rate=post_rate,
            post_burst=BURST,
            trusted_proxies=list(txr_trusts),
        )
        txr.settings.advertise_http = txr.http_url
        view = FleetView(redis_url)
        views.append(view)
        app = make_front_app(
            view, Locator(view, "X-Edge-Location", "us-east"), FrontMetrics(), front_trusts
        )
        runner = web.AppRunner(app)
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, FRONT, 0).start()
        url = f"http://{FRONT}:{runner.addresses[0][1]}"
        while view.transceiver(1, 7) is None:
            await asyncio.sleep(0.05)
        return Chain(txr, url)

    yield start
    for runner in runners:
        await runner.cleanup()
    for view in views:
        view.close()


def client(source: str) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from `source` (a loopback address)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(source, 0), force_close=True),
        timeout=aiohttp.ClientTimeout(total=20),
    )


async def _post(http: aiohttp.ClientSession, url: str, xff: str | None = None) -> int:
    """A POST with a wrong Content-Type: it spends a budget token (checked first), then 415;
    beyond the budget the transceiver says 429, which the front passes back as it is (the
    client's own budget is not spent again on another transceiver)."""
    headers = {"Content-Type": "text/plain"}
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    async with http.post(url + "/v1/calls", data="x", headers=headers) as resp:
        return resp.status


LIMITED = {429}


async def test_two_clients_behind_a_trusted_front_get_their_own_budgets(chain) -> None:
    c = await chain()
    async with client(ALICE) as alice, client(BOB) as bob:
        assert [await _post(alice, c.front_url) for _ in range(BURST)] == [415] * BURST
        assert await _post(alice, c.front_url) in LIMITED
        assert c.count("txr_http_refused_total", reason="rate_limited") == 1
        # Bob's budget is his own: before this change every client behind the front shared one
        assert [await _post(bob, c.front_url) for _ in range(BURST)] == [415] * BURST
        assert await _post(bob, c.front_url) in LIMITED
    assert c.count("txr_http_bad_forwarded_for_total") == 0


async def test_a_forged_header_straight_to_the_transceiver_is_ignored(chain) -> None:
    c = await chain()
    async with client(ALICE) as alice:
        # a new "address" each time: were the header believed, the budget would never run out
        got = [await _post(alice, c.txr.http_url, f"198.51.100.{n}") for n in range(BURST + 2)]
        assert got == [415] * BURST + [429, 429]
        # and her real address is what is spent: through the front she is limited too
        assert await _post(alice, c.front_url) in LIMITED
    async with client(BOB) as bob:
        assert await _post(bob, c.front_url) == 415


async def test_a_forged_header_through_an_untrusting_front_is_replaced(chain) -> None:
    c = await chain()
    async with client(ALICE) as alice:
        got = [await _post(alice, c.front_url, f"198.51.100.{n}") for n in range(BURST + 2)]
        assert got[:BURST] == [415] * BURST and set(got[BURST:]) <= LIMITED
        # forging Bob's address does not spend Bob's budget either
        async with client(BOB) as bob:
            assert await _post(alice, c.front_url, BOB) in LIMITED
            assert await _post(bob, c.front_url) == 415


async def test_a_trusted_cdns_chain_is_kept_by_the_front(chain) -> None:
    """CDN -> front -> transceiver: the front trusts the CDN and appends it; the transceiver
    trusts both, so the client the CDN names gets the budget."""
    c = await chain(txr_trusts=networks([FRONT, CDN]), front_trusts=networks([CDN]))
    async with client(CDN) as cdn:
        for who in ("198.51.100.1", "198.51.100.2"):
            got = [await _post(cdn, c.front_url, f"6.6.6.6, {who}") for _ in range(BURST + 1)]
            assert got[:BURST] == [415] * BURST and got[BURST] in LIMITED, who
        # a request the CDN makes itself (no header): its own budget
        assert await _post(cdn, c.front_url) == 415


MALFORMED = [
    "garbage",
    "",
    "::1",
    "[2001:db8::1]:443",
    "2001:db8::1, fe80::1%eth0",
    ", ".join(["10.0.0.1"] * 100),
    ", ".join([FRONT] * 100),
    "1" * 7000,
    "1" * 10000,  # beyond aiohttp's 8190-byte header field: its 400
    "1.2.3.4\t, x",
    "1.2.3.4,,,,",
]


@pytest.mark.parametrize("front_trusts_the_client", [False, True])
async def test_malformed_headers_never_get_a_5xx(chain, front_trusts_the_client) -> None:
    front_trusts = networks([ALICE]) if front_trusts_the_client else ()
    # no budget (post_rate 0): the header is still read, and only the answers matter here
    c = await chain(txr_trusts=networks([FRONT, ALICE]), front_trusts=front_trusts, post_rate=0)
    async with client(ALICE) as alice:
        for header in MALFORMED:
            # straight from a trusted peer, and through the front
            for url in (c.txr.http_url, c.front_url):
                status = await _post(alice, url, header)
                want = 400 if len(header) > 8190 else 415
                assert status == want, (url, header[:40], status)
        async with alice.get(c.txr.http_url + "/healthz") as resp:
            assert resp.status == 200
    assert c.count("txr_http_bad_forwarded_for_total") >= 1
