"""Issue 8, the relay's side, client direction: TTL and header checksum as a router checks them,
a live flow that one Binding request cannot move, a ufrag's bounded flow budget and lifetime,
and no flow for an address no client has. Each case is an attack (or the legitimate packet next
to it) with the bytes out asserted; the return path's cases are in test_bpf_decap.py."""

from __future__ import annotations

import ctypes as ct

import pytest

from control.reasons import Reason
from tests.bpf.bpfharness import (
    CLIENT,
    CLIENT_PORT,
    IDLE,
    NEAR,
    ON_CLIENT_LINK,
    RTP,
    TUNNEL_ADDR,
    VIA_TX_TXR,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_REDIRECT,
    XDP_TX,
    Case,
    Relay,
    Setup,
    Txr,
    at_epoch,
    binding,
    cases,
    check,
    client_frame,
    configured,
    eth,
    seen_now,
    tunnelled,
    with_flow,
    with_limits,
    without_txr,
)
from wire.encap import ipv4_udp
from wire.ufrag import EPOCH_MOD

NOW = 0x123  # the program's clock (epoch) in the lifetime cases
GONE = Txr(1, 99, "198.19.1.99", 5000)  # a transceiver no longer in the map


def frame_ttl(payload: bytes, ttl: int, *, client: str = CLIENT) -> bytes:
    return eth(ipv4_udp(client, CLIENT_PORT, VIP, VIP_PORTS[0], payload, ttl=ttl))


def bad_checksum(frame: bytes) -> bytes:
    f = bytearray(frame)
    f[14 + 10] ^= 0x01
    return bytes(f)


def flow_seen_ago(txr: Txr, ago: int) -> Setup:
    """A flow to txr whose last client packet was `ago` seen-units (about seconds) ago."""

    def setup(relay: Relay) -> None:
        relay.set_flow(txr)
        flows = relay.maps["flows"]
        key = relay.flow_key()
        val = flows[key]
        val.seen = (seen_now() - ago) & 0xFFFF
        relay.write_flow(key, val)

    return setup


STUN = client_frame(binding(NEAR))
MEDIA = client_frame(RTP)
TTL2 = frame_ttl(RTP, 2)
OLD = client_frame(binding(NEAR, epoch=(NOW - 146) % EPOCH_MOD))  # 146 > 144 + 1 slack
AT_LIMIT = client_frame(binding(NEAR, epoch=(NOW - 145) % EPOCH_MOD))
AHEAD = client_frame(binding(NEAR, epoch=(NOW + 1) % EPOCH_MOD))
TWO_AHEAD = client_frame(binding(NEAR, epoch=(NOW + 2) % EPOCH_MOD))


def stun_from(addr: str, port: int = CLIENT_PORT) -> bytes:
    return client_frame(binding(NEAR), client=addr, port=port)


