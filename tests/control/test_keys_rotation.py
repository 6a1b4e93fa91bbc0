"""`relayctl keys` rotates the routing key under live calls without dropping one, on the whole
edge lab (two XDP relays with `relayctl run`, two `transceiver serve`, Redis, aiortc calls):
add -> every relay holds it -> promote -> the old key's calls end -> retire. Old-key ufrags are
refused once it is retired; the calls on the new key never notice."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from lab import netns
from lab.calldriver import CallDriver
from lab.edge import EdgeLab
from lab.wait import wait_until
from tests.control.runlab import RELAYCTL
from wire import stun, ufrag

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]
# A call the rotation broke stops for good (its consent checks are refused). Gaps are not the
# point here (tests/e2e measures them): on 2 shared cores a scheduling hiccup makes one.
STALL_MS = 1000.0
IN_FLIGHT = 15  # echoes on their way back when the counters are read (20 ms packets)


def healthy(s: dict[str, Any]) -> bool:
    return s["max_gap_ms"] < STALL_MS and s["rtp"] >= s["sent"] - IN_FLIGHT


@pytest.fixture
def lab() -> Iterator[EdgeLab]:
    with EdgeLab() as lab:
        yield lab
    assert not netns.list_namespaces(lab.prefix), "lab namespaces left behind"


def keys(lab: EdgeLab, *args: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
    assert lab.redis is not None
    res = subprocess.run(
        [RELAYCTL, "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REDIS_URL": lab.redis.url},
    )
    assert "Traceback" not in res.stdout + res.stderr
    assert res.returncode == rc, f"keys {args}: rc={res.returncode}\n{res.stdout}{res.stderr}"
    return res


def listed(lab: EdgeLab) -> dict[int, dict[str, Any]]:
    return {row["key_id"]: row for row in json.loads(keys(lab, "list", "--json").stdout)}


def drops(lab: EdgeLab, reason: str) -> int:
    return sum(lab.stats(r.index).get(reason, 0) for r in lab.relays)


def test_rotation_with_calls_running(lab: EdgeLab) -> None:
    old = lab.key_id
    before = CallDriver(lab, [lab.txrs[0].url])  # a call on the old key, ended before retiring
    during = CallDriver(lab, [])
    try:
        a = before.wait_call()
        assert ufrag.decode(a["ufrag"]).key_id == old
        before.wait_rtp(0, 50)

        new = json.loads(keys(lab, "add", "--json").stdout)["key_id"]
        assert new != old
        wait_until(
            lambda: listed(lab)[new]["relays_with"] == 2, 10, "both relays to hold the new key"
        )
        rows = listed(lab)
        assert rows[old]["current"] and not rows[new]["current"] and "key" not in rows[new]
        keys(lab, "promote", str(new))
        wait_until(  # transceivers take the current key on their next refresh
            lambda: all(f"current {new}\n" in p.text() for p in lab.state.transceivers.values()),
            15,
            "both transceivers to mint with the new key",
            step=0.2,
        )
        b = 0
        assert ufrag.decode(during.call(lab.txrs[1].url)["ufrag"]).key_id == new
        stats = [before.wait_rtp(0, 50), during.wait_rtp(b, 50)]
        assert all(healthy(s) for s in stats), stats

        # The old key was current a moment ago: retiring it now would cut calls placed then.
        res = keys(lab, "retire", str(old), rc=1)
        assert "was current" in res.stderr and "--force" in res.stderr
        keys(lab, "retire", str(new), rc=1)  # the current key: never
        final = before.hangup()  # the old key's last call ends normally
        assert final[0]["rtp"] > 50
        keys(lab, "retire", str(old), "--min-age", "0")
        wait_until(
            lambda: all(str(old) not in lab.map_show(r.index)["keys"] for r in lab.relays),
            5,
            "the old key gone from both maps",
            step=0.2,
        )
        assert set(listed(lab)) == {new}

        # An old-key ufrag no longer routes a new flow: a counted drop.
        dropped = drops(lab, "drop_unknown_key")
        sock = netns.socket_in(lab.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((lab.client_addrs[0], 0))
            sock.sendto(stun.build_binding_request(f"{a['ufrag']}:clnt"), (lab.vip, lab.vip_port))
        finally:
            sock.close()
        wait_until(lambda: drops(lab, "drop_unknown_key") > dropped, 5, "old-key ufrag dropped")
        # The new key's call goes on, and new calls still connect.
        s = during.wait_rtp(b, 50)
        assert healthy(s), s
        c = during.call(lab.txrs[0].url)
        assert ufrag.decode(c["ufrag"]).key_id == new
        during.wait_rtp(len(during.calls) - 1, 50)
        assert during.stats()[b]["rtp"] > stats[1]["rtp"]
    finally:
        before.close()
        during.close()
