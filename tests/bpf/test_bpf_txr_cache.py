"""The flow's cached transceiver endpoint (bpf/relay.c flow_transceiver, docs/wire-format.md
§4): a flow hit and a decap use the endpoint the flow last looked up only while txr_gen still
has the value it was looked up under and the flow is live; a removed or moved transceiver, once
the controller bumps txr_gen, gets nothing more from its cached flows, on either path."""

from __future__ import annotations

from control.reasons import Reason
from datapath.maps import be16, be32, next_txr_gen
from tests.bpf.bpfharness import (
    NEAR,
    ON_CLIENT_LINK,
    RTP,
    TXR_LINK,
    VIA_CLIENT_GATEWAY,
    VIA_TX_TXR,
    XDP_DROP,
    XDP_REDIRECT,
    XDP_TX,
    Relay,
    Txr,
    client_frame,
    reply_from,
    tunnelled,
)
from wire.encap import forward_hop

FRAME = client_frame(RTP)
MOVED = Txr(NEAR.cluster, NEAR.id, ON_CLIENT_LINK.addr, 7000)  # NEAR's ids, another endpoint


def cache_word(txr: Txr, gen: int) -> int:
    """flow_val.txr_cache for txr looked up under gen: addr | port << 32 | gen << 48."""
    return be32(txr.addr) | be16(txr.port) << 32 | gen << 48


def decapsulated(frame: bytes) -> bytes:
    """What the relay emits for a tunnel frame: out of cli0 to the clients' gateway, the inner
    packet one hop less."""
    return VIA_CLIENT_GATEWAY + forward_hop(frame[14 + 28 :])


def test_a_flow_hit_caches_the_endpoint_under_the_generation(relay: Relay) -> None:
    relay.set_flow(NEAR, live=True)
    relay.set_txr_gen(0x1234)
    out = relay.run(FRAME)
    assert (out.action, out.reason) == (XDP_REDIRECT, Reason.FWD_FLOW)
    assert out.data == tunnelled(FRAME, NEAR)
    assert relay.get_flow().txr_cache == cache_word(NEAR, 0x1234)


def test_the_cached_endpoint_is_what_a_live_flow_uses(relay: Relay) -> None:
    """Proof that the cache, not the map, answers: with the map changed behind the program's
    back (no bump), the cached endpoint still gets the packet. The controller always bumps
    (test_a_moved_transceiver...), which is what makes the cache safe."""
    relay.set_flow(NEAR, live=True)
    # the first packet copies the flow (bpf/flowcopy.h, this CPU) and caches the
    # endpoint in the flow, the second caches it in the copy
    for _ in range(2):
        assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
    relay.remove_txr(NEAR, bump=False)
    out = relay.run(FRAME)
    assert (out.reason, out.data) == (Reason.FWD_FLOW, tunnelled(FRAME, NEAR))


def test_a_removed_transceiver_gets_nothing_once_bumped(relay: Relay) -> None:
    relay.set_flow(NEAR, live=True)
    assert relay.run(FRAME).reason == Reason.FWD_FLOW  # cached now
    relay.remove_txr(NEAR)  # delete, then bump
    out = relay.run(FRAME)
    assert (out.action, out.reason, out.data) == (XDP_DROP, Reason.DROP_UNKNOWN_TXR, FRAME)
    assert relay.get_flow().txr_cache == 0  # forgotten, not left to match a later generation


def test_a_moved_transceiver_gets_its_flows_at_the_new_endpoint(relay: Relay) -> None:
    relay.set_flow(NEAR, live=True)
    assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
    gen = relay.txr_gen()
    relay.add_txr(MOVED)  # a change: the harness bumps after the write, as the controller does
    assert relay.txr_gen() == next_txr_gen(gen)
    out = relay.run(FRAME)
    assert (out.action, out.reason) == (XDP_TX, Reason.FWD_FLOW)
    assert out.data == tunnelled(FRAME, MOVED, VIA_TX_TXR)
    assert relay.get_flow().txr_cache == cache_word(MOVED, relay.txr_gen())


def test_an_idle_flow_looks_up_again(relay: Relay) -> None:
    """A cache entry under the current generation, on a flow idle for longer than FLOW_IDLE_S,
    is not trusted: liveness bounds how old a generation can be, so 16 bits never wrap onto a
    stale endpoint."""
    relay.set_flow(NEAR)  # idle
    flow = relay.get_flow()
    flow.txr_cache = cache_word(MOVED, relay.txr_gen())  # as if MOVED had been cached
    relay.write_flow(relay.flow_key(), flow)
    out = relay.run(FRAME)
    assert (out.reason, out.data) == (Reason.FWD_FLOW, tunnelled(FRAME, NEAR))
    assert relay.get_flow().txr_cache == cache_word(NEAR, relay.txr_gen())


def test_another_generation_is_not_trusted(relay: Relay) -> None:
    relay.set_flow(NEAR, live=True)
    flow = relay.get_flow()
    stale = next_txr_gen(relay.txr_gen())
    flow.txr_cache = cache_word(MOVED, stale)
    relay.write_flow(relay.flow_key(), flow)
    out = relay.run(FRAME)
    assert (out.reason, out.data) == (Reason.FWD_FLOW, tunnelled(FRAME, NEAR))


def test_an_unset_generation_disables_the_cache(relay: Relay) -> None:
    """txr_gen 0 (a map no controller initialised): every packet looks up, nothing is cached."""
    relay.set_txr_gen(0)
    relay.set_flow(NEAR, live=True)
    for _ in range(2):
        assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
    assert relay.get_flow().txr_cache == 0
    relay.remove_txr(NEAR, bump=False)
    assert relay.run(FRAME).reason == Reason.DROP_UNKNOWN_TXR


def test_decap_accepts_the_cached_transceiver_only(relay: Relay) -> None:
    relay.set_flow(NEAR, live=True)
    assert relay.run(FRAME).reason == Reason.FWD_FLOW  # cached NEAR
    out = relay.run(reply_from(NEAR), ingress=TXR_LINK.name)
    assert (out.reason, out.data) == (Reason.FWD_DECAP, decapsulated(reply_from(NEAR)))
    out = relay.run(reply_from(ON_CLIENT_LINK), ingress=TXR_LINK.name)
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_DECAP_WRONG_TXR)


def test_decap_from_a_removed_transceiver_is_refused_once_bumped(relay: Relay) -> None:
    relay.set_flow(NEAR, live=True)
    assert relay.run(FRAME).reason == Reason.FWD_FLOW
    assert relay.run(reply_from(NEAR), ingress=TXR_LINK.name).reason == Reason.FWD_DECAP
    relay.remove_txr(NEAR)
    out = relay.run(reply_from(NEAR), ingress=TXR_LINK.name)
    assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_DECAP_WRONG_TXR)


def test_decap_fills_the_cache_of_a_live_flow(relay: Relay) -> None:
    relay.set_flow(NEAR, live=True)
    assert relay.get_flow().txr_cache == 0
    assert relay.run(reply_from(NEAR), ingress=TXR_LINK.name).reason == Reason.FWD_DECAP
    assert relay.get_flow().txr_cache == cache_word(NEAR, relay.txr_gen())
