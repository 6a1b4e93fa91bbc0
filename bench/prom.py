"""A server's Prometheus /metrics, read by a benchmark: histogram buckets, their change over
a window, how many observations passed a bound, and the worst one's bound."""

from __future__ import annotations

import re
import urllib.request


def fetch(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        return resp.read().decode()


def buckets(text: str, name: str, labels: str = "") -> dict[float, float]:
    """{le: cumulative count} of one histogram series in Prometheus text."""
    out = {}
    pattern = rf'^{name}_bucket\{{{labels}le="([^"]+)"\}} (\S+)$'
    for le, value in re.findall(pattern, text, re.M):
        out[float("inf") if le == "+Inf" else float(le)] = float(value)
    return out


def delta(after: str, before: str, name: str, labels: str = "") -> dict[float, float]:
    b = buckets(before, name, labels)
    return {le: n - b.get(le, 0.0) for le, n in buckets(after, name, labels).items()}


def over(counts: dict[float, float], le: float) -> float:
    """How many observations were above the bucket bound `le`."""
    return counts.get(float("inf"), 0.0) - counts.get(le, 0.0)


def worst_bound(counts: dict[float, float]) -> str:
    """The smallest bucket bound that holds every observation: the worst one is at most that."""
    total = counts.get(float("inf"), 0.0)
    if not total:
        return "-"
    for le in sorted(counts):
        if counts[le] >= total:
            return "inf" if le == float("inf") else f"<= {le * 1000:.0f}"
    return "-"
