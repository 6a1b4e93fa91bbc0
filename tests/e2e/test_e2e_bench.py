"""bench/relay_rtt.py runs in a small configuration and reports both paths and set-up time."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


def test_relay_rtt_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.relay_rtt as relay_rtt

    monkeypatch.setattr(relay_rtt, "ROUNDS", 2)
    monkeypatch.setattr(relay_rtt, "PER_ROUND", 10)
    monkeypatch.setattr(relay_rtt, "CALLS", 2)
    table = relay_rtt.run()
    rows = {str(r[0]): r for r in table.rows}
    relay, direct = rows["via VIP (XDP relay, tunnel)"], rows["direct to transceiver"]
    assert relay[1] == direct[1] == 20  # every probe answered on both paths
    for row in (relay, direct):
        p50, p99 = float(row[2]), float(row[3])
        assert 0 < p50 <= p99 < 100
    setup = rows["call set-up via relay (2 calls)"]
    assert 0 < float(setup[2]) < 5000
