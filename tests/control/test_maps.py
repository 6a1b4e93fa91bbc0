"""datapath/maps.py mirrors the program's structs exactly (as bcc parsed bpf/structs.h)."""

from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Iterator

import pytest

from datapath.maps import SPECS, be16, be32, from_be16, from_be32

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def bpf() -> Iterator[object]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from control.program import compile_relay

    b = compile_relay(None)
    yield b
    b.cleanup()


def _layout(t: type) -> list[tuple[str, int, int]]:
    if not hasattr(t, "_fields_"):
        return [("", 0, ct.sizeof(t))]
    return [(f[0], getattr(t, f[0]).offset, getattr(t, f[0]).size) for f in t._fields_]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_struct_layout_matches_bcc(bpf: object, name: str) -> None:
    table = bpf[name.encode()]  # type: ignore[index]
    spec = SPECS[name]
    leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables: bcc's Leaf is an array
    assert ct.sizeof(spec.key) == ct.sizeof(table.Key)
    assert ct.sizeof(spec.value) == ct.sizeof(leaf)
    assert _layout(spec.key) == _layout(table.Key)
    assert _layout(spec.value) == _layout(leaf)
    if spec.max_entries:
        assert table.max_entries == spec.max_entries


def test_network_order_helpers() -> None:
    v = be32("198.18.0.1")
    assert bytes(ct.c_uint32(v)) == bytes([198, 18, 0, 1]) and from_be32(v) == "198.18.0.1"
    p = be16(3478)
    assert bytes(ct.c_uint16(p)) == (3478).to_bytes(2, "big") and from_be16(p) == 3478
