"""Faults of the global fleet in the globe lab (lab/globe.py, docs/fleet.md "Faults"), with the
front placing calls by the client's location, audio counted at the clients:

- a remote cluster's transceiver dies: its calls end (the client's consent check fails, every
  relay drops the call's packets, counted, once the registry forgets it), the next call from
  that region is placed on the next nearest cluster, and a call elsewhere never notices;
- the backbone path between two regions is cut: the front stops placing that region's calls
  across it (the region's relays no longer reach the far registry), a call in progress across
  it goes quiet and comes back when the path heals within the consent timeout;
- a region joins and leaves while calls run: every relay serves its cluster, then lets it go,
  and no call of another region is touched.

The withdrawn region is tests/lab/test_globe.py's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from lab.calldriver import CallDriver
from lab.globe import TXR_ID, GlobeLab, Region
from lab.wait import wait_until
from tests.e2e.e2ehelp import MAX_GAP_MS, delta, drops, report
from tests.lab.labhelp import assert_clean
from wire.defaults import REACH_FRESH, REGISTRY_TTL

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]
US, EU, AP = 0, 1, 2
CONSENT_FAILURE_S = 30 + 6 + 5  # aioice: 6 missed checks 5 s (x1.2) apart, and a margin
SA = Region("sa-east", -23.5, -46.6, 30.0, 3)


@pytest.fixture
def lab() -> Iterator[GlobeLab]:
    with GlobeLab() as lab:
        lab.start_front()
        yield lab
    assert_clean(lab.prefix)
    assert not lab.tmpdir.exists()


def via_front(lab: GlobeLab, i: int) -> CallDriver:
    """Region i's client, calling through the front with its location, as a CDN would say it."""
    r = lab.regions[i]
    return CallDriver(
        lab.client(i),  # type: ignore[arg-type]
        [lab.front_url(i)],
        headers={"X-Edge-Location": f"{r.lat},{r.lon}"},
    )


def placed(call: dict[str, Any]) -> int:
    """The cluster the front placed a call on (its Location: /v1/calls/<cluster>/<txr>/...)."""
    return int(call["location"].split("/")[3])


def local(call: dict[str, Any]) -> tuple[str, int]:
    return tuple(call["local"])  # type: ignore[return-value]


def served(lab: GlobeLab, i: int) -> set[tuple[int, int]]:
    return {(t["cluster"], t["id"]) for t in lab.map_show(i)["transceivers"]}


def reach(lab: GlobeLab, cluster: int) -> list[str]:
    """The regions whose new calls the front places on `cluster` now (its /healthz)."""
    body = lab.fetch(US, lab.front_url(US) + "/healthz")
    return list(json.loads(body)["reach"].get(str(cluster), [])) if body else []


def test_a_remote_transceiver_dies(lab: GlobeLab) -> None:
    ap, us = via_front(lab, AP), via_front(lab, US)
    try:
        c_ap, c_us = ap.wait_call(), us.wait_call()
        assert (placed(c_ap), placed(c_us)) == (2, 1)  # Mumbai's nearest cluster is eu-west's
        ap.wait_rtp(0, 50)
        us.wait_rtp(0, 50)
        assert lab.carrier(local(c_ap)) == [(AP, 2, TXR_ID)]  # entered at its own relay

        lab.kill_transceiver(EU)
        # Its registry entry expires; every relay lets it go within a pass.
        wait_until(
            lambda: all((2, TXR_ID) not in served(lab, i) for i in (US, EU, AP)),
            REGISTRY_TTL + 10,
            "every relay to forget the dead transceiver",
        )
        # From then on the AP call's packets are counted drops at its relay, sent nowhere.
        before = lab.stats(AP)
        wait_until(
            lambda: delta(lab.stats(AP), before, "drop_unknown_txr") >= 10,
            10,
            "the AP client's packets to be dropped as drop_unknown_txr",
        )
        after = lab.stats(AP)
        assert delta(after, before, "fwd_flow") == 0 and delta(after, before, "fwd_stun_new") == 0
        # The call ends at the client: its consent checks go unanswered.
        wait_until(
            lambda: ap.stats()[0]["state"] in ("failed", "closed"),
            CONSENT_FAILURE_S,
            "the AP call to end",
        )
        # The next call from AP is placed on the next nearest cluster, and talks.
        c_new = ap.call(lab.front_url(AP))
        assert placed(c_new) == 1
        s_new = ap.wait_rtp(1, 50)
        assert lab.carrier(local(c_new)) == [(AP, 1, TXR_ID)]
        # The US call never noticed.
        s_us = us.wait_rtp(0, 50)
        assert s_us["state"] == "connected" and s_us["max_gap_ms"] < MAX_GAP_MS, s_us
        assert drops(lab.stats(US)) == {}
        report(
            "globe: remote transceiver died",
            us_max_gap_ms=s_us["max_gap_ms"],
            new_call_setup_ms=c_new["setup_ms"],
            new_call_gap_ms=s_new["max_gap_ms"],
        )
    finally:
        ap.close()
        us.close()


