"""bench.bpf_breakdown's stubs still apply to bpf/ (each edit found exactly once, each copy
verified by the kernel and cycling), so the breakdown in docs/benchmarks.md can be remade."""

from __future__ import annotations

import pytest

from bench import bpf_breakdown
from control.program import relay_source

pytestmark = pytest.mark.timeout(300)


def test_every_stub_applies_once() -> None:
    source = relay_source()
    for variant in bpf_breakdown.VARIANTS:
        edited = bpf_breakdown._edited(source, variant)
        assert (edited != source) == bool(variant.edits), variant.piece


def test_the_breakdown_runs_and_reports_every_piece() -> None:
    table = bpf_breakdown.run(repeat=2_000, trials=1, loads=2)
    pieces = [row[0] for row in table.rows]
    assert pieces == [
        "trivial XDP_PASS program",
        "this build, whole",
        *(v.piece for v in bpf_breakdown.VARIANTS),
    ]
    assert all(row[3] > 0 for row in table.rows[2:])  # each copy measured
    assert "each copy loaded 2 times" in table.notes[0]
