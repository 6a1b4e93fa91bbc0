"""ICE restart through the real XDP relays (project issue 11): a call is up through the VIP,
the client's network changes mid-call (a new address on its link, the old address removed, so
its old path is silent), the client PATCHes new ICE credentials, and the same call carries on:
the same call resource on the same transceiver (no new call, one restart counted), the same
DTLS association (no DTLS handshake record crosses the wire again), a new server ufrag that
routes to the same transceiver, and a relay that learned the new flow from that ufrag's first
check (fwd_stun_new, `relayctl flows --json`). With an aiortc client and headless Chromium.
The audio gap is printed ([e2e] lines) and measured in bench/ice_restart.py, never asserted."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from lab.browsercall import CHROMIUM
from lab.browserrestart import BrowserDriver
from lab.calldriver import CallDriver
from lab.edge import EdgeLab
from lab.netchange import DtlsRecords, client_addrs, move_client, moved_addr, txr_metrics
from tests.e2e.e2ehelp import delta, drops, report
from wire import ufrag

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


def _totals(lab: EdgeLab) -> list[dict[str, int]]:
    return [lab.stats(r.index) for r in lab.relays]


def _assert_same_call_restarted(lab: EdgeLab, txr: int, restarts: int) -> None:
    """One call on transceiver `txr`, still up, restarted `restarts` times; none elsewhere."""
    m = txr_metrics(lab, txr)
    assert m["txr_calls_started_total"] == 1 and m["txr_calls_active"] == 1, m
    assert m["txr_ice_restarts_total"] == restarts
    assert not [k for k in m if k.startswith("txr_calls_ended_total") and m[k]]
    other = txr_metrics(lab, 1 - txr)
    assert other["txr_calls_started_total"] == other["txr_ice_restarts_total"] == 0


def _assert_new_flow(
    lab: EdgeLab, before: list[dict[str, int]], client: tuple[str, int], txr_id: int
) -> int:
    """The new client address:port is a flow of exactly one relay, to the same transceiver,
    created by a Binding request routed by its ufrag on that relay; returns the relay."""
    where = lab.carrier(client)
    assert [t for _, t in where] == [txr_id], where
    relay = where[0][0]
    assert delta(lab.stats(relay), before[relay], "fwd_stun_new") >= 1
    return relay


def test_aiortc_client_changes_network_and_the_call_goes_on(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    txr = lab.txrs[0]
    with DtlsRecords(lab) as dtls:
        d = place(txr.url)
        d.wait_rtp(0, 50)
        call = d.calls[0]
        old_local = tuple(call["local"])
        old_ufrag = call["ufrag"]
        assert [t for _, t in lab.carrier(old_local)] == [txr.id]
        hs = dtls.handshake()
        assert hs[0] >= 1 and hs[1] >= 1  # the counters see the call's one handshake
        start = _totals(lab)
        new_addr = moved_addr(0)

        move_client(lab, client_addrs(lab), new_addr)
        r = d.restart(0, new_addr)
        s = d.wait_rtp(0, 50)  # the echo resumed on the new path

        new_local = tuple(r["local"])
        assert new_local[0] == new_addr and new_local != old_local
        assert tuple(r["remote"]) == (lab.vip, lab.vip_port)
        assert r["ufrag"] != old_ufrag
        hint = ufrag.decode(r["ufrag"])
        assert (hint.cluster, hint.transceiver, hint.key_id) == (txr.cluster, txr.id, lab.key_id)
        assert r["dtls"] == "connected" and s["state"] == "connected"
        assert dtls.handshake() == hs  # the same DTLS association: no handshake record since
        _assert_same_call_restarted(lab, 0, 1)
        relay = _assert_new_flow(lab, start, new_local, txr.id)
        assert [drops(a) for a in _totals(lab)] == [drops(b) for b in start]
        gaps = [s["max_gap_ms"]]
        report("ice restart aiortc", relay=relay, patch_ms=r["ms"], gap_ms=s["max_gap_ms"])

        # A second change of network: the same again, from the moved address.
        mid = _totals(lab)
        third = moved_addr(1)
        move_client(lab, new_addr, third)
        r2 = d.restart(0, third)
        s2 = d.wait_rtp(0, 50)
        assert r2["local"][0] == third and r2["ufrag"] not in (old_ufrag, r["ufrag"])
        assert r2["location"] == r["location"] == call["location"]  # the same call resource
        assert dtls.handshake() == hs
        _assert_same_call_restarted(lab, 0, 2)
        _assert_new_flow(lab, mid, tuple(r2["local"]), txr.id)
        gaps.append(s2["max_gap_ms"])
        report("ice restart aiortc (second)", patch_ms=r2["ms"], gap_ms=s2["max_gap_ms"])
        final = d.hangup()[0]
        assert final["rtp"] >= 150
    m = txr_metrics(lab, 0)
    assert m["txr_calls_active"] == 0 and m['txr_calls_ended_total{reason="deleted"}'] == 1, m


@pytest.mark.browser
def test_chromium_changes_network_and_the_call_goes_on(lab: EdgeLab) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (Debian package chromium)")
    txr = lab.txrs[1]
    with DtlsRecords(lab) as dtls, BrowserDriver(lab, txr.url) as b:
        call = b.wait_call()
        old_local = tuple(call["local"])
        old_ufrag = call["ufrag"]
        assert tuple(call["remote"]) == (lab.vip, lab.vip_port)
        assert [t for _, t in lab.carrier(old_local)] == [txr.id]
        hs = dtls.handshake()
        assert hs[0] >= 1 and hs[1] >= 1
        start = _totals(lab)
        new_addr = moved_addr(0)

        move_client(lab, client_addrs(lab), new_addr)
        r = b.restart()

        new_local = tuple(r["local"])
        assert new_local[0] == new_addr, r
        assert r["ufrag"] != old_ufrag and r["url"] == call["url"]
        hint = ufrag.decode(r["ufrag"])
        assert (hint.cluster, hint.transceiver) == (txr.cluster, txr.id)
        assert r["state"] == "connected" and r["dtls"] == "connected"
        assert r["packets_after"] >= 50  # the echo came back on the new path
        assert dtls.handshake() == hs
        _assert_same_call_restarted(lab, 1, 1)
        relay = _assert_new_flow(lab, start, new_local, txr.id)
        assert [drops(a) for a in _totals(lab)] == [drops(b) for b in start]
        report(
            "ice restart chromium",
            relay=relay,
            detect_ms=r["detect_ms"],
            restart_ms=r["restart_ms"],
            answered_ms=r["answered_ms"],
            switch_ms=r["switch_ms"],
            gap_ms=r["gap_ms"],
            ice=r["ice_states"],
        )

        # Again, the page restarting at once (an app told of the change by the OS).
        mid = _totals(lab)
        third = moved_addr(1)
        move_client(lab, new_addr, third)
        r2 = b.restart(detect=False)
        assert r2["local"][0] == third and r2["ufrag"] not in (old_ufrag, r["ufrag"])
        assert r2["url"] == call["url"] and r2["dtls"] == "connected"
        assert r2["detect_ms"] is None and r2["packets_after"] >= 50
        assert dtls.handshake() == hs
        _assert_same_call_restarted(lab, 1, 2)
        _assert_new_flow(lab, mid, tuple(r2["local"]), txr.id)
        report(
            "ice restart chromium (at once)",
            restart_ms=r2["restart_ms"],
            answered_ms=r2["answered_ms"],
            gap_ms=r2["gap_ms"],
        )
        assert b.hangup()["state"] == "ended"
    m = txr_metrics(lab, 1)
    assert m["txr_calls_active"] == 0
