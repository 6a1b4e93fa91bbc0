"""bench.media_stall, briefly: every variant's server (start-up heap frozen or not, busy
processes beside it or not) carries every call of a round, the page's gap timer saw audio, and
each server's own pause histograms, CPU and run-queue wait were read."""

from __future__ import annotations

import pytest

from bench import media_stall

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


def test_a_short_round_of_each_server() -> None:
    results = media_stall.measure(calls=2, rounds=1, seconds=2)
    assert set(results) == {label for label, _, _ in media_stall.VARIANTS}
    for label, (r,) in results.items():
        assert len(r["gaps"]) == 2 and all(n > 20 for n in r["packets"]), (label, r)
        assert all(0 < g < 5000 for g in r["gaps"]), (label, r)
        assert r["lag_worst"] != "-"  # the loop-lag probe ran (every 20 ms): histogram filled
        assert 0 < r["cpu_pct"] < 200 and r["wait_pct"] >= 0, (label, r)  # the server was read
    table = media_stall.table(results, 2, 2)
    assert [row[0] for row in table.rows] == [label for label, _, _ in media_stall.VARIANTS]
