"""Per-CPU flow copies (bpf/flowcopy.h): IPv4 flow hits and decaps answered by this CPU's copy
of the flow, and every change to a flow making the copies stale at once: a move by the program
(the slot's version), a write by the controller (txr_gen), and otherwise the end of the clock
unit the copy was made in. BPF_PROG_TEST_RUN runs on the calling CPU: the tests pin the harness's
namespace thread to one CPU, so consecutive packets share one copy."""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable

import pytest

from control.reasons import Reason
from tests.bpf.bpfharness import (
    CLIENT_PORT,
    NEAR,
    ON_CLIENT_LINK,
    RTP,
    TXR_LINK,
    VIA_TX_TXR,
    XDP_DROP,
    Relay,
    binding,
    client_frame,
    reply_from,
    seen_now,
    tunnelled,
)

FRAME = client_frame(RTP)


pytestmark = pytest.mark.usefixtures("one_cpu")  # tests/bpf/conftest.py


def within_one_unit(steps: Callable[[], None]) -> None:
    """Run steps (which reset what they need) until they ran within one unit of the coarse
    clock: a copy lapses when the unit ends, which would change what a step proves."""
    for _ in range(5):
        before = seen_now()
        steps()
        if seen_now() == before:
            return
    raise AssertionError("the coarse clock's unit ended during every try")


def test_a_flow_hit_is_answered_by_its_copy_until_the_controller_bumps(relay: Relay) -> None:
    """Proof that the copy answers: the flow deleted behind the program's back (as an LRU
    eviction does) still forwards from the copy; once txr_gen moves on (the controller's rule
    after it deletes or writes flows) the next packet finds no flow."""

    def steps() -> None:
        relay.reset()
        relay.set_flow(NEAR, live=True)
        for _ in range(2):  # the first copies the flow, the second its cached endpoint
            assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
        copies = relay.flow_copies()
        assert copies and all((c.val.cluster, c.val.id) == (NEAR.cluster, NEAR.id) for c in copies)
        relay.maps["flows"].clear()
        out = relay.run(FRAME)
        assert (out.reason, out.data) == (Reason.FWD_FLOW, tunnelled(FRAME, NEAR))
        relay.bump_txr_gen()
        out = relay.run(FRAME)
        assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_NO_FLOW)

    within_one_unit(steps)


def test_a_moved_flow_is_stale_at_once_on_the_return_path(relay: Relay) -> None:
    """An idle flow to NEAR, copied by NEAR's reply; a Binding request moves it to another
    transceiver. NEAR's next reply must be refused: the move bumped the slot's version, so the
    copy that still names NEAR is not used."""

    def steps() -> None:
        relay.reset()
        relay.set_flow(NEAR)  # idle: a Binding request for another transceiver may move it
        assert relay.run(reply_from(NEAR), ingress=TXR_LINK.name).reason == Reason.FWD_DECAP
        assert [c.val.id for c in relay.flow_copies()] == [NEAR.id]
        assert relay.run(client_frame(binding(ON_CLIENT_LINK))).reason == Reason.FWD_STUN_NEW
        out = relay.run(reply_from(NEAR), ingress=TXR_LINK.name)
        assert (out.action, out.reason) == (XDP_DROP, Reason.DROP_DECAP_WRONG_TXR)
        out = relay.run(reply_from(ON_CLIENT_LINK), ingress=TXR_LINK.name)
        assert out.reason == Reason.FWD_DECAP
        out = relay.run(FRAME)
        moved = tunnelled(FRAME, ON_CLIENT_LINK, VIA_TX_TXR)
        assert (out.reason, out.data) == (Reason.FWD_FLOW, moved)

    within_one_unit(steps)


def test_client_packets_refresh_seen_in_the_flow_not_in_a_copy(relay: Relay) -> None:
    """A copy made by a reply carries the flow's old `seen`; the client's next packet must
    refresh `seen` in `flows` (what the idle rule and the controller read), not in the copy."""

    def steps() -> None:
        relay.reset()
        relay.set_flow(NEAR)
        flows, key = relay.maps["flows"], relay.flow_key()
        val = flows[key]
        val.seen = (seen_now() - 3) & 0xFFFF  # live (idle time 10), but not this unit
        relay.write_flow(key, val)
        assert relay.run(reply_from(NEAR), ingress=TXR_LINK.name).reason == Reason.FWD_DECAP
        for _ in range(3):
            assert relay.run(FRAME).reason == Reason.FWD_FLOW
            assert relay.get_flow().seen == seen_now()

    within_one_unit(steps)


def test_two_flows_of_one_slot_each_reach_their_own_transceiver(relay: Relay) -> None:
    """A direct-mapped slot holds one copy: two flows that hash to it take turns, and each
    packet still goes where its own flow says."""
    first = relay.flow_copy_slot(relay.flow_key())
    other = next(
        p
        for p in range(1, 65536)
        if p != CLIENT_PORT and relay.flow_copy_slot(relay.flow_key(port=p)) == first
    )
    relay.set_flow(NEAR, live=True)
    relay.set_flow(ON_CLIENT_LINK, live=True, port=other)
    frames = {NEAR: FRAME, ON_CLIENT_LINK: client_frame(RTP, port=other)}
    via = {NEAR: None, ON_CLIENT_LINK: VIA_TX_TXR}
    for txr in (NEAR, ON_CLIENT_LINK) * 3:
        out = relay.run(frames[txr])
        want = tunnelled(frames[txr], txr, via[txr]) if via[txr] else tunnelled(frames[txr], txr)
        assert (out.reason, out.data) == (Reason.FWD_FLOW, want)


def test_an_unset_generation_copies_nothing(relay: Relay) -> None:
    """txr_gen 0 (no controller initialised the maps): no copy is made or used."""
    relay.set_txr_gen(0)
    relay.set_flow(NEAR, live=True)
    for _ in range(2):
        assert relay.run(FRAME).data == tunnelled(FRAME, NEAR)
    relay.maps["flows"].clear()
    assert relay.run(FRAME).reason == Reason.DROP_NO_FLOW


def test_the_slot_function_is_the_programs(relay: Relay) -> None:
    """flow_copy_slot (Python) and flow_copy_slot_of (C) agree: a packet's copy is where the harness
    looks, for keys spread over the whole slot range."""
    for port in (1, 80, 50000, 65535):
        relay.reset()
        relay.set_flow(NEAR, live=True, port=port)
        assert relay.run(client_frame(RTP, port=port)).reason == Reason.FWD_FLOW
        assert relay.flow_copies(port=port)  # in the slot the harness computed
    slots = {relay.flow_versions.max_entries, relay.flow_copy_map.max_entries}
    assert slots | {relay.flow_copy_tags.max_entries} == {1 << 14}
    assert ct.sizeof(relay.flow_copy_map.Leaf._type_) == 48  # per CPU (bpf/constants.h)
