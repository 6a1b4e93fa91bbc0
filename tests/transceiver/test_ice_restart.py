"""ICE restart (WHIP PATCH, RFC 9725 §4.3) with real aiortc clients: the client's network
changes mid-call (a new local address and port, the old one silent at once), it PATCHes its new
credentials, and the same call (same session, DTLS association, SRTP keys, app Call) carries on
under a new routing ufrag; directly and through the tunnel relay, which routes the new ufrag's
first check by its routing hint. Plus every way a PATCH can be wrong."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable, Mapping

import aiohttp
import pytest
from aioice import stun as aiostun

from lab.peer import ClientPeer
from lab.tunnelrelay import TunnelRelay
from tests.transceiver.conftest import TEST_KEY, TEST_KEY_ID
from transceiver import aiortc_seam
from transceiver.drops import BAD_INTEGRITY, UNKNOWN_CLIENT_UFRAG, UNKNOWN_UFRAG
from transceiver.ice import AUTHENTICATED, OTHER_CALL, PROBING
from transceiver.sdp import SDPFRAG, IceFragment, OfferError, ice_fragment, parse_ice_fragment
from transceiver.service import TransceiverService
from wire import stun as wstun
from wire import ufrag as wufrag

pytestmark = pytest.mark.timeout(90)

NEW_HOST = "127.0.0.2"  # the client's "new network": another loopback address
THIRD_HOST = "127.0.0.3"
KEYS = {TEST_KEY_ID: TEST_KEY}


async def wait_for(pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def _connected(http: aiohttp.ClientSession, url: str) -> ClientPeer:
    client = ClientPeer(audio="pcm", decode=False)
    try:
        await client.start(http, url)
        await wait_for(lambda: client.rtp_in >= 25, "the echo before the restart")
    except BaseException:
        await client.close()
        raise
    return client


async def _restart_and_measure(
    http: aiohttp.ClientSession, client: ClientPeer, host: str
) -> tuple[float, float]:
    """Restart onto `host`; returns (ms from PATCH to connected, the echo gap in ms)."""
    client.max_gap = 0.0
    ms = await client.restart_ice(http, host)
    before = client.rtp_in
    await wait_for(lambda: client.rtp_in >= before + 25, "the echo after the restart")
    return ms, client.max_gap * 1000


def _identity(txr: TransceiverService) -> tuple[object, ...]:
    """What must not change across a restart: session, app Call, DTLS, SRTP sessions."""
    (session,) = txr.manager.sessions.values()
    dtls = session.pc.getTransceivers()[0].receiver.transport
    return (session, session.call, dtls, *aiortc_seam.srtp_sessions(dtls))


def _old_check(username: str, password: str) -> bytes:
    msg = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1
    msg.attributes["ICE-CONTROLLING"] = 1
    msg.add_message_integrity(password.encode())
    msg.add_fingerprint()
    return bytes(msg)


async def test_client_moves_to_a_new_address_and_the_same_call_goes_on(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = await _connected(http, txr.http_url)
    try:
        before = _identity(txr)
        session = before[0]
        old_ufrag, old_pwd, _ = client.credentials()
        old_local, _ = client.nominated()
        started = txr.metrics.registry.get_sample_value("txr_calls_started_total")

        ms, gap = await _restart_and_measure(http, client, NEW_HOST)

        new_ufrag, new_pwd, _ = client.credentials()
        assert new_ufrag != old_ufrag and new_pwd != old_pwd
        assert session.ufrag == new_ufrag and session.ice.local_password == new_pwd
        # A fresh routing hint from the keyring: a relay routes it to this transceiver.
        hint = wufrag.verify(new_ufrag, KEYS)
        assert (hint.cluster, hint.transceiver) == (2, 7)
        # The mux finds the call by the new ufrag only; one entry per call, no leak.
        assert txr.mux.agent_for(new_ufrag) is session.ice
        assert txr.mux.agent_for(old_ufrag) is None
        assert txr.mux.registered() == [session.ice]
        # The same call, DTLS association and SRTP keys; no new call was made.
        assert _identity(txr) == before
        assert txr.metrics.registry.get_sample_value("txr_calls_started_total") == started
        assert (
            txr.metrics.registry.get_sample_value("txr_ice_restarts_total") == 1
            and session.ice_restarts == 1
        )
        assert session.end_reason is None
        # Media now goes to the new address; the old one is closed on the client.
        local, _ = client.nominated()
        assert local[0] == NEW_HOST and local != old_local
        assert session.ice.selected is not None
        assert session.ice.selected.client == local
        assert session.fastpath is not None and session.fastpath.rx_errors == 0
        print(f"\naiortc ICE restart to {NEW_HOST}: PATCH->connected {ms:.0f} ms, gap {gap:.0f} ms")
        assert gap < 3000

        # The new session was nominated, which ended the old one: old ufrag unknown, new
        # ufrag with the old password refused.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            drops = txr.mux.drops[UNKNOWN_UFRAG]
            sock.sendto(_old_check(f"{old_ufrag}:x", old_pwd), txr.udp_addr)
            await wait_for(lambda: txr.mux.drops[UNKNOWN_UFRAG] == drops + 1, "old ufrag drop")
            bad = txr.mux.drops[BAD_INTEGRITY]
            sock.sendto(_old_check(f"{new_ufrag}:x", old_pwd), txr.udp_addr)
            await wait_for(lambda: txr.mux.drops[BAD_INTEGRITY] == bad + 1, "old pwd drop")

        # A second restart (another network): still the same call, still one mux entry.
        ms2, gap2 = await _restart_and_measure(http, client, THIRD_HOST)
        assert client.nominated()[0][0] == THIRD_HOST
        assert _identity(txr) == before and session.ice_restarts == 2
        assert txr.mux.agent_for(new_ufrag) is None
        assert txr.mux.registered() == [session.ice]
        print(f"second restart to {THIRD_HOST}: {ms2:.0f} ms, gap {gap2:.0f} ms")
        assert await client.hang_up(http) == 204
        assert txr.mux.registered() == [] and txr.mux.bound_routes() == []
    finally:
        await client.close()


async def test_restart_through_the_relay_is_routed_by_the_new_ufrag(
    start_txr: Callable[..., object], http: aiohttp.ClientSession
) -> None:
    relay = await TunnelRelay.start(["127.0.0.1"])
    # The relay's routing decision (as XDP and lab.pyrelay make it): a Binding request goes on
    # only if its USERNAME's routing ufrag verifies and names this transceiver.
    routed: list[tuple[tuple[str, int], str]] = []
    forward = relay._from_client

    def by_ufrag(data: bytes, addr: tuple[str, int]) -> None:
        try:
            text = wstun.routing_ufrag(data)
        except wstun.StunError:
            forward(data, addr)  # not a Binding request: the flow decides
            return
        try:
            hint = wufrag.verify(text, KEYS)
        except wufrag.UfragError:
            relay.counts["drop_ufrag"] += 1
            return
        if (hint.cluster, hint.transceiver) != (2, 7):
            relay.counts["drop_unknown_txr"] += 1
            return
        routed.append((addr, text))
        forward(data, addr)

    assert relay.vip_proto is not None
    relay.vip_proto.handler = by_ufrag  # every datagram to the VIP goes through it
    client = None
    try:
        txr = await start_txr(  # type: ignore[misc]
            vips=[relay.vip], relay_tunnel_port=relay.tunnel_port, relays=relay.relays
        )
        relay.txr = txr.udp_addr
        client = await _connected(http, txr.http_url)
        old_ufrag = client.credentials()[0]
        before = _identity(txr)
        ms, gap = await _restart_and_measure(http, client, NEW_HOST)
        new_ufrag = client.credentials()[0]
        # The new address's first Binding request was routed by the new ufrag.
        first_new = [text for addr, text in routed if addr[0] == NEW_HOST][:1]
        assert first_new == [new_ufrag] and new_ufrag != old_ufrag
        assert any(text == old_ufrag for addr, text in routed)  # before: routed the same way
        assert all(text == new_ufrag for addr, text in routed if addr[0] == NEW_HOST)
        assert relay.counts["drop_ufrag"] == relay.counts["drop_unknown_txr"] == 0
        assert _identity(txr) == before
        (session,) = txr.manager.sessions.values()
        assert session.ice.selected is not None and session.ice.selected.vip is not None
        assert session.ice.selected.client[0] == NEW_HOST
        assert relay.errors == []  # every reply's checksums verified by the relay
        print(f"\nvia relay: PATCH->connected {ms:.0f} ms, gap {gap:.0f} ms")
    finally:
        if client is not None:
            await client.close()
        relay.close()


async def _patch(
    http: aiohttp.ClientSession, url: str, body: bytes | str, **headers: str
) -> tuple[int, str, Mapping[str, str]]:
    sent = {"Content-Type": SDPFRAG, **headers}
    async with http.patch(url, data=body, headers=sent) as resp:
        return resp.status, await resp.text(), resp.headers.copy()


async def test_bad_patches_get_clear_errors_and_change_nothing(
    txr: TransceiverService, http: aiohttp.ClientSession
) -> None:
    client = await _connected(http, txr.http_url)
    try:
        url = txr.http_url + str(client.location)
        (session,) = txr.manager.sessions.values()
        ufrag, pwd = session.ufrag, session.ice.local_password
        good = ice_fragment("abcd", "p" * 22, [], lite=False)
        cases: list[tuple[bytes | str, dict[str, str], int, str]] = [
            (good, {"Content-Type": "application/sdp"}, 415, "Content-Type must be"),
            (good, {"Content-Type": "text/plain"}, 415, "trickle-ice-sdpfrag"),
            ("a=ice-ufrag:abcd\r\n" + "a=x\r\n" * 3000, {}, 413, "at most 8192 bytes"),
            ("a=ice-ufrag:abcd\r\n", {}, 400, "no a=ice-pwd"),
            ("a=ice-pwd:" + "p" * 22 + "\r\n", {}, 400, "no a=ice-ufrag"),
            ("a=ice-ufrag:ab\r\na=ice-pwd:" + "p" * 22 + "\r\n", {}, 400, "4..256"),
            ("a=ice-ufrag:ab!d\r\na=ice-pwd:" + "p" * 22 + "\r\n", {}, 400, "4..256"),
            ("a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n", {}, 400, "22..256"),
            (good + "a=ice-ufrag:efgh\r\n", {}, 400, "more than one"),
            (b"\xff\xfe\x00", {}, 400, "not UTF-8"),
            ("garbage\r\n", {}, 400, "not an SDP line"),
        ]
        for body, headers, status, reason in cases:
            got, text, _ = await _patch(http, url, body, **headers)
            assert (got, reason in text) == (status, True), (body[:40], got, text)
        # Hostile bodies of every kind: a clear 4xx or a harmless 204, never a 5xx.
        rng = random.Random(11)
        for i in range(60):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            body = (b"a=ice-ufrag:abcd\r\n" if i % 2 else b"") + junk
            got, text, _ = await _patch(http, url, body)
            assert got in (204, 400), (body[:40], got, text)
        # Trickle: no credentials, or the ones in use, is accepted and does nothing (204).
        offer = parse_ice_fragment(client.offer_sdp)
        assert offer.ufrag is not None and offer.pwd is not None and offer.candidates
        same = ice_fragment(offer.ufrag, offer.pwd, [], lite=False)
        for body in ("a=candidate:" + offer.candidates[0] + "\r\n", same):
            got, text, headers = await _patch(http, url, body)
            assert (got, headers.get("ETag")) == (204, f'"{ufrag}"'), (got, text, headers)
        got, text, _ = await _patch(http, url, same, **{"If-Match": '"someone-else"'})
        assert got == 412 and "If-Match" in text
        # Not the holder, or no such call.
        call_id = str(client.location).rsplit("/", 1)[1].split(".")[0]
        got, _, _ = await _patch(http, f"{txr.http_url}/v1/calls/{call_id}", good)
        assert got == 401
        got, _, _ = await _patch(http, f"{txr.http_url}/v1/calls/nope.x", good)
        assert got == 404
        # Nothing changed: same credentials, no restart, the echo goes on.
        assert (session.ufrag, session.ice.local_password) == (ufrag, pwd)
        assert session.ice_restarts == 0 and txr.mux.agent_for(ufrag) is session.ice
        rtp = client.rtp_in
        await wait_for(lambda: client.rtp_in >= rtp + 10, "the echo after bad patches")
    finally:
        await client.close()


def test_fragments_parse_and_build() -> None:
    from transceiver.ice import host_candidates

    cands = host_candidates([("203.0.113.10", 3478)])
    text = ice_fragment("u" * 24, "p" * 24, cands, lite=True)
    assert text.startswith("a=ice-lite\r\na=ice-ufrag:" + "u" * 24 + "\r\n")
    assert text.endswith("a=end-of-candidates\r\n")
    frag = parse_ice_fragment(text)
    assert (frag.ufrag, frag.pwd) == ("u" * 24, "p" * 24)
    assert frag.candidates == (cands[0].to_sdp(),)
    assert parse_ice_fragment("") == parse_ice_fragment("\r\n") == IceFragment(None, None, ())
    with pytest.raises(OfferError, match="larger than"):
        parse_ice_fragment("a=x\r\n" * 3000)


def _answer(probe: aiostun.Message, password: str) -> bytes:
    """The client's success response to our check, signed with `password`."""
    msg = aiostun.Message(
        aiostun.Method.BINDING, aiostun.Class.RESPONSE, transaction_id=probe.transaction_id
    )
    msg.add_message_integrity(password.encode())
    return bytes(msg)


