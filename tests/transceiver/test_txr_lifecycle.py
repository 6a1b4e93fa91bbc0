"""How calls end without DELETE: peer hang-up, consent expiry (RFC 7675), setup timeout."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from lab.peer import call, make_offer
from transceiver import aiortc_seam

pytestmark = pytest.mark.timeout(60)


async def wait_ended(txr, timeout: float = 10.0) -> str:
    """Wait until the transceiver's only session ends; returns its end reason."""
    (session,) = txr.manager.sessions.values()
    await asyncio.wait_for(session.ended.wait(), timeout)
    return session.end_reason


async def test_peer_hangup_ends_the_call(txr, http: aiohttp.ClientSession) -> None:
    client = await call(http, txr.http_url, want_frames=10)
    await client.wait_state("connected")
    await asyncio.wait_for(client.got_frames.wait(), 10)
    (session,) = txr.manager.sessions.values()
    await client.close()  # DTLS close_notify
    await asyncio.wait_for(session.ended.wait(), 10)
    assert session.end_reason == "peer_closed"
    assert txr.manager.active == 0 and txr.mux.bound_routes() == [] and txr.mux.registered() == []


async def test_call_ends_when_client_stops_consent_checks(start_txr, http) -> None:
    txr = await start_txr(consent_timeout=2.0)
    client = await call(http, txr.http_url, want_frames=10)
    try:
        await client.wait_state("connected")
        await asyncio.wait_for(client.got_frames.wait(), 10)
        (session,) = txr.manager.sessions.values()
        # Media keeps flowing, but the client no longer sends consent checks.
        aiortc_seam.stop_consent_checks(aiortc_seam.ice_connection(client.pc))
        checks = session.ice.checks
        assert await wait_ended(txr, 8) == "consent_expired"
        assert session.ice.checks == checks
        assert txr.manager.active == 0
    finally:
        await client.close()


async def test_consent_checks_keep_a_call_alive(start_txr, http) -> None:
    # aioice's consent checks come every ~5 s; with a 7 s timeout the call must survive 12 s.
    txr = await start_txr(consent_timeout=7.0)
    client = await call(http, txr.http_url, want_frames=600)
    try:
        await client.wait_state("connected")
        (session,) = txr.manager.sessions.values()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(session.ended.wait(), 12)
        assert session.ice.checks >= 3
    finally:
        await client.close()


async def test_offer_without_checks_times_out(start_txr, http) -> None:
    txr = await start_txr(setup_timeout=1.0)
    client = await make_offer()
    try:
        async with http.post(
            txr.http_url + "/v1/calls",
            data=client.pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as resp:
            assert resp.status == 201
        assert await wait_ended(txr, 5) == "setup_timeout"
        assert txr.manager.active == 0 and txr.mux.registered() == []
    finally:
        await client.close()
