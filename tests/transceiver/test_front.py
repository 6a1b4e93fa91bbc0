"""The fleet's signaling front (transceiver/front.py): real transceivers in two clusters that
register in a real redis-server with their signaling URLs, cluster records with locations, the
front's app on a real socket, aiortc clients. A call goes to the nearest cluster that can take it
and talks; a full, draining or dead one passes it on; PATCH (ICE restart) and DELETE follow the
call; forged call URLs and bad location headers get a 404 or the default, never a 5xx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from lab.peer import ClientPeer
from transceiver.front import FleetView, FrontMetrics, Locator, make_front_app
from transceiver.service import TransceiverService
from wire import registry
from wire.registry import ClusterRecord, TransceiverRecord

US = ClusterRecord(1, "us-east", 40.7, -74.0)
EU = ClusterRecord(2, "eu-west", 50.1, 8.7)
PARIS, BOSTON = "48.86,2.35", "42.36,-71.06"
NEW_HOST = "127.0.0.2"  # an ICE restart's "new network"


class Front:
    def __init__(self, view: FleetView, url: str, metrics: FrontMetrics) -> None:
        self.view, self.url, self.metrics = view, url, metrics

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels or None) or 0.0

    async def wait_view(self, pred: Callable[[FleetView], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not pred(self.view):
            assert time.monotonic() < deadline, f"the front's view: {what}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def fleet(
    redis_url: str, start_txr: Callable[..., Any]
) -> AsyncIterator[tuple[Front, dict[int, TransceiverService]]]:
    r = redis.Redis.from_url(redis_url)
    for rec in (US, EU):
        registry.put_cluster(r, rec)
    txrs = {}
    for cluster in (1, 2):
        txr = await start_txr(
            cluster=cluster, txr_id=7, redis_url=redis_url, registry_refresh=0.2, capacity=2
        )
        txr.settings.advertise_http = txr.http_url  # bound on port 0: known once started
        txrs[cluster] = txr
    view = FleetView(redis_url)
    metrics = FrontMetrics()
    app = make_front_app(view, Locator(view, "X-Edge-Location", "us-east"), metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    front = Front(view, f"http://127.0.0.1:{port}", metrics)
    await front.wait_view(
        lambda v: all(v.transceiver(c, 7) is not None for c in (1, 2)), "both transceivers"
    )
    try:
        yield front, txrs
    finally:
        await runner.cleanup()
        view.close()
        r.close()


async def _call(http: aiohttp.ClientSession, front: Front, where: str) -> tuple[ClientPeer, dict]:
    peer = ClientPeer(audio="opus", decode=False)
    await peer.start(http, front.url, headers={"X-Edge-Location": where})
    return peer, {}


async def _echo(peer: ClientPeer, n: int = 25) -> None:
    deadline = time.monotonic() + 10
    start = peer.rtp_in
    while peer.rtp_in < start + n:
        assert time.monotonic() < deadline, "no echo"
        await asyncio.sleep(0.02)


async def test_a_call_goes_to_the_nearest_cluster_talks_restarts_and_ends(
    fleet: tuple[Front, dict[int, TransceiverService]], http: aiohttp.ClientSession
) -> None:
    front, txrs = fleet
    peer, _ = await _call(http, front, PARIS)
    try:
        assert peer.location is not None and peer.location.startswith("/v1/calls/2/7/")
        assert len(txrs[2].manager.sessions) == 1 and not txrs[1].manager.sessions
        await _echo(peer)
        assert front.count("front_calls_placed_total", cluster="2") == 1
        # ICE restart by PATCH on the front's URL: the same call on the same transceiver
        (session,) = txrs[2].manager.sessions.values()
        await peer.restart_ice(http, NEW_HOST)
        await _echo(peer)
        assert session.ice_restarts == 1 and list(txrs[2].manager.sessions.values()) == [session]
        status = await peer.hang_up(http)
        assert status == 204  # the transceiver's answer, through the front
        deadline = time.monotonic() + 5
        while txrs[2].manager.sessions:
            assert time.monotonic() < deadline, "the call to end"
            await asyncio.sleep(0.02)
    finally:
        await peer.close()
    # a region name works as a location too
    peer, _ = await _call(http, front, "us-east")
    try:
        assert peer.location is not None and peer.location.startswith("/v1/calls/1/7/")
    finally:
        await peer.hang_up(http)


async def test_full_draining_and_dead_clusters_pass_the_call_on(
    fleet: tuple[Front, dict[int, TransceiverService]],
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    front, txrs = fleet
    peers = []
    try:
        # EU full (capacity 2): Paris overflows to the next nearest, US
        for _ in range(2):
            peers.append((await _call(http, front, PARIS))[0])
        assert len(txrs[2].manager.sessions) == 2
        peers.append((await _call(http, front, PARIS))[0])
        assert peers[-1].location is not None and peers[-1].location.startswith("/v1/calls/1/")
        for p in peers:
            await p.hang_up(http)
        peers.clear()
        # EU draining: no new call there, though it has room
        r = redis.Redis.from_url(redis_url)
        registry.put_cluster(r, ClusterRecord(2, "eu-west", 50.1, 8.7, draining=True))
        await front.wait_view(lambda v: v.clusters[2].record.draining, "EU draining")
        peers.append((await _call(http, front, PARIS))[0])
        assert peers[-1].location is not None and peers[-1].location.startswith("/v1/calls/1/")
        await peers.pop().hang_up(http)
        registry.put_cluster(r, EU)
        # a dead transceiver in EU, registered with more room than the live one: tried
        # first, it fails, the call goes to the live one in the same cluster
        dead = TransceiverRecord(2, 9, "127.0.0.1:9", capacity=50, http="http://127.0.0.1:9")
        registry.register(r, dead, ttl=60)
        await front.wait_view(lambda v: v.transceiver(2, 9) is not None, "the dead one")
        peers.append((await _call(http, front, PARIS))[0])
        assert peers[-1].location is not None and peers[-1].location.startswith("/v1/calls/2/7/")
        assert front.count("front_backend_errors_total") >= 1
        assert front.count("front_overflows_total") >= 1
        r.close()
    finally:
        for p in peers:
            await p.hang_up(http)


async def test_forged_urls_bad_locations_and_no_room(
    fleet: tuple[Front, dict[int, TransceiverService]],
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    front, txrs = fleet
    for path in (
        "/v1/calls/2/999/abc",  # no such transceiver
        "/v1/calls/x/7/abc",
        "/v1/calls/70000/7/abc",
        "/v1/calls/2/7/a%20b",
        "/v1/calls/2/7/" + "a" * 300,
    ):
        async with http.delete(front.url + path) as resp:
            assert resp.status == 404, path
    async with http.delete(front.url + "/v1/calls/2/7/nosuchcall.secret") as resp:
        assert 400 <= resp.status < 500  # the transceiver's own refusal, passed on
    # an unusable location header: the default region (us-east), counted
    for bad in ("nowhere", "91,0", "nan,nan", "1,2,3", "x" * 100):
        peer = ClientPeer(audio="opus", decode=False)
        try:
            await peer.post(http, front.url, {"X-Edge-Location": bad}, None)
            assert peer.location is not None and peer.location.startswith("/v1/calls/1/"), bad
        finally:
            await peer.hang_up(http)
    assert front.count("front_bad_location_total") == 5
    # no cluster with room: 503 and Retry-After, never a call placed
    r = redis.Redis.from_url(redis_url)
    for rec in (US, EU):
        registry.put_cluster(r, ClusterRecord(rec.id, rec.region, rec.lat, rec.lon, draining=True))
    r.close()
    await front.wait_view(lambda v: all(c.record.draining for c in v.clusters.values()), "drain")
    async with http.post(
        front.url + "/v1/calls", data="v=0\r\n", headers={"Content-Type": "application/sdp"}
    ) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"]
    assert not txrs[1].manager.sessions and not txrs[2].manager.sessions
    async with http.get(front.url + "/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["clusters"] == 2


async def test_an_offer_that_arrives_in_pieces_reaches_the_transceiver_whole(
    fleet: tuple[Front, dict[int, TransceiverService]], http: aiohttp.ClientSession
) -> None:
    """The front forwards the whole body, not what had arrived when it first looked (a chunked
    or segmented offer was cut: "m-line audio has no DTLS fingerprint", a 400); too large: 413."""
    front, txrs = fleet
    peer = ClientPeer(audio="opus", decode=False)
    try:
        offer = (await peer.make_offer()).encode()

        async def pieces() -> AsyncIterator[bytes]:
            yield offer[:100]
            await asyncio.sleep(0.2)
            yield offer[100:]

        headers = {"Content-Type": "application/sdp", "X-Edge-Location": PARIS}
        async with http.post(front.url + "/v1/calls", data=pieces(), headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            peer.location = resp.headers["Location"]
            peer.url = front.url
        assert len(txrs[2].manager.sessions) == 1

        async def too_much() -> AsyncIterator[bytes]:
            for _ in range(80):
                yield b"a=x" + b"y" * 1020 + b"\r\n"

        async with http.post(front.url + "/v1/calls", data=too_much(), headers=headers) as resp:
            assert resp.status == 413
    finally:
        await peer.hang_up(http)
