"""Faults on the relay side mid-call: the controller killed, the client moved to the other
relay by a route change (with and without Redis), the carrying relay replaced by a fresh one
(maps gone)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from lab.calldriver import CallDriver
from lab.edge import EdgeLab
from lab.wait import wait_until
from tests.e2e.e2ehelp import CONSENT_INTERVAL_MAX_MS, MAX_GAP_MS, carrier, delta, drops, report

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]


def test_controller_killed_and_restarted_loses_nothing(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    d = place(lab.txrs[0].url)
    d.wait_rtp(0, 50)
    relay, _ = carrier(lab, d, 0)
    before = lab.stats(relay)
    lab.kill_controller(relay, signal.SIGKILL)
    d.wait_rtp(0, 100)  # two seconds of audio with no controller at all
    t0 = time.monotonic()
    lab.start_controller(relay)
    restart_s = time.monotonic() - t0
    s = d.wait_rtp(0, 100)
    after = lab.stats(relay)
    assert drops(after) == drops(before) == {}
    assert delta(after, before, "fwd_flow") >= 200 and delta(after, before, "fwd_decap") >= 200
    assert s["max_gap_ms"] < MAX_GAP_MS
    assert carrier(lab, d, 0)[0] == relay  # the flow never left the map
    final = d.hangup()[0]
    assert final["sent"] - final["rtp"] <= 3, final  # every packet echoed (a few in flight)
    report(
        "controller kill", relay=relay, restart_s=round(restart_s, 2), max_gap_ms=s["max_gap_ms"]
    )


def test_client_moved_to_the_other_relay(lab: EdgeLab, place: Callable[..., CallDriver]) -> None:
    d = place(lab.txrs[0].url)
    d.wait_rtp(0, 50)
    old, txr = carrier(lab, d, 0)
    new = 1 - old
    # The old relay's controller must have written the flow to Redis before the move.
    key = "edge:flow:{}:{}:{}:{}".format(*d.calls[0]["local"], lab.vip, lab.vip_port)
    r = lab.redis.client() if lab.redis else None
    assert r is not None
    try:
        wait_until(lambda: r.get(key), 5, "the flow in Redis")
    finally:
        r.close()
    before_new = lab.stats(new)
    gap_before = d.stats()[0]["max_gap_ms"]
    lab.route_client(d.calls[0]["local"][0], new)
    s = d.wait_rtp(0, 100)
    after_old, after_new = lab.stats(old), lab.stats(new)
    # The new relay took the flow over (slow path once, then XDP) and carries the replies.
    assert delta(after_new, before_new, "pass_slow_path") >= 1
    assert delta(after_new, before_new, "fwd_flow") >= 90
    assert delta(after_new, before_new, "fwd_decap") >= 90
    # and the old relay carries nothing of it any more.
    d.wait_rtp(0, 50)
    assert delta(lab.stats(old), after_old, "fwd_decap") == 0
    assert delta(lab.stats(old), after_old, "fwd_flow") == 0
    assert (new, txr) in lab.carrier(tuple(d.calls[0]["local"]))
    assert drops(after_new) == {}
    assert s["max_gap_ms"] < MAX_GAP_MS
    report("route move", old=old, new=new, max_gap_ms=s["max_gap_ms"], before_ms=gap_before)


def test_relay_replaced_resumes_through_the_slow_path(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    d = place(lab.txrs[1].url)
    d.wait_rtp(0, 50)
    relay, _ = carrier(lab, d, 0)
    key = "edge:flow:{}:{}:{}:{}".format(*d.calls[0]["local"], lab.vip, lab.vip_port)
    r = lab.redis.client() if lab.redis else None
    assert r is not None
    try:
        wait_until(lambda: r.get(key), 5, "the flow in Redis")
    finally:
        r.close()
    lab.kill_controller(relay, signal.SIGTERM)
    lab.unload(relay)  # program and maps gone
    lab.load(relay)
    assert lab.flows(relay) == []
    lab.start_controller(relay)
    ready = time.monotonic()
    rtp_ready = d.stats()[0]["rtp"]
    wait_until(lambda: d.stats()[0]["rtp"] >= rtp_ready + 3, 5, "audio to resume", step=0.01)
    resumed_ms = (time.monotonic() - ready) * 1000
    assert resumed_ms < 1000  # a few packets after the controller is up
    s = d.wait_rtp(0, 50)
    after = lab.stats(relay)
    assert after["pass_slow_path"] >= 1 and after["fwd_flow"] >= 40 and after["fwd_decap"] >= 40
    assert carrier(lab, d, 0)[0] == relay
    # Before the controller synced the fresh maps: client packets had no flow, a consent check
    # found no key (or cluster, or transceiver) loaded yet, replies came from a tunnel address
    # not yet known, or (once it was) for a client whose flow the slow path had not put back
    # yet. Once it runs, nothing more is dropped.
    window = {
        "drop_no_flow",
        "drop_unknown_key",
        "drop_unknown_cluster",
        "drop_unknown_txr",
        "drop_tunnel_stranger",
        "drop_decap_no_flow",
    }
    assert drops(after).keys() <= window
    d.wait_rtp(0, 50)
    assert drops(lab.stats(relay)) == drops(after)
    report(
        "relay replaced",
        relay=relay,
        outage_gap_ms=s["max_gap_ms"],
        rtp_at_ready=rtp_ready,
        resumed_ms_after_ready=round(resumed_ms),
        slow_path=after["pass_slow_path"],
    )


def test_client_moved_with_redis_down_resumes_at_the_next_consent_check(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    d = place(lab.txrs[0].url)
    d.wait_rtp(0, 50)
    old, txr = carrier(lab, d, 0)
    new = 1 - old
    assert lab.redis is not None
    lab.redis.stop()  # no flow cache: the new relay's slow path cannot find the call
    before_new = lab.stats(new)
    lab.route_client(d.calls[0]["local"][0], new)
    s = d.wait_rtp(0, 50, timeout=CONSENT_INTERVAL_MAX_MS / 1000 + 10)
    after_new = lab.stats(new)
    # The next consent check is a Binding request: the new relay routes it by its ufrag and
    # learns the flow in the kernel; media follows from then on.
    assert delta(after_new, before_new, "fwd_stun_new") >= 1
    assert delta(after_new, before_new, "fwd_flow") >= 40
    assert delta(after_new, before_new, "fwd_decap") >= 40
    assert (new, txr) in lab.carrier(tuple(d.calls[0]["local"]))
    # Until then its packets went to the slow path, which had no Redis to ask.
    assert delta(after_new, before_new, "pass_slow_path") >= 1
    assert s["max_gap_ms"] < CONSENT_INTERVAL_MAX_MS + 1000, s
    report("route move, redis down", old=old, new=new, max_gap_ms=s["max_gap_ms"])
