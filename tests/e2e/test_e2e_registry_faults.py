"""Faults on the registry side mid-call: Redis restarted, a transceiver killed or draining, the
routing key rotated."""

from __future__ import annotations

import re
import secrets
import signal
import sys
import time
from collections.abc import Callable

import pytest

from lab import netns
from lab.calldriver import CallDriver
from lab.edge import EdgeLab
from lab.wait import wait_until
from tests.e2e.e2ehelp import MAX_GAP_MS, carrier, delta, report
from wire import ufrag

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"


def txr_ids(lab: EdgeLab, relay: int) -> set[int]:
    return {int(t["id"]) for t in lab.map_show(relay)["transceivers"]}


def test_redis_restart_keeps_calls_and_lets_new_ones_in(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    assert lab.redis is not None
    d = place(lab.txrs[0].url)
    d.wait_rtp(0, 50)
    lab.redis.stop()
    down = d.wait_rtp(0, 100)
    assert down["max_gap_ms"] < MAX_GAP_MS, down  # Redis down: nothing changes for a call
    new = d.call(lab.txrs[1].url)  # signalling, ufrag routing and media without Redis
    d.wait_rtp(1, 50)
    before = [lab.stats(r.index) for r in lab.relays]
    lab.redis.start()
    lab.publish_key(lab.key_id, lab.key)  # the key service seeds a Redis that came back empty
    r = lab.redis.client()
    try:
        wait_until(lambda: r.exists("edge:txr:1:7", "edge:txr:1:8") == 2, 10, "re-registration")
    finally:
        r.close()
    lab.wait_maps()
    stats = [d.wait_rtp(i, 50) for i in range(2)]
    after = d.call(lab.txrs[0].url)
    d.wait_rtp(2, 25)
    assert txr_ids(lab, 0) == txr_ids(lab, 1) == {7, 8}
    lost = sum(delta(lab.stats(r.index), before[r.index], "drop_unknown_txr") for r in lab.relays)
    report(
        "redis restart",
        gap_while_down_ms=down["max_gap_ms"],
        max_gap_ms=[s["max_gap_ms"] for s in stats],
        drop_unknown_txr_after_restart=lost,
        setup_ms_during=new["setup_ms"],
        setup_ms_after=after["setup_ms"],
    )
    # Removals wait after a Redis restart, so the transceiver that re-registers last keeps
    # its calls: nothing is dropped as unknown and no call stalls.
    assert lost == 0, lost
    assert all(s["max_gap_ms"] < MAX_GAP_MS for s in stats), stats


def test_killed_transceiver_leaves_the_maps_and_its_packets_are_dropped(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    d = place(lab.txrs[0].url, lab.txrs[1].url)
    d.wait_rtp(0, 50)
    relay, txr = carrier(lab, d, 0)
    assert txr == lab.txrs[0].id
    before = lab.stats(relay)
    killed = time.monotonic()
    lab.stop_transceiver(0, signal.SIGKILL)
    wait_until(
        lambda: all(txr not in txr_ids(lab, r.index) for r in lab.relays),
        13,  # registry TTL 10 s, then one controller pass
        "the dead transceiver to leave both maps",
        step=0.2,
    )
    gone_s = time.monotonic() - killed
    wait_until(
        lambda: delta(lab.stats(relay), before, "drop_unknown_txr") >= 20, 5, "counted drops"
    )
    # Nothing of the dead transceiver's call reached the other one, whose call goes on.
    d.wait_rtp(1, 50)
    metrics = netns.run(lab.client_ns, [sys.executable, "-c", FETCH, lab.txrs[1].url + "/metrics"])
    txr_drops = re.findall(r'^txr_drops_total\{reason="(\w+)"\} (\S+)$', metrics.stdout, re.M)
    assert {k: v for k, v in txr_drops if float(v)} == {}
    report("txr killed", left_maps_s=round(gone_s, 1), carrier=relay)


def test_draining_transceiver_finishes_its_call_and_takes_no_new_one(
    lab: EdgeLab, place: Callable[..., CallDriver]
) -> None:
    d = place(lab.txrs[1].url)
    d.wait_rtp(0, 50)
    proc = lab.stop_transceiver(1, signal.SIGTERM)
    refused = d.try_call(lab.txrs[1].url)
    assert refused["state"] == "failed" and "503" in refused["error"]
    landed = d.call(lab.txrs[0].url)
    assert ufrag.decode(landed["ufrag"]).transceiver == lab.txrs[0].id
    assert carrier(lab, d, 2)[1] == lab.txrs[0].id
    s = d.wait_rtp(0, 100)  # the draining transceiver's call goes on
    assert s["max_gap_ms"] < MAX_GAP_MS
    assert all(lab.txrs[1].id in txr_ids(lab, r.index) for r in lab.relays)
    d.hangup()
    assert proc.proc.wait(timeout=15) == 0  # the last call ended: it stops
    del lab.state.transceivers[1]
    wait_until(
        lambda: all(lab.txrs[1].id not in txr_ids(lab, r.index) for r in lab.relays),
        5,
        "the drained transceiver to leave the maps",
        step=0.2,
    )


def test_key_rotation_during_calls(lab: EdgeLab, place: Callable[..., CallDriver]) -> None:
    d = place(lab.txrs[0].url)
    d.wait_rtp(0, 50)
    assert ufrag.decode(d.calls[0]["ufrag"]).key_id == lab.key_id
    new_id = lab.key_id + 1
    lab.publish_key(new_id, secrets.token_bytes(16))
    wait_until(
        lambda: all(str(new_id) in lab.map_show(r.index)["keys"] for r in lab.relays),
        5,
        "the new key in both maps",
        step=0.2,
    )

    def new_key_call() -> bool:  # transceivers pick the current key up on their next refresh
        doc = d.call(lab.txrs[1].url)
        return ufrag.decode(doc["ufrag"]).key_id == new_id

    wait_until(new_key_call, 15, "a call minted with the new key", step=0.5)
    last = len(d.calls) - 1
    stats = [d.wait_rtp(0, 50), d.wait_rtp(last, 50)]
    assert all(s["max_gap_ms"] < MAX_GAP_MS for s in stats)
    assert carrier(lab, d, last)[1] == lab.txrs[1].id
    report("key rotation", calls=len(d.calls), max_gap_ms=[s["max_gap_ms"] for s in stats])
