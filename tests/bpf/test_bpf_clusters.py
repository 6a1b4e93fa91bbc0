"""Clusters (docs/fleet.md, docs/wire-format.md §4): a relay serves the clusters in its
`clusters` map, its own and remote ones, and forwards to a remote cluster's transceiver exactly
as to its own, straight to that transceiver's tunnel address (the FIB picks the backbone), both
ways. A ufrag naming a cluster it does not serve is drop_unknown_cluster, one naming a missing
transceiver of a served cluster drop_unknown_txr; neither leaves a flow."""

from __future__ import annotations

import ctypes as ct

from control.reasons import Reason
from datapath.maps import CLUSTER_REMOTE
from lab.fibsandbox import NEAR_TXR
from tests.bpf.bpfharness import (
    CLIENT,
    CLIENT_PORT,
    NEAR,
    RTP,
    TUNNEL_ADDR,
    TUNNEL_PORT,
    TXR_LINK,
    VIA_CLIENT_GATEWAY,
    VIP,
    VIP_PORTS,
    XDP_DROP,
    XDP_REDIRECT,
    Relay,
    Txr,
    binding,
    client_frame,
    eth,
    tunnelled,
)
from wire.encap import forward_hop, ipv4_udp

# A transceiver of another cluster (another region), reached over the same routes in the sandbox:
# to the relay, a remote transceiver is an address in the map like any other.
REMOTE_CLUSTER = NEAR.cluster + 40
REMOTE = Txr(REMOTE_CLUSTER, 3, NEAR_TXR[0], 5100)
UNSERVED = Txr(NEAR.cluster + 41, 3, NEAR_TXR[0], 5100)


def serve_cluster(relay: Relay, cluster: int, kind: int = CLUSTER_REMOTE) -> None:
    relay.maps["clusters"][ct.c_uint32(cluster)] = ct.c_uint32(kind)


def test_a_ufrag_of_a_cluster_not_served_is_dropped_as_such(relay: Relay) -> None:
    frame = client_frame(binding(UNSERVED))
    out = relay.run(frame)
    assert (out.action, out.reason, out.data) == (XDP_DROP, Reason.DROP_UNKNOWN_CLUSTER, frame)
    assert relay.flows() == []


def test_a_served_cluster_without_that_transceiver_is_unknown_txr(relay: Relay) -> None:
    serve_cluster(relay, REMOTE_CLUSTER)
    frame = client_frame(binding(REMOTE))
    out = relay.run(frame)
    assert (out.action, out.reason, out.data) == (XDP_DROP, Reason.DROP_UNKNOWN_TXR, frame)
    assert relay.flows() == []


def test_a_remote_clusters_call_goes_straight_to_its_transceiver_both_ways(relay: Relay) -> None:
    serve_cluster(relay, REMOTE_CLUSTER)
    relay.add_txr(REMOTE)
    stun = client_frame(binding(REMOTE))
    out = relay.run(stun)
    assert (out.action, out.reason) == (XDP_REDIRECT, Reason.FWD_STUN_NEW)
    assert out.data == tunnelled(stun, REMOTE)
    ((_, flow),) = relay.flows()
    assert (flow.cluster, flow.id) == (REMOTE.cluster, REMOTE.id)
    # later packets follow the flow
    media = client_frame(RTP)
    out = relay.run(media)
    assert (out.action, out.reason, out.data) == (
        XDP_REDIRECT,
        Reason.FWD_FLOW,
        tunnelled(media, REMOTE),
    )
    # the remote transceiver's reply comes back through this relay and leaves from the VIP
    reply = eth(ipv4_udp(VIP, VIP_PORTS[0], CLIENT, CLIENT_PORT, RTP))
    tunnel = eth(
        ipv4_udp(REMOTE.addr, REMOTE.port, TUNNEL_ADDR, TUNNEL_PORT, reply[14:]),
        dst=TXR_LINK.mac,
        src=NEAR_TXR[1],
    )
    out = relay.run(tunnel, ingress=TXR_LINK.name)
    assert (out.action, out.reason) == (XDP_REDIRECT, Reason.FWD_DECAP)
    assert out.data == VIA_CLIENT_GATEWAY + forward_hop(reply[14:])


def test_a_local_transceiver_in_the_map_serves_its_cluster(relay: Relay) -> None:
    """The harness (like the controller) lists the cluster of every transceiver it adds: a
    missing id of that cluster is unknown_txr, not unknown_cluster."""
    frame = client_frame(binding(Txr(NEAR.cluster, 999, NEAR.addr, NEAR.port)))
    assert relay.run(frame).reason == Reason.DROP_UNKNOWN_TXR
