"""A call on a remote cluster's transceiver through the XDP relays (docs/fleet.md): transceiver
1 is of cluster 2 and registers in a registry of its own (another region's Redis); the relays'
registry has a cluster record naming it. Both relays follow it, serve cluster 2 as remote, are
registered there (so that transceiver takes their tunnel datagrams), and carry its call in the
kernel exactly as a local one; a call to cluster 1 goes on beside it. The remote registry going
away keeps cluster 2's calls up (its view is kept for --remote-grace)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab import netns
from lab.calldriver import CallDriver
from lab.edge import EdgeLab
from lab.wait import wait_until
from tests.e2e.e2ehelp import MAX_GAP_MS, carrier, delta, drops, report
from wire import registry, ufrag

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]
REMOTE = 2


@pytest.fixture
def lab() -> Iterator[EdgeLab]:
    with EdgeLab(remote_cluster=REMOTE) as lab:
        yield lab
    assert not netns.list_namespaces(lab.prefix), "lab namespaces left behind"
    assert not lab.tmpdir.exists()


def test_a_remote_clusters_call_goes_through_the_relays(lab: EdgeLab) -> None:
    for r in lab.relays:
        shown = lab.map_show(r.index)
        assert shown["clusters"] == {"1": "local", str(REMOTE): "remote"}
        assert {(t["cluster"], t["id"]) for t in shown["transceivers"]} == {(1, 7), (REMOTE, 8)}
    remote = lab.registry_of(1).client()
    try:
        relays, _ = registry.read_relays(remote)  # both relays registered over there
        assert set(relays) == {r.tunnel_addr for r in lab.relays}
    finally:
        remote.close()
    before = [lab.stats(r.index) for r in lab.relays]
    d = CallDriver(lab, [lab.txrs[0].url, lab.txrs[1].url])
    try:
        for _ in range(2):
            d.wait_call()
        hint = ufrag.decode(d.calls[1]["ufrag"])
        assert (hint.cluster, hint.transceiver) == (REMOTE, 8)
        for i in range(2):
            d.wait_rtp(i, 100)
        where = [carrier(lab, d, i) for i in range(2)]
        assert [txr for _, txr in where] == [7, 8]
        after = [lab.stats(r.index) for r in lab.relays]
        relay = where[1][0]
        assert delta(after[relay], before[relay], "fwd_flow") >= 100
        assert delta(after[relay], before[relay], "fwd_decap") >= 100
        assert [drops(s) for s in after] == [{}, {}]
        # The remote registry goes away: its view is kept, the call goes on.
        assert lab.remote_redis is not None
        lab.remote_redis.stop()
        wait_until(
            lambda: all("unreachable" in p.text() for p in lab.state.controllers.values()),
            10,
            "both controllers to notice",
        )
        s = d.wait_rtp(1, 100)
        assert s["state"] == "connected" and s["max_gap_ms"] < MAX_GAP_MS
        for r in lab.relays:
            assert (REMOTE, 8) in {
                (t["cluster"], t["id"]) for t in lab.map_show(r.index)["transceivers"]
            }
        report("remote cluster call", carriers=where, max_gap_ms=s["max_gap_ms"])
    finally:
        d.close()