def test_a_cut_backbone_path(lab: GlobeLab) -> None:
    ap, us = via_front(lab, AP), via_front(lab, US)
    try:
        c_ap, c_us = ap.wait_call(), us.wait_call()
        assert (placed(c_ap), placed(c_us)) == (2, 1)
        ap.wait_rtp(0, 50)
        us.wait_rtp(0, 50)
        assert "ap-south" in reach(lab, 2)

        lab.cut(AP, EU)
        at_cut = ap.stats()[0]["rtp"]
        # AP's relay reads EU's registry no more: within REACH_FRESH the front stops placing
        # AP's calls there.
        wait_until(
            lambda: "ap-south" not in reach(lab, 2),
            REACH_FRESH + 5,
            "the front to see that ap-south no longer reaches eu-west",
        )
        assert "ap-south" in reach(lab, 1) and "eu-west" in reach(lab, 2)
        c_new = ap.call(lab.front_url(AP))
        assert placed(c_new) == 1  # farther, but reachable
        ap.wait_rtp(1, 50)
        assert lab.carrier(local(c_new)) == [(AP, 1, TXR_ID)]
        # The call across the cut went quiet (what was in flight at the cut, at most) ...
        quiet = ap.stats()[0]
        assert quiet["rtp"] <= at_cut + 10, (at_cut, quiet)

        # ... and comes back when the path heals within the consent timeout: its flow, the
        # remote view (--remote-grace) and the transceiver's relay list all outlived the cut.
        lab.heal(AP, EU)
        s_old = ap.wait_rtp(0, 50, timeout=15)
        assert s_old["state"] == "connected"
        wait_until(lambda: "ap-south" in reach(lab, 2), REACH_FRESH + 5, "reach again")
        s_us = us.wait_rtp(0, 50)
        assert s_us["state"] == "connected" and s_us["max_gap_ms"] < MAX_GAP_MS, s_us
        assert drops(lab.stats(US)) == {}
        report("globe: backbone cut", across_cut_gap_ms=s_old["max_gap_ms"],
               us_max_gap_ms=s_us["max_gap_ms"])  # fmt: skip
    finally:
        ap.close()
        us.close()


def test_a_region_joins_and_leaves_while_calls_run(lab: GlobeLab) -> None:
    ap, us = via_front(lab, AP), via_front(lab, US)
    drivers = [ap, us]
    try:
        c_ap, c_us = ap.wait_call(), us.wait_call()
        ap.wait_rtp(0, 50)
        us.wait_rtp(0, 50)
        carriers = {AP: lab.carrier(local(c_ap)), US: lab.carrier(local(c_us))}
        before = {i: lab.stats(i) for i in (US, EU, AP)}

        sa = lab.add_region(SA)
        lab.wait_maps()
        for i in (US, EU, AP):
            assert lab.map_show(i)["clusters"]["3"] == "remote"
        assert lab.map_show(sa)["clusters"] == {"1": "remote", "2": "remote", "3": "local"}
        # a call from the new region lands on its own cluster; one from US reaches it too
        local_sa = CallDriver(lab.client(sa), [lab.txr_url(sa)])  # type: ignore[arg-type]
        to_sa = CallDriver(lab.client(US), [lab.txr_url(sa)])  # type: ignore[arg-type]
        drivers += [local_sa, to_sa]
        c_local, c_to = local_sa.wait_call(), to_sa.wait_call()
        local_sa.wait_rtp(0, 50)
        to_sa.wait_rtp(0, 50)
        assert lab.carrier(local(c_local)) == [(sa, 3, TXR_ID)]
        assert lab.carrier(local(c_to)) == [(US, 3, TXR_ID)]  # across the backbone
        local_sa.hangup()
        to_sa.hangup()

        lab.remove_region(sa)
        wait_until(
            lambda: all(
                "3" not in lab.map_show(i)["clusters"] and (3, TXR_ID) not in served(lab, i)
                for i in (US, EU, AP)
            ),
            15,
            "every relay to let cluster 3 go",
        )
        # The other regions' calls never noticed: same relay and cluster, no gap, no drop.
        for d in (ap, us):
            s = d.wait_rtp(0, 50)
            assert s["state"] == "connected" and s["max_gap_ms"] < MAX_GAP_MS, s
        assert {AP: lab.carrier(local(c_ap)), US: lab.carrier(local(c_us))} == carriers
        for i in (EU, AP):
            assert drops(lab.stats(i)) == drops(before[i]), i
        report(
            "globe: region joined and left",
            ap_max_gap_ms=ap.stats()[0]["max_gap_ms"],
            us_max_gap_ms=us.stats()[0]["max_gap_ms"],
            sa_setup_ms=c_local["setup_ms"],
        )
    finally:
        for d in drivers:
            d.close()