@cases(
    # -- TTL and checksum (item 7) --------------------------------------------------------
    Case(
        "client TTL 1",
        frame_ttl(RTP, 1),
        None,
        XDP_DROP,
        Reason.DROP_TTL_EXPIRED,
        setup=(with_flow(NEAR),),
    ),
    Case(
        "client TTL 0",
        frame_ttl(RTP, 0),
        None,
        XDP_DROP,
        Reason.DROP_TTL_EXPIRED,
        setup=(with_flow(NEAR),),
    ),
    Case(
        "client TTL 1 Binding request: no flow made",
        frame_ttl(STUN[42:], 1),
        None,
        XDP_DROP,
        Reason.DROP_TTL_EXPIRED,
    ),
    Case(
        "client TTL 2: tunnelled with TTL 1 inside",
        TTL2,
        tunnelled(TTL2, NEAR),
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        setup=(with_flow(NEAR),),
    ),
    Case(
        "bad client header checksum",
        bad_checksum(MEDIA),
        None,
        XDP_DROP,
        Reason.DROP_BAD_IP_CSUM,
        setup=(with_flow(NEAR),),
    ),
    Case(
        "bad checksum on a Binding request: no flow made",
        bad_checksum(STUN),
        None,
        XDP_DROP,
        Reason.DROP_BAD_IP_CSUM,
    ),
    # -- a live flow does not move (item 4) -----------------------------------------------
    Case(
        "a live flow is not moved to another transceiver",
        STUN,
        None,
        XDP_DROP,
        Reason.DROP_FLOW_LIVE,
        setup=(with_flow(ON_CLIENT_LINK, live=True),),
    ),
    Case(
        "an idle flow may move",
        STUN,
        tunnelled(STUN, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        setup=(with_flow(ON_CLIENT_LINK),),
        learns=NEAR,
    ),
    Case(
        "a live flow whose transceiver left the map may move (failover)",
        STUN,
        tunnelled(STUN, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        setup=(with_flow(GONE, live=True),),
        learns=NEAR,
    ),
    Case(
        "a live flow to the ufrag's own transceiver: known",
        STUN,
        tunnelled(STUN, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_KNOWN,
        setup=(with_flow(NEAR, live=True),),
    ),
    Case(
        "the idle time is the config's: 5 units ago is idle under 3",
        STUN,
        tunnelled(STUN, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        setup=(flow_seen_ago(ON_CLIENT_LINK, 5), with_limits(flow_idle_s=3)),
        learns=NEAR,
    ),
    Case(
        "the idle time is the config's: 5 units ago is live under the default 10",
        STUN,
        None,
        XDP_DROP,
        Reason.DROP_FLOW_LIVE,
        setup=(flow_seen_ago(ON_CLIENT_LINK, 5),),
    ),
    # -- the ufrag's lifetime (item 4) ----------------------------------------------------
    Case(
        "an expired ufrag makes no flow",
        OLD,
        None,
        XDP_DROP,
        Reason.DROP_UFRAG_EXPIRED,
        setup=(at_epoch(NOW),),
    ),
    Case(
        "an expired ufrag's existing flow continues (Binding request)",
        OLD,
        tunnelled(OLD, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_KNOWN,
        setup=(at_epoch(NOW), with_flow(NEAR)),
    ),
    Case(
        "an expired ufrag does not move an idle flow",
        OLD,
        None,
        XDP_DROP,
        Reason.DROP_UFRAG_EXPIRED,
        setup=(at_epoch(NOW), with_flow(ON_CLIENT_LINK)),
    ),
    Case(
        "lifetime + one epoch of slack: still fresh",
        AT_LIMIT,
        tunnelled(AT_LIMIT, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        setup=(at_epoch(NOW),),
        learns=NEAR,
    ),
    Case(
        "one epoch ahead (the minter's clock): fresh",
        AHEAD,
        tunnelled(AHEAD, NEAR),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        setup=(at_epoch(NOW),),
        learns=NEAR,
    ),
    Case(
        "two epochs ahead: refused",
        TWO_AHEAD,
        None,
        XDP_DROP,
        Reason.DROP_UFRAG_EXPIRED,
        setup=(at_epoch(NOW),),
    ),
    Case(
        "a shorter lifetime from the config",
        AT_LIMIT,
        None,
        XDP_DROP,
        Reason.DROP_UFRAG_EXPIRED,
        setup=(at_epoch(NOW), with_limits(ufrag_max_age=12)),
    ),
    Case(
        "no clock in the config: no new flow",
        STUN,
        None,
        XDP_DROP,
        Reason.DROP_NO_CONFIG,
        setup=(lambda relay: relay.set_clock(offset=0),),
    ),
    # -- addresses no client has ----------------------------------------------------------
    *(
        Case(
            f"a Binding request from {name}",
            stun_from(addr),
            None,
            XDP_DROP,
            Reason.DROP_BAD_CLIENT_ADDR,
        )
        for name, addr in {
            "loopback": "127.0.0.1",
            "multicast": "224.0.0.251",
            "broadcast": "255.255.255.255",
            "class E": "240.1.2.3",
            "0/8": "0.0.0.1",
            "link-local": "169.254.9.9",
            "the tunnel address": TUNNEL_ADDR,
            "the VIP itself": VIP,
        }.items()
    ),
)
def test_client_side(relay: Relay, case: Case) -> None:
    check(relay, case)


def test_a_flow_hit_refreshes_seen_and_keeps_the_flow_live(relay: Relay) -> None:
    relay.set_flow(ON_CLIENT_LINK)  # idle
    out = relay.run(MEDIA)
    assert (out.action, out.reason) == (XDP_TX, Reason.FWD_FLOW)
    assert out.data == tunnelled(MEDIA, ON_CLIENT_LINK, VIA_TX_TXR)
    assert (seen_now() - relay.get_flow().seen) & 0xFFFF <= 1
    out = relay.run(STUN)  # now live: the Binding request for NEAR does not move it
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_FLOW_LIVE)
    assert relay.get_flow().id == ON_CLIENT_LINK.id


# -- one ufrag, many addresses ---------------------------------------------------------------


def _run_from(relay: Relay, frame_payload: bytes, ports: range) -> dict[Reason, int]:
    seen: dict[Reason, int] = {}
    for port in ports:
        out = relay.run(client_frame(frame_payload, port=port))
        seen[out.reason] = seen.get(out.reason, 0) + 1
    return seen


def test_one_ufrag_creates_a_bounded_number_of_flows(relay: Relay) -> None:
    stun = binding(NEAR)
    assert _run_from(relay, stun, range(40000, 40020)) == {
        Reason.FWD_STUN_NEW: 16,  # UFRAG_FLOW_LIMIT
        Reason.DROP_UFRAG_FLOOD: 4,
    }
    assert len(relay.flows()) == 16
    # a known flow of that ufrag still works, and another ufrag has its own budget
    assert relay.run(client_frame(stun, port=40000)).reason == Reason.FWD_STUN_KNOWN
    other = binding(NEAR, nonce=b"\x0b\x0b\x0b\x0b")
    assert _run_from(relay, other, range(41000, 41003)) == {Reason.FWD_STUN_NEW: 3}


def test_the_budget_renews_with_the_window(relay: Relay) -> None:
    relay.limits(ufrag_flow_limit=2)
    stun = binding(NEAR)
    assert _run_from(relay, stun, range(40000, 40003)) == {
        Reason.FWD_STUN_NEW: 2,
        Reason.DROP_UFRAG_FLOOD: 1,
    }
    rates = relay.bpf[b"ufrag_rates"]
    ((key, rate),) = rates.items()
    rate.start_ns -= 61 * 10**9  # the window (UFRAG_WINDOW_S 60) is over
    rates[key] = rate
    assert _run_from(relay, stun, range(40003, 40005)) == {Reason.FWD_STUN_NEW: 2}
    assert rates[key].count == 2


def test_moving_idle_flows_takes_from_the_budget(relay: Relay) -> None:
    relay.limits(ufrag_flow_limit=1)
    relay.set_flow(ON_CLIENT_LINK, port=40000)
    relay.set_flow(ON_CLIENT_LINK, port=40001)
    assert _run_from(relay, binding(NEAR), range(40000, 40002)) == {
        Reason.FWD_STUN_NEW: 1,
        Reason.DROP_UFRAG_FLOOD: 1,
    }
    assert relay.get_flow(port=40001).id == ON_CLIENT_LINK.id  # not moved


@pytest.mark.parametrize("idle_units", [IDLE, 0x8000])
def test_seen_wraps_without_harm(relay: Relay, idle_units: int) -> None:
    """seen is 16 bits: a flow last seen half a cycle ago is idle, not in the future."""
    flow_seen_ago(ON_CLIENT_LINK, idle_units)(relay)
    assert relay.run(STUN).reason == Reason.FWD_STUN_NEW


def test_a_config_write_keeps_the_other_fields(relay: Relay) -> None:
    """The harness's configure() (like datapath.maps.write_config) changes only its fields."""
    relay.limits(ufrag_flow_limit=1)
    configured(TUNNEL_ADDR, 6080)(relay)
    cfg = relay.maps["config"][ct.c_uint32(0)]
    assert cfg.ufrag_flow_limit == 1 and cfg.wall_offset_ns and cfg.tunnel_ifindex[0]


def test_without_txr_is_still_refused_for_new_flows(relay: Relay) -> None:
    without_txr(NEAR)(relay)
    assert relay.run(STUN).reason == Reason.DROP_UNKNOWN_TXR
