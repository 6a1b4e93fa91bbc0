"""A standard aiortc call through the XDP relays: the client only knows the VIP."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lab.calldriver import CallDriver
from lab.edge import EdgeLab
from tests.e2e.e2ehelp import MAX_GAP_MS, carrier, delta, drops, report
from wire import ufrag

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


def test_calls_are_echoed_through_the_relays(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    before = [lab.stats(r.index) for r in lab.relays]
    d = place(lab.txrs[0].url, lab.txrs[1].url)
    for i, t in enumerate(lab.txrs):
        call = d.calls[i]
        assert tuple(call["remote"]) == (lab.vip, lab.vip_port)
        assert call["local"][0] in lab.client_addrs
        hint = ufrag.decode(call["ufrag"])
        assert (hint.cluster, hint.transceiver, hint.key_id) == (t.cluster, t.id, lab.key_id)
    for i in range(2):
        d.wait_rtp(i, 100)
    stats = d.stats()
    after = [lab.stats(r.index) for r in lab.relays]
    where = [carrier(lab, d, i) for i in range(2)]
    assert [txr for _, txr in where] == [lab.txrs[0].id, lab.txrs[1].id]
    for relay, _ in where:
        assert delta(after[relay], before[relay], "fwd_stun_new") >= 1
        assert delta(after[relay], before[relay], "fwd_flow") >= 100
        assert delta(after[relay], before[relay], "fwd_decap") >= 100
    assert [drops(s) for s in after] == [{}, {}]
    for s in stats:
        assert s["state"] == "connected" and s["max_gap_ms"] < MAX_GAP_MS
    report(
        "call",
        carriers=where,
        setup_ms=[c["setup_ms"] for c in d.calls],
        rtp=[s["rtp"] for s in stats],
        max_gap_ms=[s["max_gap_ms"] for s in stats],
    )
    final = d.hangup()
    assert all(s["rtp"] >= 100 for s in final)
