"""ns/packet of each path through the XDP relay, by BPF_PROG_TEST_RUN, next to a trivial XDP_PASS
program measured the same way in the same run.

The kernel runs a program `repeat` times on the *same* buffer without restoring it (live-frames
mode recycles pages without restoring them either). So a repeat=1M figure is only honest for
paths that leave the packet alone (passes, drops), or for a cycle of paths that gives the
packet back: with the relay's tunnel address set to the transceiver's, and the client's
address:port also a VIP, an encapsulated client packet is a valid tunnel packet that
decapsulates to the original, so "flow hit" and "decap" alternate (both through the FIB and the
redirect), and the row reports their mean. Paths that cannot cycle (a new flow) are measured
as the median of single runs, each on a fresh packet, next to the baseline's single-run median:
those carry the per-call timer overhead and colder caches, and are not comparable with the
repeat rows. Every row checks the counters: each run was counted under the row's reasons.

    .venv/bin/python -m bench.bpf_paths [--repeat N] [--samples N]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import socket
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bcc import BPF

from bench.table import Table
from control.program import compile_relay, load_xdp_fn
from control.reasons import Reason
from lab.fibsandbox import (
    CLIENT_LINK,
    NEAR_TXR,
    TXR_LINK,
    NetnsWorker,
    Sandbox,
    fib_sandbox,
    prog_test_run,
)
from wire.defaults import RELAY_TUNNEL_PORT
from wire.encap import flow_entropy, ipv4_udp
from wire.stun import build_binding_request
from wire.ufrag import mint

BASELINE_SRC = b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"
VIP, VIP_PORT = "198.19.128.10", 3478
TUNNEL, TUNNEL_PORT = TXR_LINK.addr, RELAY_TUNNEL_PORT
TXR_ADDR, TXR_PORT, CLUSTER, TXR_ID = NEAR_TXR[0], 5000, 1, 7
KEY_ID, KEY = 1, bytes.fromhex("5ec2e7a1d04b3f96a8173c0d2e4f6b81")
CLIENT, CLIENT_PORT = "198.19.64.5", 50000
RTP = bytes([0x80, 0x6F]) + bytes(160)  # about a 20 ms Opus packet
TRIALS = 3


def _be32(addr: str) -> int:
    return int.from_bytes(socket.inet_aton(addr), "little")


def _eth(payload: bytes, dst: str, src: str) -> bytes:
    return bytes.fromhex((dst + src).replace(":", "")) + b"\x08\x00" + payload


def client(payload: bytes, port: int = CLIENT_PORT) -> bytes:
    packet = ipv4_udp(CLIENT, port, VIP, VIP_PORT, payload)
    return _eth(packet, CLIENT_LINK.mac, CLIENT_LINK.gateway_mac)


def binding(key: bytes = KEY, port: int = CLIENT_PORT) -> bytes:
    ufrag = mint(KEY_ID, key, CLUSTER, TXR_ID, b"\x01\x02\x03\x04")
    return client(build_binding_request(ufrag + ":cl1E"), port)


def tunnel(inner: bytes) -> bytes:
    outer = ipv4_udp(TXR_ADDR, TXR_PORT, TUNNEL, TUNNEL_PORT, inner)
    return _eth(outer, TXR_LINK.mac, NEAR_TXR[1])


NOT_OURS = _eth(
    ipv4_udp(CLIENT, 1, "198.19.0.1", 53, b"q"), CLIENT_LINK.mac, CLIENT_LINK.gateway_mac
)
REPLY = tunnel(ipv4_udp(VIP, VIP_PORT, CLIENT, CLIENT_PORT, RTP))


class Bench:
    """The relay and the baseline program loaded, the maps filled, a sandbox to run in."""

    def __init__(self, sandbox: Sandbox, worker: NetnsWorker, relay: BPF, baseline: BPF) -> None:
        self.sandbox, self.worker, self.relay = sandbox, worker, relay
        self.fd = load_xdp_fn(relay).fd
        self.base_fd = baseline.load_func(b"xdp_pass", BPF.XDP).fd
        self.setup()

    def _set(self, table: str, key: object, value: object) -> None:
        self.relay[table.encode()][key] = value

    def setup(self, tunnel: tuple[str, int] = (TUNNEL, TUNNEL_PORT)) -> None:
        r = self.relay
        self._set(
            "config",
            ct.c_uint32(0),
            r[b"config"].Leaf(_be32(tunnel[0]), socket.htons(tunnel[1]), 0),
        )
        self.add_vip(VIP, VIP_PORT)
        k0, k1 = int.from_bytes(KEY[:8], "little"), int.from_bytes(KEY[8:], "little")
        self._set("keys", ct.c_uint32(KEY_ID), r[b"keys"].Leaf(k0, k1, 1, 0))
        txrs = r[b"transceivers"]
        self._set(
            "transceivers",
            txrs.Key(CLUSTER, 0, TXR_ID),
            txrs.Leaf(_be32(TXR_ADDR), socket.htons(TXR_PORT), 0),
        )
        self.add_peer(TXR_ADDR, TXR_PORT)

    def add_vip(self, addr: str, port: int) -> None:
        self._set(
            "vips", self.relay[b"vips"].Key(_be32(addr), socket.htons(port), 0), ct.c_uint32(0)
        )

    def add_peer(self, addr: str, port: int) -> None:
        key = self.relay[b"txr_addrs"].Key(_be32(addr), socket.htons(port), 0)
        self._set("txr_addrs", key, ct.c_uint32(1))

    def learn(self) -> None:
        """Route one Binding request so that the client's flow exists."""
        self.relay[b"flows"].clear()
        self.run(self.fd, binding())
        if len(self.relay[b"flows"].items()) != 1:
            raise RuntimeError("the STUN request did not create the flow")

    def count(self, reason: Reason) -> int:
        return sum(c.packets for c in self.relay[b"counters"].getvalue(ct.c_uint32(reason)))

    def run(self, fd: int, frame: bytes, ingress: str = CLIENT_LINK.name, repeat: int = 1) -> int:
        ifindex = self.sandbox.ifindex[ingress]
        return self.worker.test_run(fd, frame, ingress_ifindex=ifindex, repeat=repeat).duration_ns

    def best(self, fd: int, frame: bytes, repeat: int) -> float:
        """The fastest of TRIALS calls: the cores are shared, noise only ever adds time."""
        return float(min(self.run(fd, frame, repeat=repeat) for _ in range(TRIALS)))

    def median(self, fd: int, frames: list[bytes], ingress: str = CLIENT_LINK.name) -> float:
        ifindex = self.sandbox.ifindex[ingress]

        def runs() -> list[int]:
            return [prog_test_run(fd, f, ingress_ifindex=ifindex).duration_ns for f in frames]

        return float(statistics.median(self.worker.call(runs)))

    @contextmanager
    def counted(self, expect: dict[Reason, int]) -> Iterator[None]:
        """Fails unless the block counted exactly `expect` under each of those reasons."""
        before = {r: self.count(r) for r in expect}
        yield
        got = {r: self.count(r) - before[r] for r in expect}
        if got != expect:
            raise RuntimeError(f"expected {expect}, counted {got}: the row measured another path")


