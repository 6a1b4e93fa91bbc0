"""The reason numbering is part of the format: C enum, Python enum and spec table must agree."""

from __future__ import annotations

import re

from control.program import BPF_DIR
from control.reasons import VERDICT, Reason

SPEC = BPF_DIR.parent / "docs" / "wire-format.md"


def _c_enum() -> dict[str, int]:
    text = (BPF_DIR / "counters.h").read_text()
    body = text[text.index("enum reason {") : text.index("};", text.index("enum reason {"))]
    pairs = re.findall(r"REASON_([A-Z0-9_]+)\s*=\s*(\d+)", body)
    return {name.lower(): int(n) for name, n in pairs if name != "MAX"}


def _spec_table() -> dict[str, int]:
    text = SPEC.read_text()
    section = text[text.index("## 5. Counter reasons") :]
    return {name: int(n) for n, name in re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`", section, re.M)}


def test_python_matches_c_enum() -> None:
    assert {r.label: int(r) for r in Reason} == _c_enum()


def test_python_matches_spec_table() -> None:
    spec = _spec_table()
    assert len(spec) == 27
    assert {r.label: int(r) for r in Reason} == spec


def test_c_enum_is_dense_and_max_is_count() -> None:
    text = (BPF_DIR / "counters.h").read_text()
    assert sorted(_c_enum().values()) == list(range(len(Reason)))
    assert re.search(rf"REASON_MAX\s*=\s*{len(Reason)}\b", text)
    slots = re.search(r"#define COUNTER_SLOTS (\d+)", (BPF_DIR / "constants.h").read_text())
    assert slots and int(slots.group(1)) >= len(Reason)


def test_every_reason_has_a_verdict() -> None:
    assert set(VERDICT) == set(Reason)
    for reason, verdict in VERDICT.items():
        kind = reason.label.split("_")[0]
        expected = {"pass": "PASS", "drop": "DROP", "fwd": ""}[kind]
        assert verdict.startswith(expected), (reason, verdict)
