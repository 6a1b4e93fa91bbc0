"""The C program against the shared wire-format vectors (tests/vectors/wire.json, made by
`python -m tests.vectors.generate`): the same bytes must give the same answers as in Python.
Every vector becomes a case; its description says what the vector holds."""

from __future__ import annotations

import json
from pathlib import Path

from control.reasons import Reason
from lab.fibsandbox import CLIENT_LINK, TXR_LINK
from tests.bpf.bpfharness import (
    ETH_P_IPV6,
    NEAR,
    TUNNEL_PORT,
    VIA_TXR_GATEWAY,
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
    mac,
    tunnelled,
    with_flow,
    with_flow6,
    with_keys,
    with_limits,
    with_txr,
    with_vip,
)
from wire.encap import ip_version, parse_ipv4_udp, parse_udp
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


def _keys(keys: dict[str, str]) -> Setup:
    return with_keys({int(k): bytes.fromhex(v) for k, v in keys.items()})


def _ufrag_vector(ufrag: str) -> dict:
    return next(v for v in VECTORS["ufrag"] if v["ufrag"] == ufrag)


def _routed(description: str, payload: bytes, vec: dict) -> Case:
    """A Binding request carrying the ufrag vector vec, with vec's key loaded and its
    transceiver registered at NEAR's address: tunnelled there, the flow created."""
    txr = Txr(vec["cluster"], vec["transceiver"], NEAR.addr, NEAR.port)
    frame = client_frame(payload)
    return Case(
        description,
        frame,
        tunnelled(frame, txr),
        XDP_REDIRECT,
        Reason.FWD_STUN_NEW,
        setup=(
            with_keys({vec["key_id"]: bytes.fromhex(vec["key"])}),
            with_txr(txr),
            at_epoch(vec["epoch"]),
        ),
        learns=txr,
    )


def _ufrag_epoch_cases() -> list[Case]:
    """The lifetime rule: a ufrag of each vector's epoch, the program's clock at its `now`."""
    out = []
    for i, v in enumerate(VECTORS["ufrag_epoch"]):
        frame = client_frame(binding(NEAR, epoch=v["epoch"]))
        fresh = v["fresh"]
        out.append(
            Case(
                f"ufrag epoch {i}: minted {v['epoch']}, now {v['now']}, lifetime "
                f"{v['max_age']}: {'fresh' if fresh else 'expired'}",
                frame,
                tunnelled(frame, NEAR) if fresh else None,
                XDP_REDIRECT if fresh else XDP_DROP,
                Reason.FWD_STUN_NEW if fresh else Reason.DROP_UFRAG_EXPIRED,
                setup=(at_epoch(v["now"]), with_limits(ufrag_max_age=v["max_age"])),
                learns=NEAR if fresh else None,
            )
        )
    return out


def _ufrag_cases() -> list[Case]:
    return [
        _routed(
            f"ufrag {i} (key {v['key_id']}, cluster {v['cluster']}, transceiver "
            f"{v['transceiver']}) is routed",
            build_binding_request(v["ufrag"] + ":Vec1"),
            v,
        )
        for i, v in enumerate(VECTORS["ufrag"])
    ]


def _ufrag_invalid_cases() -> list[Case]:
    return [
        Case(
            f"invalid ufrag {i} ({v['reason']}): {v['ufrag']!r}",
            client_frame(build_binding_request(v["ufrag"] + ":Vec1")),
            None,
            XDP_DROP,
            UFRAG_REASONS[v["reason"]],
            setup=(_keys(v["keys"]),),
        )
        for i, v in enumerate(VECTORS["ufrag_invalid"])
    ]


def _stun_cases() -> list[Case]:
    out = []
    for i, v in enumerate(VECTORS["stun"]):
        packet = bytes.fromhex(v["packet"])
        if "ufrag" in v:
            desc = f"STUN message {i} ({len(packet)} bytes): routed by its ufrag"
            out.append(_routed(desc, packet, _ufrag_vector(v["ufrag"])))
        else:
            desc = f"STUN message {i} ({len(packet)} bytes): {v['reason']}"
            reason = STUN_REASONS[v["reason"]]
            out.append(Case(desc, client_frame(packet), None, XDP_DROP, reason))
    return out


def _encap_cases() -> list[Case]:
    out = []
    for i, v in enumerate(VECTORS["encap"]):
        inner, outer = bytes.fromhex(v["inner"]), bytes.fromhex(v["outer"])
        d = parse_ipv4_udp(inner)
        # an inner Binding request is routed by its ufrag: make that name the vector's
        # transceiver, with the flow already pointing there, so both paths must emit exactly
        # "outer"
        setup: list[Setup] = [configured(v["relay_addr"], TUNNEL_PORT)]
        try:
            key = _ufrag_vector(routing_ufrag(d.payload))
            ids, reason = (key["cluster"], key["transceiver"]), Reason.FWD_STUN_KNOWN
            setup.append(with_keys({key["key_id"]: bytes.fromhex(key["key"])}))
        except (StunError, StopIteration):
            ids, reason = (3, 1000), Reason.FWD_FLOW
        txr = Txr(*ids, v["txr_addr"], v["txr_port"])
        where = {"client": d.src, "port": d.sport, "vip": d.dst, "vip_port": d.dport}
        setup += [
            with_vip(d.dst, d.dport),
            with_txr(txr),
            with_flow(txr, **where),
        ]
        out.append(
            Case(
                f"encap {i}: {d.src}:{d.sport} -> {d.dst}:{d.dport} tunnelled to "
                f"{v['txr_addr']}:{v['txr_port']} ({reason.label})",
                eth(inner),
                # every vector transceiver is off-link: the sandbox's default route via txr0's
                # gateway
                VIA_TXR_GATEWAY + outer,
                XDP_REDIRECT,
                reason,
                setup=tuple(setup),
            )
        )
    return out