@dataclass(frozen=True)
class Row:
    name: str
    counted_as: str
    measure: Callable[[Bench], float]


def _repeat_rows(n: int) -> list[Row]:
    def steady(
        frame: bytes, reason: Reason, prepare: Callable[[Bench], None] = lambda b: None
    ) -> Callable[[Bench], float]:
        def measure(b: Bench) -> float:
            prepare(b)
            with b.counted({reason: n * TRIALS}):
                return b.best(b.fd, frame, n)

        return measure

    def cycle(frame: bytes, fwd: Reason) -> Callable[[Bench], float]:
        def measure(b: Bench) -> float:
            b.learn()
            b.setup(tunnel=(TXR_ADDR, TXR_PORT))  # the outer packet comes back to us...
            b.add_vip(CLIENT, CLIENT_PORT)  # ...from a "VIP" (the client)...
            b.add_peer(TXR_ADDR, flow_entropy(CLIENT, CLIENT_PORT, VIP_PORT))  # ...and a peer
            try:
                half = n // 2 * TRIALS
                with b.counted({fwd: half, Reason.FWD_DECAP: half}):
                    return b.best(b.fd, frame, n)
            finally:
                b.relay[b"vips"].clear()
                b.relay[b"txr_addrs"].clear()
                b.setup()

        return measure

    return [
        Row("pass: not for us", "pass_not_ours", steady(NOT_OURS, Reason.PASS_NOT_OURS)),
        Row(
            "drop: no flow",
            "drop_no_flow",
            steady(client(RTP), Reason.DROP_NO_FLOW, lambda b: b.relay[b"flows"].clear()),
        ),
        Row(
            "drop: bad tag (SipHash)",
            "drop_bad_tag",
            steady(binding(bytes(16)), Reason.DROP_BAD_TAG),
        ),
        Row(
            "flow hit <-> decap, mean", "fwd_flow + fwd_decap", cycle(client(RTP), Reason.FWD_FLOW)
        ),
        Row(
            "STUN known <-> decap, mean",
            "fwd_stun_known + fwd_decap",
            cycle(binding(), Reason.FWD_STUN_KNOWN),
        ),
    ]


