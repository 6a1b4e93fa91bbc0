"""The XDP relay end to end: loaded by relayctl on veths in namespaces, real UDP sockets.

client ns --(rc)--> relay ns --(rt / r2)--> txr / txr2 ns, stand-in transceivers echoing.
All tests share one loaded relay (module fixture); each uses fresh client sockets, so each has
its own flows, and asserts counter deltas.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from lab import netns
from lab.standin import StandIn
from lab.topology import RelayLab
from tests.lab.labhelp import assert_clean, recv_exact
from wire import stun, ufrag
from wire.encap import flow_entropy, forward_hop, ipv4_udp, parse_ipv4_udp

pytestmark = pytest.mark.lab

PREFIXES = (b"T0|", b"T1|")


@pytest.fixture(scope="module")
def standins(relay_lab: RelayLab) -> Iterator[list[StandIn]]:
    """One echoing stand-in per transceiver, replies prefixed with T0| / T1|."""
    started = [relay_lab.standin(i, prefix=PREFIXES[i]).start() for i in range(2)]
    try:
        yield started
    finally:
        for s in started:
            s.stop()


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _binding(lab: RelayLab, txr: int, client_ufrag: str = "clnt") -> bytes:
    return stun.build_binding_request(f"{lab.mint(txr)}:{client_ufrag}")


def _roundtrip(lab: RelayLab, sock: socket.socket, payload: bytes, txr: int) -> None:
    """Send to the VIP; the echo must come back from VIP:port with exactly prefix + payload."""
    sock.sendto(payload, (lab.vip, lab.vip_port))
    assert recv_exact(sock) == (PREFIXES[txr] + payload, (lab.vip, lab.vip_port))


def test_binding_request_is_tunneled_byte_for_byte_and_answered_from_the_vip(
    relay_lab: RelayLab, standins: list[StandIn]
) -> None:
    lab, s0 = relay_lab, standins[0]
    before = lab.stats()
    # A raw socket sends a packet we built ourselves, so we know every byte the client sent.
    udp = lab.client_socket()
    raw = netns.socket_in(lab.client_ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with udp, raw:
        cport = udp.getsockname()[1]
        req = _binding(lab, 0)
        sent = ipv4_udp(lab.client_addrs[0], cport, lab.vip, lab.vip_port, req, ident=0x1234)
        n, target = len(s0.seen), s0.snapshot()["tunnel"] + 1
        raw.sendto(sent, (lab.vip, 0))
        assert s0.wait_for(target)
        seen = s0.seen[n]
        assert seen.inner == forward_hop(sent)  # byte for byte, one hop (TTL) later
        assert seen.relay == (lab.tunnel_addr, flow_entropy(lab.client_addrs[0], cport, 3478))
        assert recv_exact(udp) == (b"T0|" + req, (lab.vip, lab.vip_port))
    assert _delta(before, lab.stats()) == {"fwd_stun_new": 1, "fwd_decap": 1}


def test_dtls_and_rtp_follow_the_learned_flow(relay_lab: RelayLab, standins: list[StandIn]) -> None:
    lab, s0 = relay_lab, standins[0]
    before = lab.stats()
    with lab.client_socket() as c:
        _roundtrip(lab, c, _binding(lab, 0), 0)
        dtls = b"\x16\xfe\xfd" + bytes(range(60))  # ClientHello-like record header
        rtp = b"\x80\x6f" + b"\x00\x01" + b"\xab" * 156
        for payload in (dtls, rtp, rtp[:20]):
            _roundtrip(lab, c, payload, 0)
        inner = parse_ipv4_udp(s0.seen[-1].inner)
        assert (inner.src, inner.sport) == c.getsockname()
        assert (inner.dst, inner.dport) == (lab.vip, lab.vip_port)
        # A repeated Binding request on the same flow is routed again, flow unchanged.
        _roundtrip(lab, c, _binding(lab, 0), 0)
    assert _delta(before, lab.stats()) == {
        "fwd_stun_new": 1,
        "fwd_flow": 3,
        "fwd_stun_known": 1,
        "fwd_decap": 5,
    }


def test_flows_json_shows_the_flow(relay_lab: RelayLab, standins: list[StandIn]) -> None:
    lab = relay_lab
    with lab.client_socket(lab.client_addrs[1]) as c:
        _roundtrip(lab, c, _binding(lab, 1), 1)
        client = "{}:{}".format(*c.getsockname())
        mine = [f for f in lab.flows() if f["client"] == client]
    t = lab.txrs[1]
    assert len(mine) == 1
    assert mine[0]["vip"] == f"{lab.vip}:{lab.vip_port}"
    assert (mine[0]["cluster"], mine[0]["transceiver"]) == (t.cluster, t.id)
    assert mine[0]["tunnel"] == t.tunnel


def test_forged_ufrags_and_unknown_flows_are_dropped_and_counted(
    relay_lab: RelayLab, standins: list[StandIn]
) -> None:
    lab = relay_lab
    seen_before = [len(s.seen) for s in standins]
    before = lab.stats()
    vip = (lab.vip, lab.vip_port)
    with lab.client_socket() as c, lab.client_socket() as stranger:
        _roundtrip(lab, c, _binding(lab, 0), 0)
        forged = ufrag.mint(lab.key_id, bytes(16), 1, 7)  # right layout, wrong key
        c.sendto(stun.build_binding_request(f"{forged}:x"), vip)
        other_key = ufrag.mint(9, lab.key, 1, 7)  # no key loaded under id 9
        c.sendto(stun.build_binding_request(f"{other_key}:x"), vip)
        unknown_txr = ufrag.mint(lab.key_id, lab.key, 1, 4242)
        c.sendto(stun.build_binding_request(f"{unknown_txr}:x"), vip)
        c.sendto(stun.build_binding_request(f"{lab.mint(0)[:20]}:x"), vip)
        stranger.sendto(b"\x80" + b"\x00" * 40, vip)  # media with no flow
        stranger.sendto(b"\x16\xfe\xfd" + b"\x00" * 40, vip)
        # Tunnel port: a client pretending to be a transceiver.
        fake = ipv4_udp(lab.vip, lab.vip_port, lab.client_addrs[0], c.getsockname()[1], b"x")
        c.sendto(fake, (lab.tunnel_addr, lab.tunnel_port))
        # Packets from one sender are handled in order: once this echo is back, all the bad
        # ones before it were handled too.
        _roundtrip(lab, c, b"\x80after", 0)
        with pytest.raises(TimeoutError):  # the fake reply above must not have arrived
            c.settimeout(0.2)
            c.recvfrom(2048)
    assert [len(s.seen) for s in standins] == [seen_before[0] + 2, seen_before[1]]
    assert _delta(before, lab.stats()) == {
        "fwd_stun_new": 1,
        "fwd_flow": 1,
        "fwd_decap": 2,
        "drop_bad_tag": 1,
        "drop_unknown_key": 1,
        "drop_unknown_txr": 1,
        "drop_bad_ufrag": 1,
        "drop_no_flow": 2,
        "drop_tunnel_stranger": 1,
    }


def test_tunnel_replies_must_come_from_a_vip(relay_lab: RelayLab, standins: list[StandIn]) -> None:
    lab, s0 = relay_lab, standins[0]
    before = lab.stats()
    with lab.client_socket() as c:
        _roundtrip(lab, c, _binding(lab, 0), 0)
        me = c.getsockname()
        relay = (lab.tunnel_addr, lab.tunnel_port)
        s0.sock.sendto(ipv4_udp("198.18.1.1", 53, me[0], me[1], b"spoof"), relay)
        s0.sock.sendto(ipv4_udp(lab.vip, lab.vip_port, me[0], me[1], b"cut")[:30], relay)
        s0.sock.sendto(ipv4_udp(lab.vip, lab.vip_port, me[0], me[1], b"good"), relay)
        assert recv_exact(c) == (b"good", (lab.vip, lab.vip_port))
    assert _delta(before, lab.stats()) == {
        "fwd_stun_new": 1,
        "fwd_decap": 2,
        "drop_tunnel_foreign_src": 1,
        "drop_tunnel_bad_inner": 1,
    }


def test_two_clients_reach_two_transceivers(relay_lab: RelayLab, standins: list[StandIn]) -> None:
    lab = relay_lab
    socks = [lab.client_socket(lab.client_addrs[0]), lab.client_socket(lab.client_addrs[1])]
    marks = [len(s.seen) for s in standins]
    try:
        for txr, c in enumerate(socks):
            _roundtrip(lab, c, _binding(lab, txr), txr)
        for _ in range(3):  # interleaved media: each flow stays on its transceiver
            for txr, c in enumerate(socks):
                _roundtrip(lab, c, b"\x80" + bytes([txr]) * 50, txr)
        for txr, (s, mark) in enumerate(zip(standins, marks, strict=True)):
            new = list(s.seen)[mark:]
            assert len(new) == 4
            assert {parse_ipv4_udp(x.inner).src for x in new} == {lab.client_addrs[txr]}
            # Both transceivers see the relay's one tunnel address, over different links.
            assert {x.relay[0] for x in new} == {lab.tunnel_addr}
    finally:
        for c in socks:
            c.close()


def test_binding_request_for_another_transceiver_does_not_move_a_live_flow(
    relay_lab: RelayLab, standins: list[StandIn]
) -> None:
    """Issue 8: one (spoofable) Binding request must not take a live call elsewhere; an idle
    flow, or one whose transceiver left, may move (tests/bpf/test_bpf_security.py)."""
    lab = relay_lab
    before = lab.stats()
    with lab.client_socket() as c:
        _roundtrip(lab, c, _binding(lab, 0), 0)
        _roundtrip(lab, c, b"\x80one", 0)
        c.sendto(_binding(lab, 1), (lab.vip, lab.vip_port))  # toward the other transceiver
        _roundtrip(lab, c, b"\x80two", 0)  # the call stays where it is
    assert _delta(before, lab.stats()) == {
        "fwd_stun_new": 1,
        "fwd_flow": 2,
        "fwd_decap": 3,
        "drop_flow_live": 1,
    }


def test_a_deregistered_transceiver_loses_its_flows_at_once(
    relay_lab: RelayLab, standins: list[StandIn]
) -> None:
    lab = relay_lab
    with lab.client_socket(lab.client_addrs[1]) as c:
        _roundtrip(lab, c, _binding(lab, 1), 1)
        lab.write_registry([lab.txrs[0]])
        lab.sync()
        try:
            before = lab.stats()
            c.sendto(b"\x80orphan", (lab.vip, lab.vip_port))
            with lab.client_socket() as probe:  # an in-order marker through the other txr
                _roundtrip(lab, probe, _binding(lab, 0), 0)
            assert _delta(before, lab.stats()) == {
                "drop_unknown_txr": 1,
                "fwd_stun_new": 1,
                "fwd_decap": 1,
            }
        finally:
            lab.write_registry()
            lab.sync()
        _roundtrip(lab, c, b"\x80back", 1)  # the flow kept its ids: it works again


def test_generic_mode_relays_too() -> None:
    """`--mode generic` (skb XDP, for NICs without driver support) takes the same paths."""
    with RelayLab(transceivers=1, mode="generic") as lab, lab.standin(0, prefix=b"T0|") as s0:
        assert netns.xdp_attached(lab.relay_ns, "rc") and netns.xdp_attached(lab.relay_ns, "rt")
        with lab.client_socket() as c:
            _roundtrip(lab, c, _binding(lab, 0), 0)
            _roundtrip(lab, c, b"\x80generic", 0)
        assert s0.seen[0].relay[0] == lab.tunnel_addr
        stats = lab.stats()
        assert (stats["fwd_stun_new"], stats["fwd_flow"], stats["fwd_decap"]) == (1, 1, 2)
        prefix = lab.prefix
    assert_clean(prefix)


def test_unresolved_next_hops_go_through_the_kernel_once() -> None:
    """No neighbour entry: the relay passes the rewritten packet up (pass_fib_no_neigh), the
    kernel forwards it and resolves the neighbour, and the next packets take the XDP path."""
    with RelayLab(transceivers=1) as lab, lab.standin(0, prefix=b"T0|") as s0:
        # Only the relay forgets (the peers keep theirs: their ARP requests would teach it).
        netns.run(lab.relay_ns, ["ip", "neigh", "del", lab.txrs[0].addr, "dev", "rt"])
        netns.run(lab.relay_ns, ["ip", "neigh", "del", lab.client_addrs[0], "dev", "rc"])
        with lab.client_socket() as c:
            _roundtrip(lab, c, _binding(lab, 0), 0)  # both directions unresolved
            first = lab.stats()
            _roundtrip(lab, c, b"\x80fast", 0)
            after = lab.stats()
        assert first["pass_fib_no_neigh"] == 2  # one each way
        assert first["fwd_stun_new"] == first["fwd_decap"] == 0
        assert s0.seen[0].relay[0] == lab.tunnel_addr
        assert _delta(first, after) == {"fwd_flow": 1, "fwd_decap": 1}


def test_without_accept_local_the_kernel_drops_unresolved_packets_as_martians() -> None:
    """The reason the lab (and an edge host) sets accept_local: see wire-format.md §5."""
    with RelayLab(transceivers=2) as lab:
        netns.sysctl(lab.relay_ns, "net.ipv4.conf.all.accept_local", "0")
        netns.run(lab.relay_ns, ["ip", "neigh", "del", lab.txrs[0].addr, "dev", "rt"])
        with (
            lab.standin(0, prefix=PREFIXES[0]) as s0,
            lab.standin(1, prefix=PREFIXES[1]) as s1,
            lab.client_socket() as c,
        ):
            before = lab.stats()
            for _ in range(2):
                c.sendto(_binding(lab, 0), (lab.vip, lab.vip_port))
            with lab.client_socket() as probe:  # in-order marker through the other link
                _roundtrip(lab, probe, _binding(lab, 1), 1)  # (c's flow is live: it stays)
            assert _delta(before, lab.stats()) == {
                "pass_fib_no_neigh": 2,
                "fwd_stun_new": 1,
                "fwd_decap": 1,
            }
            assert s0.snapshot()["tunnel"] == 0 and s1.snapshot()["tunnel"] == 1
        neigh = netns.run(lab.relay_ns, ["ip", "neigh", "show", lab.txrs[0].addr]).stdout
        assert "lladdr" not in neigh  # never resolved
