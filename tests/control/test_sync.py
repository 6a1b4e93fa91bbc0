"""The sync plan: what changes, in which order (pure: no kernel)."""

from __future__ import annotations

import math

from control.sync import MapState, desired_state, plan
from wire.registry import Registry, TransceiverRecord

K1, K2 = b"\x01" * 16, b"\x02" * 16
A, B = ("198.18.2.2", 5000), ("198.18.2.3", 5000)


def test_txr_addrs_count_ids_per_address() -> None:
    reg = Registry(
        transceivers={
            (1, 1): TransceiverRecord(1, 1, "198.18.2.2:5000"),
            (1, 2): TransceiverRecord(1, 2, "198.18.2.2:5000"),
            (2, 1): TransceiverRecord(2, 1, "198.18.2.3:5000"),
        },
        keys={1: K1},
    )
    want = desired_state(reg)
    assert want.txr_addrs == {A: 2, B: 1}
    assert want.transceivers == {(1, 1): A, (1, 2): A, (2, 1): B}


def test_order_never_leaves_a_transceiver_without_address_or_key() -> None:
    current = MapState(keys={1: K1}, transceivers={(1, 1): A, (1, 2): A}, txr_addrs={A: 2})
    wanted = MapState(keys={2: K2}, transceivers={(1, 1): B}, txr_addrs={B: 1})
    changes = plan(current, wanted)
    order = [(c.table, c.action, c.key) for c in changes]
    assert order == [
        ("keys", "add", "2"),
        ("txr_addrs", "add", "198.18.2.3:5000"),
        ("transceivers", "change", "1/1"),
        ("transceivers", "remove", "1/2"),
        ("txr_addrs", "remove", "198.18.2.2:5000"),
        ("keys", "remove", "1"),
    ]
    assert plan(wanted, wanted) == []


def test_count_changes_go_up_before_and_down_after_transceivers() -> None:
    current = MapState({}, {(1, 1): A, (1, 2): B, (1, 3): B}, {A: 1, B: 2})
    wanted = MapState({}, {(1, 1): A, (1, 2): A, (1, 4): A}, {A: 3})
    order = [(c.table, c.action, c.key, c.new) for c in plan(current, wanted)]
    assert order[0] == ("txr_addrs", "change", "198.18.2.2:5000", "3")
    assert order[-1] == ("txr_addrs", "remove", "198.18.2.3:5000", None)
    assert [o[0] for o in order[1:-1]] == ["transceivers"] * 3


def test_empty_registry_keeps_loaded_maps_unless_allowed() -> None:
    from control.sync import EmptyGuard

    guard = EmptyGuard(math.inf, "--allow-empty")
    current = MapState({1: K1}, {(1, 1): A}, {A: 1})
    kept, warnings = guard.guard(current, MapState({}, {}, {}))
    assert kept == current and len(warnings) == 2
    assert plan(current, kept) == []
    # Only the empty table is protected: a registry with keys but no transceivers updates keys.
    kept, warnings = guard.guard(current, MapState({2: K2}, {}, {}))
    assert kept.keys == {2: K2} and kept.transceivers == {(1, 1): A}
    assert warnings == ["registry has no transceivers: kept the 1 loaded (--allow-empty)"]
