"""The userspace relay's per-flow fast path builds exactly what wire.encap builds."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from lab.pyrelay import FlowPlan
from wire.encap import encapsulate, ipv4_udp

addrs = st.integers(min_value=1, max_value=0xFFFFFFFE).map(lambda a: str(ipaddress.IPv4Address(a)))
ports = st.integers(min_value=1, max_value=65535)


@given(addrs, ports, addrs, ports, addrs, addrs, ports, st.binary(max_size=1500))
def test_flow_plan_matches_wire_encap(
    caddr: str,
    cport: int,
    vaddr: str,
    vport: int,
    taddr: str,
    daddr: str,
    dport: int,
    payload: bytes,
) -> None:
    plan = FlowPlan((caddr, cport), (vaddr, vport), taddr, (daddr, dport))
    inner = ipv4_udp(caddr, cport, vaddr, vport, payload)
    assert plan.build(payload) == encapsulate(inner, taddr, daddr, dport)


def test_flow_plan_edge_payloads() -> None:
    plan = FlowPlan(("198.18.1.2", 1), ("198.18.100.1", 3478), "198.18.2.1", ("198.18.2.2", 5000))
    for payload in (b"", b"\x00", b"\xff" * 3, b"\x00" * 64, b"\xff\xff" * 700):
        inner = ipv4_udp("198.18.1.2", 1, "198.18.100.1", 3478, payload)
        assert plan.build(payload) == encapsulate(inner, "198.18.2.1", "198.18.2.2", 5000)
