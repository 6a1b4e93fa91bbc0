"""The C program against the shared wire-format vectors (tests/vectors/wire.json, made by
`python -m tests.vectors.generate`): the same bytes must give the same answers as in Python."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpfharness import NEAR, TUNNEL_PORT, XDP_REDIRECT, Relay, Txr, client_frame, eth, mac

from control.reasons import Reason
from lab.fibsandbox import TXR_LINK
from wire.encap import parse_ipv4_udp
from wire.stun import StunError, build_binding_request, routing_ufrag

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "wire.json").read_text())

# wire's reason names -> the relay's verdict for a client packet to a VIP without a flow
STUN_REASONS = {
    "not_stun": Reason.DROP_NO_FLOW,  # not STUN: follows the (missing) flow
    "not_binding": Reason.DROP_NO_FLOW,  # other STUN: follows the flow map too
    "truncated": Reason.DROP_TRUNCATED,
    "bad_cookie": Reason.DROP_BAD_COOKIE,
    "no_username": Reason.DROP_NO_USERNAME,
    "bad_ufrag": Reason.DROP_BAD_UFRAG,
}
UFRAG_REASONS = {
    "bad_ufrag": Reason.DROP_BAD_UFRAG,
    "unknown_key": Reason.DROP_UNKNOWN_KEY,
    "bad_tag": Reason.DROP_BAD_TAG,
}


def _ids(kind: str) -> list[str]:
    return [f"{kind}{i}" for i in range(len(VECTORS[kind]))]


def test_every_vector_kind_is_covered() -> None:
    assert {"siphash", "ufrag", "ufrag_invalid", "encap", "stun"} <= set(VECTORS)
    assert all(VECTORS[k] for k in ("ufrag", "ufrag_invalid", "encap", "stun"))


@pytest.mark.parametrize("vec", VECTORS["ufrag"], ids=_ids("ufrag"))
def test_ufrag_routes(relay: Relay, vec: dict) -> None:
    relay.keys({vec["key_id"]: bytes.fromhex(vec["key"])})
    txr = Txr(vec["cluster"], vec["transceiver"], NEAR.addr, NEAR.port)
    relay.add_txr(txr)
    out = relay.run(client_frame(build_binding_request(vec["ufrag"] + ":Vec1")))
    assert (out.action, out.reason) == (XDP_REDIRECT, Reason.FWD_STUN_NEW)
    ((_, flow),) = relay.flows()
    assert (flow.cluster, flow.id) == (vec["cluster"], vec["transceiver"])


@pytest.mark.parametrize("vec", VECTORS["ufrag_invalid"], ids=_ids("ufrag_invalid"))
def test_ufrag_invalid(relay: Relay, vec: dict) -> None:
    relay.keys({int(k): bytes.fromhex(v) for k, v in vec["keys"].items()})
    username = vec["ufrag"] + ":Vec1"
    out = relay.run(client_frame(build_binding_request(username)))
    assert out.reason == UFRAG_REASONS[vec["reason"]]
    assert relay.flows() == []


def _ufrag_vector(ufrag: str) -> dict:
    return next(v for v in VECTORS["ufrag"] if v["ufrag"] == ufrag)


@pytest.mark.parametrize("vec", VECTORS["stun"], ids=_ids("stun"))
def test_stun(relay: Relay, vec: dict) -> None:
    packet = bytes.fromhex(vec["packet"])
    if "ufrag" in vec:
        key = _ufrag_vector(vec["ufrag"])
        relay.keys({key["key_id"]: bytes.fromhex(key["key"])})
        relay.add_txr(Txr(key["cluster"], key["transceiver"], NEAR.addr, NEAR.port))
        expected = Reason.FWD_STUN_NEW
    else:
        expected = STUN_REASONS[vec["reason"]]
    assert relay.run(client_frame(packet)).reason == expected


@pytest.mark.parametrize("vec", VECTORS["encap"], ids=_ids("encap"))
def test_encap_output_is_the_vector(relay: Relay, vec: dict) -> None:
    inner, outer = bytes.fromhex(vec["inner"]), bytes.fromhex(vec["outer"])
    d = parse_ipv4_udp(inner)
    assert (d.src, d.sport, d.dport) == (vec["client_addr"], vec["client_port"], vec["vip_port"])
    # an inner Binding request is routed by its ufrag: make that name the vector's transceiver,
    # with the flow already pointing there, so both paths must emit exactly "outer"
    try:
        key = _ufrag_vector(routing_ufrag(d.payload))
        ids, expected = (key["cluster"], key["transceiver"]), Reason.FWD_STUN_KNOWN
        relay.keys({key["key_id"]: bytes.fromhex(key["key"])})
    except (StunError, StopIteration):
        ids, expected = (3, 1000), Reason.FWD_FLOW
    txr = Txr(*ids, vec["txr_addr"], vec["txr_port"])
    relay.configure(vec["relay_addr"], TUNNEL_PORT)
    relay.add_vip(d.dst, d.dport)
    relay.add_txr(txr)
    relay.set_flow(txr, client=d.src, port=d.sport, vip=d.dst, vip_port=d.dport)
    frame = eth(inner)
    out = relay.run(frame)
    assert out.counts == {expected: (1, len(frame))}
    # every vector transceiver is off-link: the sandbox's default route via txr0's gateway
    assert out.action == XDP_REDIRECT
    assert out.data[:14] == mac(TXR_LINK.gateway_mac) + mac(TXR_LINK.mac) + b"\x08\x00"
    assert out.data[14:] == outer
    assert int.from_bytes(out.data[34:36], "big") == vec["entropy"]
