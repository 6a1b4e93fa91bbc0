"""bench.prom: histogram arithmetic on Prometheus text, as the benchmarks read /metrics."""

from __future__ import annotations

from bench import prom


def test_histogram_arithmetic() -> None:
    before = 'h_bucket{le="0.05"} 3\nh_bucket{le="0.1"} 4\nh_bucket{le="+Inf"} 4\n'
    after = 'h_bucket{le="0.05"} 5\nh_bucket{le="0.1"} 7\nh_bucket{le="+Inf"} 8\n'
    delta = prom.delta(after, before, "h")
    assert delta == {0.05: 2, 0.1: 3, float("inf"): 4}
    assert prom.over(delta, 0.05) == 2 and prom.over(delta, 0.1) == 1
    assert prom.worst_bound(delta) == "inf"
    assert prom.worst_bound({0.05: 1, 0.1: 1, float("inf"): 1}) == "<= 50"
    assert prom.worst_bound({float("inf"): 0}) == "-"