def test_agent_restart_keeps_the_old_session_until_the_new_one_is_nominated() -> None:
    """IceLiteAgent.restart alone, in the order libwebrtc produces on a real network: its new
    socket checks before the PATCH has arrived, under our OLD ufrag and its NEW one. Nothing is
    answered then; the PATCH's password checks that path back at once; the old credentials
    work until a nomination under the new ufrag, and stop then."""
    from tests.transceiver.test_ice import (
        CLIENT_PWD,
        CLIENT_UFRAG,
        Recorder,
        make_agent,
        probe_of,
        request,
    )

    retired: list[str] = []
    agent = make_agent(on_retire=lambda a, ufrag: retired.append(ufrag))
    old_ufrag, old_pwd = agent.local_username, agent.local_password
    known = Recorder(agent, ("192.0.2.1", 4000))
    assert agent.stun_received(request(agent), known) == PROBING
    assert agent.stun_received(_answer(probe_of(known), CLIENT_PWD), known) == AUTHENTICATED
    assert agent.selected_route is known
    # A path checked under the old credentials, its check of ours still in flight.
    moved = Recorder(agent, ("192.0.2.9", 5000))
    assert agent.stun_received(request(agent), moved) == PROBING
    in_flight = probe_of(moved)
    # The client's new socket, before the PATCH: our old ufrag, its new one. Unanswered.
    early = Recorder(agent, ("192.0.2.2", 6000))
    before = agent.checks
    held = request(agent, username=f"{old_ufrag}:newc", **{"USE-CANDIDATE": None})
    assert agent.stun_received(held, early) == UNKNOWN_CLIENT_UFRAG
    assert early.sent == [] and agent.checks == before and agent.selected_route is known
    # The same with a wrong password is refused as any other (401), and remembers nothing.
    stranger = Recorder(agent, ("192.0.2.3", 7000))
    bad = request(agent, username=f"{old_ufrag}:newc", password="x" * 24)
    assert agent.stun_received(bad, stranger) == BAD_INTEGRITY

    new_ufrag, new_client_pwd = "N" * 24, "n" * 24
    pwd = agent.restart(new_ufrag, "newc", new_client_pwd)
    assert (agent.local_username, agent.local_password) == (new_ufrag, pwd) and pwd != old_pwd
    assert agent.ufrags == [new_ufrag, old_ufrag] and retired == []
    assert agent.selected_route is known and not agent.nominated
    assert stranger.sent[1:] == []  # its 401 only: no check of ours went there
    # The early path is checked back at once, as its check named the credentials.
    check = probe_of(early)
    assert check.attributes["USERNAME"] == f"newc:{old_ufrag}"
    assert check.check_message_integrity(new_client_pwd.encode())
    assert not check.check_message_integrity(CLIENT_PWD.encode())
    # The answer to our pre-restart check (signed for the old client password) is forgotten.
    late = _answer(in_flight, CLIENT_PWD)
    assert agent.stun_received(late, moved) == OTHER_CALL and not agent.is_verified(moved)
    # The early path answers: verified, and selected by the USE-CANDIDATE it sent.
    assert agent.stun_received(_answer(check, new_client_pwd), early) == AUTHENTICATED
    assert agent.selected_route is early and agent.nominated
    assert retired == []  # that nomination was under the old ufrag: the old session goes on
    # Old credentials still work (the old socket's consent), answered with the old password.
    known.sent.clear()
    assert (
        agent.stun_received(
            request(agent, username=f"{old_ufrag}:{CLIENT_UFRAG}", password=old_pwd), known
        )
        == AUTHENTICATED
    )
    (answer,) = [aiostun.parse_message(d) for d in known.sent]
    assert answer.check_message_integrity(old_pwd.encode())
    # A nomination under the new ufrag ends the old session: its ufrag and password stop.
    nominate = request(agent, username=f"{new_ufrag}:newc", **{"USE-CANDIDATE": None})
    assert agent.stun_received(nominate, early) == AUTHENTICATED
    assert retired == [old_ufrag] and agent.ufrags == [new_ufrag]
    old_check = request(None, username=f"{old_ufrag}:newc", password=old_pwd)
    assert agent.stun_received(old_check, early) == OTHER_CALL
    assert (
        agent.stun_received(request(agent, username=f"{new_ufrag}:newc", password=old_pwd), early)
        == BAD_INTEGRITY
    )
    # Two restarts before any nomination: the one before the previous retires at the second.
    agent.restart("T" * 24, "third", "t" * 24)
    agent.restart("F" * 24, "fourth", "f" * 24)
    assert retired == [old_ufrag, new_ufrag] and agent.ufrags == ["F" * 24, "T" * 24]


async def test_client_sender_survives_sends_while_the_old_sockets_close(
    txr: TransceiverService, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's RTP sender sends every 20 ms, also while restart_client_ice closes the old
    agent's sockets one by one. A send through a socket closed already raised (asyncio's
    transport drops its socket) and aiortc ended the sender for good: a 'connected' call with
    no audio (1 in ~30 restarts through the XDP relay). Each close here is followed by 60 ms in
    which the sender runs, so such a send happens on every run."""
    from aioice.ice import StunProtocol

    close = StunProtocol.close

    async def slow_close(self: StunProtocol) -> None:
        await close(self)
        await asyncio.sleep(0.06)  # three packet times with this socket closed

    monkeypatch.setattr(StunProtocol, "close", slow_close)
    client = await _connected(http, txr.http_url)
    try:
        await _restart_and_measure(http, client, NEW_HOST)
        sent, echoed = client.sent, client.rtp_in
        assert sent is not None
        await wait_for(
            lambda: (client.sent or 0) >= sent + 25 and client.rtp_in >= echoed + 25,
            "the client still sending, and its echo, after the restart",
        )
    finally:
        await client.close()