def _single_rows(n: int) -> list[Row]:
    def single(
        frames: Callable[[], list[bytes]],
        reason: Reason,
        ingress: str = CLIENT_LINK.name,
        prepare: Callable[[Bench], None] = lambda b: None,
    ) -> Callable[[Bench], float]:
        def measure(b: Bench) -> float:
            prepare(b)
            batch = frames()
            with b.counted({reason: len(batch)}):
                return b.median(b.fd, batch, ingress)

        return measure

    clear = lambda b: b.relay[b"flows"].clear()  # noqa: E731
    return [
        Row(
            "pass: not for us",
            "pass_not_ours",
            single(lambda: [NOT_OURS] * n, Reason.PASS_NOT_OURS),
        ),
        Row(
            "drop: no flow",
            "drop_no_flow",
            single(lambda: [client(RTP)] * n, Reason.DROP_NO_FLOW, prepare=clear),
        ),
        Row(
            "flow hit: encap + fib",
            "fwd_flow",
            single(lambda: [client(RTP)] * n, Reason.FWD_FLOW, prepare=Bench.learn),
        ),
        Row(
            "STUN known: ufrag + encap",
            "fwd_stun_known",
            single(lambda: [binding()] * n, Reason.FWD_STUN_KNOWN, prepare=Bench.learn),
        ),
        Row(
            "STUN new flow",
            "fwd_stun_new",
            single(
                lambda: [binding(port=1024 + i) for i in range(n)],
                Reason.FWD_STUN_NEW,
                prepare=clear,
            ),
        ),
        Row(
            "decap: tunnel -> client",
            "fwd_decap",
            single(lambda: [REPLY] * n, Reason.FWD_DECAP, ingress=TXR_LINK.name),
        ),
    ]


def run(samples: int = 20_000, repeat: int = 1_000_000) -> Table:
    repeat += repeat % 2  # the cycles need an even count
    table = Table(
        "XDP relay paths (BPF_PROG_TEST_RUN, ns/packet)",
        ["path", "counted as", "method", "ns/packet", "minus XDP_PASS", "x XDP_PASS"],
    )
    with fib_sandbox(prefix="edgebench") as sandbox, NetnsWorker(sandbox.path) as worker:
        relay, baseline = compile_relay(), BPF(text=BASELINE_SRC)
        try:
            b = Bench(sandbox, worker, relay, baseline)
            methods = [
                (
                    f"repeat {repeat:,}",
                    lambda: b.best(b.base_fd, client(RTP), repeat),
                    _repeat_rows(repeat),
                ),
                (
                    f"median of {samples:,} runs",
                    lambda: b.median(b.base_fd, [client(RTP)] * samples),
                    _single_rows(samples),
                ),
            ]
            for method, baseline_ns, rows in methods:
                base = baseline_ns()
                table.add("trivial XDP_PASS program", "-", method, base, 0.0, 1.0)
                for row in rows:
                    ns = row.measure(b)
                    table.add(row.name, row.counted_as, method, ns, ns - base, ns / base)
        finally:
            relay.cleanup()
            baseline.cleanup()
    table.notes += [
        f"repeat rows: best of {TRIALS}, warm caches; a <-> row: mean of two paths run in turn.",
        "median rows: one packet per call; they include the kernel's timer and cold caches.",
        "FIB paths run in a veth sandbox netns with permanent neighbours (XDP_REDIRECT verdicts).",
        "bpf_fib_lookup is about half of a forwarded packet's time here (measured by stubbing it);",
        "its answers are cached per CPU for 250 ms (bpf/fib.h), so these rows run on cache hits.",
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description="ns/packet per path of the XDP relay")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1_000_000)
    args = parser.parse_args()
    print(run(samples=args.samples, repeat=args.repeat).render_text())


if __name__ == "__main__":
    main()
