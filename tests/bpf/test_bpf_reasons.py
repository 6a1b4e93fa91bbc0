"""The reasons are part of the format: the C list (bpf/reasons.h), the Python mirror
(control/reasons.py) and the spec's table must agree on every number, name and kind; and a
reason's kind, not its number, decides what the program does with the packet."""

from __future__ import annotations

import ctypes as ct
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from bcc import BPF

from control.program import BPF_DIR, compile_relay, load_xdp_fn
from control.reasons import VERDICT, Kind, Reason
from lab.fibsandbox import prog_test_run
from tests.bpf.bpfharness import (
    NEAR,
    RTP,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    Relay,
    client_frame,
    tunnelled,
)

SPEC = BPF_DIR.parent / "docs" / "wire-format.md"
REASON_CONTINUE = 0xFF  # bpf/reasons.h: what a step returns when it decided nothing
ACTION = {Kind.FWD: XDP_REDIRECT, Kind.PASS: XDP_PASS, Kind.DROP: XDP_DROP}
C_KIND = {0: Kind.DROP, 1: Kind.PASS, 2: Kind.FWD}  # enum reason_kind

# Reads a u32 reason and a same_port byte after the Ethernet header, writes back what the
# generated predicates say about it and returns reason_action(): the list as compiled.
PROBE = b"""
#include "reasons.h"

int reason_probe(struct xdp_md *ctx)
{
	__u8 *p = (void *)(long)ctx->data + ETH_HDR_LEN;
	__u32 reason;

	if (p + 8 > (__u8 *)(long)ctx->data_end)
		return XDP_ABORTED;
	__builtin_memcpy(&reason, p, 4);
	p[5] = reason_kind(reason);
	p[6] = reason_is_forward(reason);
	p[7] = REASON_COUNT;
	return reason_action(reason, p[4]);
}
"""


def extra_reasons(*entries: tuple[str, int, str]) -> str:
    """The -D that appends reasons to the list (bpf/reasons.h's EDGE_EXTRA_REASONS hook)."""
    return "-DEDGE_EXTRA_REASONS(X)=" + " ".join(f"X({n}, {num}, {k})" for n, num, k in entries)


def _c_list() -> dict[str, tuple[int, Kind]]:
    text = (BPF_DIR / "reasons.h").read_text()
    body = text[text.index("#define EDGE_REASONS(X)") : text.index("EDGE_EXTRA_REASONS(X)\n")]
    entries = re.findall(r"X\((\w+), (\d+), (FWD|PASS|DROP)\)", body)
    assert len(entries) == body.count("X("), "an entry the pattern does not read"
    return {name.lower(): (int(num), Kind(kind.lower())) for name, num, kind in entries}


