"""Real packets from the client netns through the attached relay, seen by `relayctl stats`.

This checks the controller's view end to end: keys written by `map sync` are the ones the
program verifies tags with, and counters are summed per reason across CPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.control.ctl_lab import Lab
from wire import stun, ufrag

pytestmark = pytest.mark.lab

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_stats_count_drops_by_reason(loaded: Lab, tmp_path: Path) -> None:
    lab = loaded
    reg = tmp_path / "reg.json"
    # transceiver 1/8 makes cluster 1 one this relay serves; 1/7 is not in the map
    txrs = [{"cluster": 1, "id": 8, "tunnel": "198.18.2.8:5000"}]
    reg.write_text(json.dumps({"keys": {"1": KEY.hex()}, "current_key": 1, "transceivers": txrs}))
    lab.relayctl("map", "sync", "--name", lab.name, "--file", str(reg))

    def binding(u: str) -> bytes:
        return stun.build_binding_request(f"{u}:cl1E", transaction_id=bytes(12))

    good = ufrag.mint(1, KEY, 1, 7)  # verifies, but transceiver 1/7 is not in the map
    forged = ufrag.mint(1, bytes(16), 1, 7)  # right format, wrong key
    other_key = ufrag.mint(2, KEY, 1, 7)  # no key in slot 2
    unserved = ufrag.mint(1, KEY, 5, 7)  # verifies, but cluster 5 is not served here
    rtp = b"\x80\x00" + bytes(30)
    lab.send_udp([rtp, rtp, rtp], dport=3478)
    lab.send_udp(
        [binding(good), binding(good), binding(forged), binding(other_key), binding(unserved)],
        dport=3478,
    )
    want = {
        "drop_no_flow": 3,
        "drop_unknown_txr": 2,
        "drop_bad_tag": 1,
        "drop_unknown_key": 1,
        "drop_unknown_cluster": 1,
    }
    stats = lab.wait_stats(lambda s: all(s[k]["packets"] >= n for k, n in want.items()))
    assert {k: stats[k]["packets"] for k in want} == want
    assert stats["drop_no_flow"]["bytes"] >= 3 * (28 + len(rtp))
    assert stats["fwd_stun_new"]["packets"] == 0 and lab.json("flows") == []
    human = lab.relayctl("stats", "--name", lab.name).stdout
    row = next(line for line in human.splitlines() if line.startswith("drop_unknown_txr"))
    assert row.split()[1] == "2"