def _encap6_cases() -> list[Case]:
    """The IPv6 client vectors: the same two paths as _encap_cases, from an IPv6 frame."""
    out = []
    for i, v in enumerate(VECTORS["encap6"]):
        inner, outer = bytes.fromhex(v["inner"]), bytes.fromhex(v["outer"])
        d = parse_udp(inner)
        setup: list[Setup] = [configured(v["relay_addr"], TUNNEL_PORT)]
        try:
            key = _ufrag_vector(routing_ufrag(d.payload))
            ids, reason = (key["cluster"], key["transceiver"]), Reason.FWD_STUN_KNOWN
            setup.append(with_keys({key["key_id"]: bytes.fromhex(key["key"])}))
        except (StunError, StopIteration):
            ids, reason = (3, 1000), Reason.FWD_FLOW
        txr = Txr(*ids, v["txr_addr"], v["txr_port"])
        where = {"client": d.src, "port": d.sport, "vip": d.dst, "vip_port": d.dport}
        setup += [with_vip(d.dst, d.dport), with_txr(txr), with_flow6(txr, **where)]
        out.append(
            Case(
                f"encap6 {i}: [{d.src}]:{d.sport} -> [{d.dst}]:{d.dport} tunnelled to "
                f"{v['txr_addr']}:{v['txr_port']} ({reason.label})",
                eth(inner, ethertype=ETH_P_IPV6),
                VIA_TXR_GATEWAY + outer,
                XDP_REDIRECT,
                reason,
                setup=tuple(setup),
            )
        )
    return out


def _decap_cases() -> list[Case]:
    """The transceiver -> relay vectors of both families, in on the tunnel link: the inner
    packet one hop less leaves (IPv4 clients by the sandbox's IPv4 default route, back out of
    txr0; IPv6 ones by its IPv6 default route, out of cli0)."""
    out = []
    for i, v in enumerate(VECTORS["decap"]):
        tunnel, forwarded = bytes.fromhex(v["tunnel"]), bytes.fromhex(v["forwarded"])
        v6 = ip_version(forwarded) == 6
        txr = Txr(3, 1000 + i, v["txr_addr"], v["txr_port"])
        where = {
            "client": v["client_addr"],
            "port": v["client_port"],
            "vip": v["vip_addr"],
            "vip_port": v["vip_port"],
        }
        flow = with_flow6(txr, **where) if v6 else with_flow(txr, **where)
        head = (
            mac(CLIENT_LINK.gateway_mac) + mac(CLIENT_LINK.mac) + ETH_P_IPV6.to_bytes(2, "big")
            if v6
            else VIA_TXR_GATEWAY
        )
        out.append(
            Case(
                f"decap {i}: {v['txr_addr']}:{v['txr_port']} -> {v['vip_addr']}:{v['vip_port']}"
                f" to {v['client_addr']}:{v['client_port']}",
                eth(tunnel, dst=TXR_LINK.mac, src=TXR_LINK.gateway_mac),
                head + forwarded,
                XDP_REDIRECT if v6 else XDP_TX,
                Reason.FWD_DECAP,
                setup=(
                    configured(v["relay_addr"], v["relay_port"]),
                    with_vip(v["vip_addr"], v["vip_port"]),
                    with_txr(txr),
                    flow,
                ),
                ingress=TXR_LINK.name,
            )
        )
    return out


def test_every_vector_kind_is_covered() -> None:
    kinds = ("ufrag", "ufrag_invalid", "ufrag_epoch", "encap", "encap6", "decap", "stun")
    assert {"siphash", *kinds} <= set(VECTORS)
    assert all(VECTORS[k] for k in kinds)


def test_encap_vectors_agree_with_themselves() -> None:
    """The fields an encap vector names are the ones its inner and outer packets hold."""
    for v in VECTORS["encap"]:
        inner, outer = bytes.fromhex(v["inner"]), bytes.fromhex(v["outer"])
        d = parse_ipv4_udp(inner)
        assert (d.src, d.sport, d.dport) == (v["client_addr"], v["client_port"], v["vip_port"])
        assert int.from_bytes(outer[20:22], "big") == v["entropy"]  # the outer UDP source port


@cases(
    *_ufrag_cases(),
    *_ufrag_invalid_cases(),
    *_stun_cases(),
    *_encap_cases(),
    *_encap6_cases(),
    *_decap_cases(),
    *_ufrag_epoch_cases(),
)
def test_vector(relay: Relay, case: Case) -> None:
    check(relay, case)