def _spec_table() -> dict[str, int]:
    text = SPEC.read_text()
    section = text[text.index("## 5. Counter reasons") :]
    return {name: int(n) for n, name in re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`", section, re.M)}


def test_python_matches_the_c_list() -> None:
    assert {r.label: (int(r), r.kind) for r in Reason} == _c_list()


def test_python_matches_spec_table() -> None:
    spec = _spec_table()
    assert len(spec) == 43
    assert {r.label: int(r) for r in Reason} == spec


def test_numbers_are_dense_and_fit_the_counters() -> None:
    assert sorted(n for n, _ in _c_list().values()) == list(range(len(Reason)))
    slots = re.search(r"#define COUNTER_SLOTS (\d+)", (BPF_DIR / "constants.h").read_text())
    assert slots and int(slots.group(1)) >= len(Reason)


def test_every_reason_has_a_verdict() -> None:
    assert set(VERDICT) == set(Reason)
    for reason, verdict in VERDICT.items():
        expected = {Kind.PASS: "PASS", Kind.DROP: "DROP", Kind.FWD: ""}[reason.kind]
        assert verdict.startswith(expected), (reason, verdict)


# -- the list as compiled --------------------------------------------------------------------


@contextmanager
def _probe(cflags: list[str]) -> Iterator[int]:
    """The probe compiled with cflags and loaded: its program fd."""
    bpf = BPF(text=PROBE, cflags=[f"-I{BPF_DIR}", *cflags])
    try:
        yield bpf.load_func(b"reason_probe", BPF.XDP).fd
    finally:
        bpf.cleanup()


def _ask(fd: int, reason: int, same_port: bool) -> tuple[int, Kind, bool, int]:
    frame = bytes(14) + struct.pack("<IB3x", reason, same_port)
    res = prog_test_run(fd, frame)
    kind, forward, count = res.data_out[19:22]
    return res.retval, C_KIND[kind], bool(forward), count


def _expect(kinds: dict[int, Kind], reason: int, same_port: bool) -> tuple[int, Kind, bool, int]:
    kind = kinds.get(reason, Kind.DROP)  # no reason (CONTINUE, unlisted numbers): fail closed
    action = XDP_TX if kind is Kind.FWD and same_port else ACTION[kind]
    return action, kind, kind is Kind.FWD, len(kinds)


PROBED = [*range(70), REASON_CONTINUE, 1 << 31, 0xFFFFFFFF]


def test_compiled_kinds_and_actions_match_python() -> None:
    kinds = {int(r): r.kind for r in Reason}
    with _probe([]) as fd:
        for reason in PROBED:
            for same_port in (False, True):
                assert _ask(fd, reason, same_port) == _expect(kinds, reason, same_port), reason


def test_extra_reasons_take_their_kind_from_the_list() -> None:
    n = len(Reason)
    extra = [("FWD_TEST", n, "FWD"), ("PASS_TEST", n + 1, "PASS"), ("DROP_TEST", n + 2, "DROP")]
    kinds = {int(r): r.kind for r in Reason} | {n: Kind(k.lower()) for _, n, k in extra}
    with _probe([extra_reasons(*extra)]) as fd:
        for reason in PROBED:
            for same_port in (False, True):
                assert _ask(fd, reason, same_port) == _expect(kinds, reason, same_port), reason


@pytest.mark.parametrize(
    ("cflags", "message"),
    [
        ([extra_reasons(("GAP_TEST", len(Reason) + 1, "FWD"))], "each number once"),
        ([extra_reasons(("TWICE_TEST", 26, "FWD"))], "each number once"),
        ([f"-DCOUNTER_SLOTS={len(Reason) - 1}"], "every reason needs a counter slot"),
    ],
    ids=["a gap in the numbers", "a number used twice", "fewer counter slots than reasons"],
)
def test_a_bad_list_does_not_compile(
    cflags: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Exception, match="Failed to compile"), _probe(cflags):
        pass
    assert message in capfd.readouterr().err


# -- the whole program with a reason past the last one ---------------------------------------


@pytest.mark.parametrize(
    ("kind", "action"),
    [("FWD", XDP_REDIRECT), ("PASS", XDP_PASS), ("DROP", XDP_DROP)],
    ids=[
        "a new forward reason is forwarded",
        "a new pass reason goes to the kernel",
        "a new drop reason is dropped",
    ],
)
def test_a_new_reason_is_handled_by_its_kind(relay: Relay, kind: str, action: int) -> None:
    """A flow hit counted as a reason past the last one (EDGE_FLOW_HIT_REASON in relay.c):
    tunnelled exactly like fwd_flow when its kind is FWD, left untouched when PASS or DROP,
    counted in its own slot."""
    cflags = [
        extra_reasons(("NEW_TEST", len(Reason), kind)),
        "-DEDGE_FLOW_HIT_REASON=REASON_NEW_TEST",
    ]
    bpf = compile_relay(cflags=cflags)
    try:
        extra = Relay(bpf, load_xdp_fn(bpf).fd, relay.worker, relay.sandbox)
        extra.reset()
        extra.set_flow(NEAR)
        frame = client_frame(RTP)
        out = extra.run(frame)
        cpus = extra.maps["counters"].getvalue(ct.c_uint32(len(Reason)))
        assert (sum(c.packets for c in cpus), sum(c.bytes for c in cpus)) == (1, len(frame))
        assert out.counts == {}  # nothing under the reasons of the format
        assert out.action == action
        assert out.data == (tunnelled(frame, NEAR) if kind == "FWD" else frame)
    finally:
        bpf.cleanup()
