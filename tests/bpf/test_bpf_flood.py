"""Issue 8 item 4, with a real LRU: a flood of spoofed Binding requests carrying one valid ufrag
makes its few flows and evicts nobody's. A small build (MAX_FLOWS 4096) so that the flood is
many times the map: without the per-ufrag budget it would evict every flow that was there."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from control.program import compile_relay, load_xdp_fn
from control.reasons import Reason
from tests.bpf.bpfharness import NEAR, ON_CLIENT_LINK, Relay, binding, client_frame

MAX_FLOWS = 4096
RESIDENTS = 1000  # flows of other calls, live (their clients talk)
FLOOD = 3 * MAX_FLOWS  # spoofed sources, one ufrag


@pytest.fixture
def small(relay: Relay) -> Iterator[Relay]:
    bpf = compile_relay(cflags=[f"-DMAX_FLOWS={MAX_FLOWS}"])
    try:
        r = Relay(bpf, load_xdp_fn(bpf).fd, relay.worker, relay.sandbox)
        r.reset()
        yield r
    finally:
        bpf.cleanup()


def _addr(i: int, base: str) -> str:
    return str(ipaddress.IPv4Address(base) + i)


def test_one_ufrag_flood_evicts_no_flow(small: Relay) -> None:
    assert small.maps["flows"].max_entries == MAX_FLOWS
    for i in range(RESIDENTS):
        small.set_flow(ON_CLIENT_LINK, live=True, client=_addr(i, "198.19.64.1"))
    before = {bytes(k) for k, _ in small.flows()}
    assert len(before) == RESIDENTS

    stun = binding(NEAR)
    counts_before = small.counters()
    for i in range(FLOOD):  # straight through the worker: one counter read at the end
        frame = client_frame(stun, client=_addr(i, "10.64.0.1"), port=1024 + i % 60000)
        small.worker.test_run(small.prog_fd, frame, ingress_ifindex=small.sandbox.ifindex["cli0"])
    after = small.counters()
    made = after[Reason.FWD_STUN_NEW][0] - counts_before[Reason.FWD_STUN_NEW][0]
    refused = after[Reason.DROP_UFRAG_FLOOD][0] - counts_before[Reason.DROP_UFRAG_FLOOD][0]
    assert (made, refused) == (16, FLOOD - 16)  # UFRAG_FLOW_LIMIT per window

    now = {bytes(k) for k, _ in small.flows()}
    assert before <= now, f"{len(before - now)} flows of other calls were evicted"
    assert len(now) == RESIDENTS + 16
