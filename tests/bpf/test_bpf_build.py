"""The program's limits (bpf/constants.h) are choices of a build: each one -D overridable, and an
overridden build is verified, sized and behaves accordingly."""

from __future__ import annotations

import re

from control.program import BPF_DIR, compile_relay, load_xdp_fn
from control.reasons import Reason
from tests.bpf.bpfharness import (
    KEY,
    KEY_ID,
    NEAR,
    XDP_DROP,
    XDP_REDIRECT,
    Case,
    Relay,
    check,
    client_frame,
    tunnelled,
)
from wire.stun import ATTR_USERNAME, build_message
from wire.ufrag import mint

USERNAME = (mint(KEY_ID, KEY, NEAR.cluster, NEAR.id) + ":cl1E").encode()
LIMITS = {
    "MAX_VIPS": 8,
    "MAX_CLUSTERS": 16,
    "MAX_TRANSCEIVERS": 128,
    "MAX_FLOWS": 256,
    "COUNTER_SLOTS": 48,
    "STUN_MAX_ATTRS": 2,
    "STUN_MAX_OFFSET": 2048,
    "NH_CACHE_NS": 1000,
    "NH_CACHE_BITS": 8,
    "FLOW_COPY_BITS": 8,
    "FLOW_IDLE_S": 5,
    "UFRAG_FLOW_LIMIT": 2,
    "UFRAG_WINDOW_S": 30,
    "UFRAG_MAX_AGE": 12,
    "UFRAG_RATE_SLOTS": 64,
}
SIZES = {  # map -> the limit that sizes it
    "vips": "MAX_VIPS",
    "clusters": "MAX_CLUSTERS",
    "transceivers": "MAX_TRANSCEIVERS",
    "txr_addrs": "MAX_TRANSCEIVERS",
    "flows": "MAX_FLOWS",
    "counters": "COUNTER_SLOTS",
    "ufrag_rates": "UFRAG_RATE_SLOTS",
}


def test_every_limit_is_overridable() -> None:
    text = (BPF_DIR / "constants.h").read_text()
    limits = text[text.index("---- limits") :]
    defined = re.findall(r"^#define (\w+)", limits, re.M)
    guarded = re.findall(r"^#ifndef (\w+)\n#define \1\b", limits, re.M)
    assert set(LIMITS) == set(guarded)
    # derived from NH_CACHE_BITS and FLOW_COPY_BITS
    assert set(defined) - set(guarded) == {"NH_CACHE_SLOTS", "FLOW_COPY_SLOTS"}


def test_a_build_with_other_limits(relay: Relay) -> None:
    bpf = compile_relay(cflags=[f"-D{name}={value}" for name, value in LIMITS.items()])
    try:
        small = Relay(bpf, load_xdp_fn(bpf).fd, relay.worker, relay.sandbox)
        for name, limit in SIZES.items():
            assert bpf[name.encode()].max_entries == LIMITS[limit], name
        assert bpf[b"nexthops"].max_entries == 1 << LIMITS["NH_CACHE_BITS"]
        for name in (b"flow_copies", b"flow_copy_tags", b"flow_versions"):
            assert bpf[name].max_entries == 1 << LIMITS["FLOW_COPY_BITS"]
        small.reset()
        # USERNAME as the second attribute is within a walk of 2, as the third it is not
        second = client_frame(build_message(0x0001, [(0x8022, b"x"), (ATTR_USERNAME, USERNAME)]))
        third = client_frame(
            build_message(0x0001, [(0x8022, b"x")] * 2 + [(ATTR_USERNAME, USERNAME)])
        )
        check(small, Case("third", third, None, XDP_DROP, Reason.DROP_NO_USERNAME))
        check(
            small,
            Case(
                "second",
                second,
                tunnelled(second, NEAR),
                XDP_REDIRECT,
                Reason.FWD_STUN_NEW,
                learns=NEAR,
            ),
        )
        # UFRAG_FLOW_LIMIT=2: the same ufrag from a second address creates its flow, a third
        # is refused (config's limit 0 means the build's default)
        other = client_frame(second[42:], port=40001)
        check(
            small,
            Case(
                "2nd", other, tunnelled(other, NEAR), XDP_REDIRECT, Reason.FWD_STUN_NEW, learns=NEAR
            ),
        )
        third_addr = client_frame(second[42:], port=40002)
        check(small, Case("3rd", third_addr, None, XDP_DROP, Reason.DROP_UFRAG_FLOOD))
    finally:
        bpf.cleanup()
