"""UDP blocked, a call still connects (issue 11): Chromium in a namespace whose nftables ruleset
drops every UDP datagram calls through coturn (TURN over TLS on 443, with the short-lived
credentials the transceiver announces on OPTIONS) and the XDP relay to the transceiver; the same
client without TURN cannot; and coturn relays to the VIP only, so it is no open proxy
(docs/security.md)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from lab import netns
from lab.turn import RELAY_TURN_SIDE, TURN_ADDR, TURN_PORT, TurnLab, TurnRefused, TurnTlsClient
from lab.wait import wait_until
from transceiver import turn

pytestmark = [pytest.mark.lab, pytest.mark.browser, pytest.mark.timeout(180)]

ECHO_PACKETS = 50


@pytest.fixture
def turn_lab() -> Iterator[TurnLab]:
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.fail("/usr/bin/chromium is missing: run `make install` (Debian package chromium)")
    with TurnLab() as lab:
        yield lab
        coturn = lab.coturn
    assert not netns.list_namespaces(lab.prefix), "lab namespaces left behind"
    assert not lab.tmpdir.exists(), "lab files left behind"
    assert coturn is not None and coturn.poll() is not None, "turnserver left running"


def _connected(result: dict, lab: TurnLab) -> None:
    assert result["returncode"] == 0 and result["state"] == "connected", (
        result,
        lab.txr_text(),
        lab.coturn_text(),
    )
    assert result["packets"] > ECHO_PACKETS and result["energy"] > 0  # our own audio came back


def test_chromium_without_udp_calls_through_turn_over_tls(turn_lab: TurnLab) -> None:
    lab = turn_lab
    lab.block_udp()
    assert lab.udp_dropped() == {"udp_out": 0, "udp_in": 0}
    before = lab.stats()
    result = lab.browser_call()  # every candidate allowed, as a page in the wild
    after = lab.stats()
    _connected(result, lab)
    assert result["ice_servers"] == [lab.turn_url]  # from OPTIONS, before gathering
    pair = result["pair"]
    assert pair["local"]["type"] == "relay" and pair["local"]["relayProtocol"] == "tls", pair
    assert pair["local"]["url"] == lab.turn_url
    assert pair["local"]["address"] == TURN_ADDR  # coturn's relayed address...
    assert (pair["remote"]["address"], pair["remote"]["port"]) == (
        lab.vip,
        lab.vip_port,
    )  # ...to the VIP
    # Every echoed packet crossed the XDP relay, coturn being its client: the first check was
    # routed by its ufrag, the rest by the flow, the replies decapsulated toward coturn.
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["fwd_stun_new"] >= 1 and delta["fwd_flow"] >= ECHO_PACKETS, delta
    assert delta["fwd_decap"] >= ECHO_PACKETS, delta
    assert any(TURN_ADDR in json.dumps(f) for f in lab.flows()), lab.flows()
    # Chromium did try UDP (its host candidate's checks): the firewall dropped all of it.
    dropped = lab.udp_dropped()
    assert dropped["udp_out"] > 0, dropped


def test_without_turn_the_same_client_connects_only_while_udp_passes(turn_lab: TurnLab) -> None:
    """The control: the firewall, not the set-up, is what TURN gets the call through."""
    lab = turn_lab
    open_path = lab.browser_call("--no-ice-servers")
    _connected(open_path, lab)
    pair = open_path["pair"]
    assert (pair["local"]["type"], pair["local"]["protocol"]) == ("host", "udp"), pair
    assert pair["local"]["address"] == lab.client_addr and pair["remote"]["address"] == lab.vip
    lab.block_udp()
    blocked = lab.browser_call("--no-ice-servers", "--timeout=60")
    assert blocked["state"] == "failed" and blocked["returncode"] == 1, blocked
    assert blocked["error"] == "connection failed" and blocked["packets"] == 0, blocked
    assert blocked["pair"] is None
    assert lab.udp_dropped()["udp_out"] > 0


def test_relay_only_uses_turn_even_where_udp_passes(turn_lab: TurnLab) -> None:
    """iceTransportPolicy "relay" (the page's edgeIcePolicy, `lab.browsercall --relay-only`):
    a TURN/TLS call on a network that has UDP, and one whose UDP is blocked, look the same."""
    lab = turn_lab
    for blocked in (False, True):
        if blocked:
            lab.block_udp()
        result = lab.browser_call("--relay-only")
        _connected(result, lab)
        local = result["pair"]["local"]
        assert (local["type"], local["relayProtocol"], local["address"]) == (
            "relay",
            "tls",
            TURN_ADDR,
        ), result["pair"]


def test_a_call_over_turn_survives_an_ice_restart(turn_lab: TurnLab) -> None:
    """ICE restart (PATCH) with UDP blocked: Chromium gathers again (the page has handed it the
    201's fresh TURN credentials for that), the new checks go over TURN, the echo goes on."""
    lab = turn_lab
    lab.block_udp()
    result = lab.browser_call("--restart-ice")
    _connected(result, lab)
    assert result["restart"]["ufrag"] and result["packets_after_restart"] > 2 * ECHO_PACKETS
    local = result["pair"]["local"]
    assert (local["type"], local["relayProtocol"]) == ("relay", "tls"), result["pair"]


def test_coturn_relays_to_the_vip_only(turn_lab: TurnLab) -> None:
    """An allocation may not reach any other address: coturn is no open proxy."""
    lab = turn_lab
    lab.block_udp()  # the attacker is a client like any other: TCP 443 only
    secret = lab.secret.encode()
    servers = turn.TurnServers([lab.turn_url], secret, ttl=600)
    server, ca = (lab.turn_addr, TURN_PORT), lab.tmpdir / "turn.crt"
    cred = servers.mint("probe")
    with TurnTlsClient(lab.client_ns, server, ca) as client:
        relayed = client.allocate(cred.username, cred.password)
        assert relayed[0] == TURN_ADDR
        client.create_permission(lab.vip)  # the VIP: allowed
        for peer in (
            lab.txr_addr,  # the transceiver itself: only through the relay
            lab.tunnel_addr,  # the relay's tunnel address
            RELAY_TURN_SIDE,  # the relay's link to coturn
            lab.client_addr,  # back into the client's network
            TURN_ADDR,  # coturn itself
            "198.18.100.2",  # beside the VIP
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",  # a cloud metadata service
            "8.8.8.8",  # the Internet
            "224.0.0.1",
        ):
            with pytest.raises(TurnRefused) as refused:
                client.create_permission(peer)
            assert refused.value.code == 403, peer
    # Credentials: a wrong password, an expired one, one minted with another secret: 401.
    past = f"{int(time.time()) - 5}:probe"
    for username, password in (
        (cred.username, "wrong"),
        (past, turn.password(secret, past)),
        (cred.username, turn.password(b"another-secret-0123456789", cred.username)),
    ):
        with TurnTlsClient(lab.client_ns, server, ca) as client:
            with pytest.raises(TurnRefused) as refused:
                client.allocate(username, password)
            assert refused.value.code == 401, username
    # Nothing but TLS on 443: no plain TURN port on the listener address.
    for kind, port in ((socket.SOCK_STREAM, 3478), (socket.SOCK_STREAM, 5349)):
        sock = netns.socket_in(lab.turn_ns, kind=kind)
        sock.settimeout(2)
        with sock, pytest.raises(ConnectionRefusedError):
            sock.connect((lab.turn_addr, port))
    listening = netns.run(lab.turn_ns, ["ss", "-Hlnu"]).stdout
    assert "turnserver" not in listening and f"{lab.turn_addr}:" not in listening, listening


def test_coturn_takes_the_old_and_the_new_secret_while_one_rotates() -> None:
    """Rotation (docs/operations.md): coturn holds both secrets; credentials minted with either
    allocate, with any other they do not."""
    old = "the-old-secret-0123456789abcdef"
    with TurnLab(start_transceiver=False, old_secrets=[old]) as lab:
        server, ca = (lab.turn_addr, TURN_PORT), lab.tmpdir / "turn.crt"
        for secret, ok in ((lab.secret, True), (old, True), ("never-configured-0123456789", False)):
            cred = turn.TurnServers([lab.turn_url], secret.encode(), ttl=600).mint()
            with TurnTlsClient(lab.client_ns, server, ca) as client:
                if ok:
                    assert client.allocate(cred.username, cred.password)[0] == TURN_ADDR
                else:
                    with pytest.raises(TurnRefused) as refused:
                        client.allocate(cred.username, cred.password)
                    assert refused.value.code == 401


def test_a_credential_opens_allocations_until_its_expiry_only() -> None:
    """coturn checks the expiry when an allocation is made; one made before it lives on
    (refreshes and permissions go on), a new one after it is refused (docs/transceiver.md)."""
    from aioice import stun

    with TurnLab(start_transceiver=False) as lab:
        server, ca = (lab.turn_addr, TURN_PORT), lab.tmpdir / "turn.crt"
        expiry = int(time.time()) + 2
        user = f"{expiry}:short"
        password = turn.password(lab.secret.encode(), user)
        with TurnTlsClient(lab.client_ns, server, ca) as client:
            client.allocate(user, password)
            # 2 s past it: coturn compares the expiry with a clock it caches (turn_time())
            wait_until(lambda: time.time() > expiry + 2, 10, "the credential's expiry")
            assert client.request(stun.Method.REFRESH, {"LIFETIME": 600})["LIFETIME"] == 600
            client.create_permission(lab.vip)
            with TurnTlsClient(lab.client_ns, server, ca) as late:
                with pytest.raises(TurnRefused) as refused:
                    late.allocate(user, password)
                assert refused.value.code == 401
