"""bench.media_burst, briefly: the established calls' echoes are timed by the kernel in both
windows of a round, every burst call connects, the server's CPU and loop lag are read, and the
gaps are cut by window as the table says."""

from __future__ import annotations

import math

import pytest

from bench import media_burst

pytestmark = [pytest.mark.timeout(240)]


def test_a_short_round() -> None:
    results = media_burst.measure(established=6, burst=3, rounds=1)
    assert results["errors"] == [] and len(results["setups"]) == 3
    for key in ("quiet", "burst"):
        (w,) = results[key]
        # 6 calls at 50 packets/s: nearly every echo of the window arrived, timed by the kernel
        assert w.expected > 0 and w.got >= 0.9 * w.expected, (key, w.got, w.expected)
        assert len(w.gaps) >= w.got - 6 * 2  # one fewer gap than echoes per call (window edges)
        assert 0.010 < sorted(w.gaps)[len(w.gaps) // 2] < 0.030  # one packet time, 20 ms
        assert len(w.late) > 0 and w.cpu_s > 0 and w.seconds > 0
    table = media_burst.table(results, 6, 3)
    assert [row[0] for row in table.rows] == [
        "quiet (baseline)",
        "3 new calls arriving",
        "burst adds to p99",
    ]


def test_quantile_of_nothing_is_nan() -> None:
    assert math.isnan(media_burst._q([], 99))
