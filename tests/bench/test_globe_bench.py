"""bench.globe, briefly: every client region's call is probed on both paths in one globe lab,
the backbone path loses nothing (the lab's backbone has no loss), and the table pairs them."""

from __future__ import annotations

import pytest

from bench import globe

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


def test_both_paths_of_every_region() -> None:
    rows = globe.measure(probes=5)
    assert [(r["from"], r["to"]) for r in rows] == [
        ("us-east", "eu-west"),
        ("us-east", "eu-west"),
        ("eu-west", "us-east"),
        ("eu-west", "us-east"),
        ("ap-south", "us-east"),
        ("ap-south", "us-east"),
    ]
    for r in rows[::2]:  # the backbone path: nothing lost, at least the backbone's delay
        assert r["answered"] == 5 and min(r["rtts"]) >= r["backbone_ms"]  # type: ignore[call-overload]
    for r in rows[1::2]:  # the internet path reached the far relay: answered, farther still
        assert r["answered"] >= 1 and min(r["rtts"]) >= r["backbone_ms"]  # type: ignore[call-overload]
    table = globe.table(rows)
    assert [row[8] for row in table.rows[::2]] == ["1.00"] * 3
