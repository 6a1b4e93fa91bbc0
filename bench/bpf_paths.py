"""ns/packet of each path through the XDP relay, by BPF_PROG_TEST_RUN: this build next to a
baseline build of another revision (default `main`, its bpf/ read with `git show`) and a trivial
XDP_PASS program, all measured the same way in the same run.

The kernel runs a program `repeat` times on the *same* buffer without restoring it (live-frames
mode recycles pages without restoring them either). So a repeat=1M figure is only honest for
paths that leave the packet alone (passes, drops), or for a cycle of paths that gives the
packet back: with the relay's tunnel address set to the transceiver's, and the client's
address:port also a VIP, an encapsulated client packet is a valid tunnel packet that
decapsulates to the original, so "flow hit" and "decap" alternate (both through the FIB and the
redirect), and the row reports their mean. This build decrements the TTL both ways, so both
builds run behind the same two-store prologue that gives a client packet back its TTL and
checksum (the cycle can repeat; both pay it). Paths that cannot cycle (a new flow) are measured
as the median of single runs, each on a fresh packet, next to the XDP_PASS single-run median:
those carry the per-call timer overhead and colder caches, and are not comparable with the
repeat rows. Every row checks the counters: each run was counted under the row's reasons.

IPv6 rows (issue 11; "v6" in the name, no baseline figure where the baseline has no IPv6 path)
run the same way: an IPv6 client's packet to the VIP6 is encapsulated into the IPv4 tunnel, and
with the client's [address]:port a VIP6 it decapsulates back to itself by an AF_INET6 FIB
lookup, so "v6 flow hit" and "v6 decap" alternate; the prologue gives the IPv6 client's packets
hop limit 64 back (no checksum covers it).

    .venv/bin/python -m bench.bpf_paths [--repeat N] [--samples N] [--baseline REV]
"""

from __future__ import annotations

import argparse
import base64
import ctypes as ct
import socket
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcc import BPF

from bench.table import Table
from control.program import BPF_DIR, compile_relay, load_xdp_fn, relay_source
from control.reasons import Reason
from datapath.maps import next_txr_gen, seen_now
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
from wire.encap import flow_entropy, ipv4_udp, ipv6_udp
from wire.stun import build_binding_request
from wire.ufrag import compute_tag, mint

BASELINE_SRC = b"int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"
VIP, VIP_PORT = "198.19.128.10", 3478
TUNNEL, TUNNEL_PORT = TXR_LINK.addr, RELAY_TUNNEL_PORT
TXR_ADDR, TXR_PORT, CLUSTER, TXR_ID = NEAR_TXR[0], 5000, 1, 7
RETURN_ID = 8  # the cycle's transceiver: the relay itself, at (TXR_ADDR, flow entropy)
KEY_ID, KEY = 1, bytes.fromhex("5ec2e7a1d04b3f96a8173c0d2e4f6b81")
CLIENT, CLIENT_PORT = "198.19.64.5", 50000
RTP = bytes([0x80, 0x6F]) + bytes(160)  # about a 20 ms Opus packet
TRIALS = 5
FLOW_IDLE_S = 10  # bpf/constants.h: the default, which Bench.setup leaves in place
ENTRY = "int xdp_relay(struct xdp_md *ctx)"
VIP6, CLIENT6 = "2001:db8:ed80::10", "2001:db8:ed40::5"  # lab.fibsandbox's IPv6 routes
ETH_P_IPV6 = 0x86DD


def _be32(addr: str) -> int:
    return int.from_bytes(socket.inet_aton(addr), "little")


def _eth(payload: bytes, dst: str, src: str) -> bytes:
    return bytes.fromhex((dst + src).replace(":", "")) + b"\x08\x00" + payload


def client(payload: bytes, port: int = CLIENT_PORT, ttl: int = 64, src: str = CLIENT) -> bytes:
    packet = ipv4_udp(src, port, VIP, VIP_PORT, payload, ttl=ttl)
    return _eth(packet, CLIENT_LINK.mac, CLIENT_LINK.gateway_mac)


def client6(
    payload: bytes, port: int = CLIENT_PORT, hops: int = 64, nh: int = 17, src: str = CLIENT6
) -> bytes:
    """An IPv6 client's datagram to the VIP6 (`nh`: another next header, same bytes after)."""
    packet = ipv6_udp(src, port, VIP6, VIP_PORT, payload, hop_limit=hops)
    packet = packet[:6] + bytes([nh]) + packet[7:]
    head = bytes.fromhex((CLIENT_LINK.mac + CLIENT_LINK.gateway_mac).replace(":", ""))
    return head + ETH_P_IPV6.to_bytes(2, "big") + packet


def binding6(
    key: bytes = KEY, port: int = CLIENT_PORT, nonce: bytes = b"\x01\x02\x03\x04"
) -> bytes:
    ufrag = mint(KEY_ID, key, CLUSTER, TXR_ID, nonce)
    return client6(build_binding_request(ufrag + ":cl1E"), port)


def binding(
    key: bytes = KEY, port: int = CLIENT_PORT, nonce: bytes = b"\x01\x02\x03\x04", v1: bool = False
) -> bytes:
    """A Binding request routed to TXR_ID: a v2 ufrag, or for a baseline build before issue 8
    the v1 layout (a 40-bit nonce where v2 has the epoch)."""
    if v1:
        signed = bytes([0x10 | KEY_ID]) + struct.pack(">HI", CLUSTER, TXR_ID) + b"\x00" + nonce
        ufrag = base64.b64encode(signed + compute_tag(key, signed)).decode()
    else:
        ufrag = mint(KEY_ID, key, CLUSTER, TXR_ID, nonce)
    return client(build_binding_request(ufrag + ":cl1E"), port)


Frame = bytes | Callable[["Bench"], bytes]  # a frame, or one that depends on the build


def tunnel(inner: bytes) -> bytes:
    outer = ipv4_udp(TXR_ADDR, TXR_PORT, TUNNEL, TUNNEL_PORT, inner)
    return _eth(outer, TXR_LINK.mac, NEAR_TXR[1])


NOT_OURS = _eth(
    ipv4_udp(CLIENT, 1, "198.19.0.1", 53, b"q"), CLIENT_LINK.mac, CLIENT_LINK.gateway_mac
)
REPLY = tunnel(ipv4_udp(VIP, VIP_PORT, CLIENT, CLIENT_PORT, RTP))
REPLY6 = tunnel(ipv6_udp(VIP6, VIP_PORT, CLIENT6, CLIENT_PORT, RTP))
STRAY_REPLY = tunnel(ipv4_udp(VIP, VIP_PORT, "198.19.64.6", CLIENT_PORT, RTP))


def _prologue(source: str) -> str:
    """source with its entry point behind a prologue that gives the client's packets TTL 64 back
    (checksum updated, RFC 1624), so the cycle rows can repeat. It runs the same instructions in
    both builds (even when the TTL is already 64), so it costs them the same."""
    if ENTRY not in source:
        raise RuntimeError(f"no `{ENTRY}` in the relay source")
    body = source.replace(ENTRY, "static __always_inline int xdp_relay_body(struct xdp_md *ctx)")
    return (
        body
        + f"""
int xdp_relay(struct xdp_md *ctx)
{{
    struct iphdr *ip = (void *)(long)ctx->data + 14;

    if ((void *)(ip + 1) <= (void *)(long)ctx->data_end && ip->daddr == {_be32(VIP)}U &&
        ip->saddr == {_be32(CLIENT)}U) {{
        __u32 sum = (__u16)~ip->check;

        sum += (__u16)~edge_htons((__u16)((ip->ttl << 8) | IPPROTO_UDP));
        sum += edge_htons((64 << 8) | IPPROTO_UDP);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        ip->check = (__u16)~sum;
        ip->ttl = 64;
    }} else {{
        /* an IPv6 client's packet ({CLIENT6} -> {VIP6}, told by the last words): hop limit 64 */
        __u8 *p = (void *)(long)ctx->data;

        if ((void *)(p + 14 + 40) <= (void *)(long)ctx->data_end && p[12] == 0x86 &&
            p[13] == 0xdd && *(__u32 *)(p + 14 + 20) == {_last_word(CLIENT6)}U &&
            *(__u32 *)(p + 14 + 36) == {_last_word(VIP6)}U)
            p[14 + 7] = 64;
    }}
    return xdp_relay_body(ctx);
}}
"""
    )


def _last_word(addr6: str) -> int:
    """An IPv6 address's last 32 bits as the u32 whose memory holds them (network order)."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET6, addr6)[12:], "little")


def _baseline_dir(rev: str, into: Path) -> Path | None:
    """bpf/ as of `rev` (git show), or None when the checkout has no git or no such revision."""
    repo = BPF_DIR.parent
    try:
        names = subprocess.run(
            ["git", "-C", str(repo), "ls-tree", "--name-only", f"{rev}:bpf"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for name in names:
            blob = subprocess.run(
                ["git", "-C", str(repo), "show", f"{rev}:bpf/{name}"],
                capture_output=True,
                check=True,
            ).stdout
            (into / name).write_bytes(blob)
    except (OSError, subprocess.CalledProcessError):
        return None
    return into


class Bench:
    """One relay build and the baseline program loaded, the maps filled, a sandbox to run in."""

    def __init__(self, sandbox: Sandbox, worker: NetnsWorker, relay: BPF, base_fd: int) -> None:
        self.sandbox, self.worker, self.relay = sandbox, worker, relay
        self.fd = load_xdp_fn(relay).fd
        self.base_fd = base_fd
        self.checks = hasattr(relay[b"config"].Leaf, "wall_offset_ns")  # issue 8's build
        self.caches = hasattr(relay[b"flows"].Leaf, "txr_cache")  # issue 12's build
        self.v6 = _has_table(relay, b"flows6")  # issue 11's build
        self.setup()

    def _set(self, table: str, key: object, value: object) -> None:
        self.relay[table.encode()][key] = value

    def flows_changed(self) -> None:
        """After the bench wrote or deleted flows behind the program's back: txr_gen's next
        value, as the controller gives it, so that no flow copy (bpf/flowcopy.h)
        outlives the change. Builds without txr_gen ignore it."""
        if self.caches:
            gen = self.relay[b"txr_gen"][ct.c_uint32(0)].value
            self._set("txr_gen", ct.c_uint32(0), ct.c_uint32(next_txr_gen(gen)))

    def setup(self, tunnel: tuple[str, int] = (TUNNEL, TUNNEL_PORT)) -> None:
        r = self.relay
        cfg = r[b"config"].Leaf()
        cfg.tunnel_addr, cfg.tunnel_port = _be32(tunnel[0]), socket.htons(tunnel[1])
        if self.checks:
            cfg.wall_offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            links = [self.sandbox.ifindex[CLIENT_LINK.name], self.sandbox.ifindex[TXR_LINK.name]]
            cfg.tunnel_ifindex = (ct.c_uint32 * 4)(*links, 0, 0)
            cfg.ufrag_flow_limit = 1024
        self._set("config", ct.c_uint32(0), cfg)
        self.add_vip(VIP, VIP_PORT)
        if self.v6:
            self.add_vip6(VIP6, VIP_PORT)
        # as relayctl load starts it (1 when unset, never back: a flow copy made
        # under an earlier value must not become valid again): flows cache their endpoint
        if self.caches and not self.relay[b"txr_gen"][ct.c_uint32(0)].value:
            self._set("txr_gen", ct.c_uint32(0), ct.c_uint32(1))
        k0, k1 = int.from_bytes(KEY[:8], "little"), int.from_bytes(KEY[8:], "little")
        self._set("keys", ct.c_uint32(KEY_ID), r[b"keys"].Leaf(k0, k1, 1, 0))
        self.add_txr(TXR_ID, TXR_ADDR, TXR_PORT)

    def add_txr(self, txr_id: int, addr: str, port: int) -> None:
        txrs = self.relay[b"transceivers"]
        self._set(
            "transceivers",
            txrs.Key(CLUSTER, 0, txr_id),
            txrs.Leaf(_be32(addr), socket.htons(port), 0),
        )
        key = self.relay[b"txr_addrs"].Key(_be32(addr), socket.htons(port), 0)
        self._set("txr_addrs", key, ct.c_uint32(1))

    def add_vip(self, addr: str, port: int) -> None:
        self._set(
            "vips", self.relay[b"vips"].Key(_be32(addr), socket.htons(port), 0), ct.c_uint32(0)
        )

    def add_vip6(self, addr: str, port: int) -> None:
        """A VIP6 and its address entry (port 0), as relayctl load writes them."""
        vips6 = self.relay[b"vips6"]
        for p in (port, 0):
            key = vips6.Key()
            key.addr = _in6(addr)
            key.port = socket.htons(p)
            vips6[key] = ct.c_uint32(0)

    def add_flow6(self, client: tuple[str, int], vip: tuple[str, int], txr_id: int) -> None:
        flows6 = self.relay[b"flows6"]
        key = flows6.Key()
        key.client_addr, key.vip_addr = _in6(client[0]), _in6(vip[0])
        key.client_port, key.vip_port = socket.htons(client[1]), socket.htons(vip[1])
        val = flows6.Leaf()
        val.cluster, val.id, val.created_ns = CLUSTER, txr_id, 1
        val.seen = seen_now()
        flows6[key] = val

    def learn6(self) -> None:
        """Route one IPv6 Binding request so that the IPv6 client's flow exists (the ufrag's
        budget reset: a row before may have used it up)."""
        self.clear()
        self.run(self.fd, binding6())
        if len(self.relay[b"flows6"].items()) != 1:
            raise RuntimeError("the IPv6 STUN request did not create the flow")

    def add_flow(self, client: tuple[str, int], vip: tuple[str, int], txr_id: int) -> None:
        flows = self.relay[b"flows"]
        key = flows.Key(
            _be32(client[0]), _be32(vip[0]), socket.htons(client[1]), socket.htons(vip[1])
        )
        val = flows.Leaf()
        val.cluster, val.id, val.created_ns = CLUSTER, txr_id, 1
        # live, as a call's flow is (its client talks): a live flow may use its cached endpoint
        val.seen = seen_now()
        flows[key] = val
        self.flows_changed()

    def keep_live(self) -> None:
        """Every IPv4 flow seen now. The cycle's reverse flow (the client as a VIP) never has a
        packet from its own client, so FLOW_IDLE_S after cycling() it is idle, and every decap
        looks its transceiver up again instead of using the flow's cached endpoint: a call's
        flow, kept live by its talking client, does not. A bench that measures the cycle long
        after cycling() calls this before each run."""
        flows = self.relay[b"flows"]
        for key, val in flows.items():
            val.seen = seen_now()
            flows[key] = val
        self.flows_changed()

    def check_live(self, table: bytes = b"flows") -> None:
        """Fails unless every flow in table is still live: else the run measured decaps that
        look their transceiver up (only a live flow uses its cached endpoint), not the cycle."""
        for val in self.relay[table].values():
            if (seen_now() - val.seen) & 0xFFFF >= FLOW_IDLE_S:
                raise RuntimeError(f"a flow in {table.decode()} went idle during the run")

    def cycling(self) -> None:
        """The maps of the flow hit <-> decap cycle (see top): the encapsulated client packet
        comes back as a tunnel datagram that decapsulates to the original."""
        self.learn()
        self.setup(tunnel=(TXR_ADDR, TXR_PORT))  # the outer packet comes back to us...
        self.add_vip(CLIENT, CLIENT_PORT)  # ...from a "VIP" (the client)...
        entropy = flow_entropy(CLIENT, CLIENT_PORT, VIP_PORT)
        self.add_txr(RETURN_ID, TXR_ADDR, entropy)  # ...and a transceiver (the relay)...
        self.add_flow((VIP, VIP_PORT), (CLIENT, CLIENT_PORT), RETURN_ID)  # ...with a flow

    def binding(self, **kw: Any) -> bytes:
        return binding(**kw, v1=not self.checks)

    def frame(self, frame: Frame) -> bytes:
        return frame if isinstance(frame, bytes) else frame(self)

    def learn(self) -> None:
        """Route one Binding request so that the client's flow exists."""
        self.clear_flows()
        self.run(self.fd, self.binding())
        if len(self.relay[b"flows"].items()) != 1:
            raise RuntimeError("the STUN request did not create the flow")

    def clear_flows(self) -> None:
        self.relay[b"flows"].clear()
        self.flows_changed()

    def clear(self) -> None:
        self.clear_flows()
        if self.v6:
            self.relay[b"flows6"].clear()
        if self.checks:
            self.relay[b"ufrag_rates"].clear()

    def count(self, reason: Reason) -> int:
        return sum(c.packets for c in self.relay[b"counters"].getvalue(ct.c_uint32(reason)))

    def run(self, fd: int, frame: bytes, ingress: str = CLIENT_LINK.name, repeat: int = 1) -> int:
        ifindex = self.sandbox.ifindex[ingress]
        return self.worker.test_run(fd, frame, ingress_ifindex=ifindex, repeat=repeat).duration_ns

    def best(self, fd: int, frame: bytes, repeat: int, ingress: str = CLIENT_LINK.name) -> float:
        """The fastest of TRIALS calls: the cores are shared, noise only ever adds time."""
        return float(min(self.run(fd, frame, ingress, repeat) for _ in range(TRIALS)))

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


def _has_table(bpf: BPF, name: bytes) -> bool:
    try:
        bpf[name]
    except KeyError:
        return False
    return True


def _in6(addr: str) -> ct.Array:
    return (ct.c_uint32 * 4).from_buffer_copy(socket.inet_pton(socket.AF_INET6, addr))


@dataclass(frozen=True)
class Row:
    name: str
    counted_as: str
    measure: Callable[[Bench], float]
    new: bool = False  # a path only this build has (issue 8's checks): no baseline figure


def _repeat_rows(n: int) -> list[Row]:
    def steady(
        frame: Frame,
        reason: Reason,
        prepare: Callable[[Bench], None] = lambda b: None,
        ingress: str = CLIENT_LINK.name,
    ) -> Callable[[Bench], float]:
        def measure(b: Bench) -> float:
            prepare(b)
            with b.counted({reason: n * TRIALS}):
                return b.best(b.fd, b.frame(frame), n, ingress)

        return measure

    def cycle(frame: Frame, fwd: Reason) -> Callable[[Bench], float]:
        def measure(b: Bench) -> float:
            b.cycling()
            try:
                half = n // 2 * TRIALS
                with b.counted({fwd: half, Reason.FWD_DECAP: half}):
                    ns = b.best(b.fd, b.frame(frame), n)
                b.check_live()
                return ns
            finally:
                for name in (b"vips", b"txr_addrs", b"transceivers"):
                    b.relay[name].clear()
                b.clear()
                b.setup()

        return measure

    def cycle6(frame: Frame, fwd: Reason) -> Callable[[Bench], float]:
        """The IPv6 twin of cycle: the client's [address]:port a VIP6, its reverse flow in
        flows6 to the relay itself."""

        def measure(b: Bench) -> float:
            b.learn6()
            b.setup(tunnel=(TXR_ADDR, TXR_PORT))
            b.add_vip6(CLIENT6, CLIENT_PORT)
            entropy = flow_entropy(CLIENT6, CLIENT_PORT, VIP_PORT)
            b.add_txr(RETURN_ID, TXR_ADDR, entropy)
            b.add_flow6((VIP6, VIP_PORT), (CLIENT6, CLIENT_PORT), RETURN_ID)
            try:
                half = n // 2 * TRIALS
                with b.counted({fwd: half, Reason.FWD_DECAP: half}):
                    ns = b.best(b.fd, b.frame(frame), n)
                b.check_live(b"flows6")
                return ns
            finally:
                for name in (b"vips", b"vips6", b"txr_addrs", b"transceivers"):
                    b.relay[name].clear()
                b.clear()
                b.setup()

        return measure

    def other_txr(b: Bench) -> None:
        """The client's flow goes to another transceiver (registered), and is live."""
        b.add_txr(TXR_ID + 1, TXR_ADDR, TXR_PORT + 1)
        b.learn()
        flows = b.relay[b"flows"]
        ((key, val),) = flows.items()
        val.id = TXR_ID + 1
        flows[key] = val
        b.flows_changed()
        b.run(b.fd, client(RTP))  # a client packet: live now

    def flooded(b: Bench) -> None:
        b.clear()
        for port in range(40000, 40000 + 1024):  # the budget (ufrag_flow_limit 1024) used up
            b.run(b.fd, b.binding(port=port))

    return [
        Row("pass: not for us", "pass_not_ours", steady(NOT_OURS, Reason.PASS_NOT_OURS)),
        Row(
            "drop: no flow",
            "drop_no_flow",
            steady(client(RTP), Reason.DROP_NO_FLOW, lambda b: b.clear_flows()),
        ),
        Row(
            "drop: bad tag (SipHash)",
            "drop_bad_tag",
            steady(lambda b: b.binding(key=bytes(16)), Reason.DROP_BAD_TAG),
        ),
        Row(
            "flow hit <-> decap, mean", "fwd_flow + fwd_decap", cycle(client(RTP), Reason.FWD_FLOW)
        ),
        Row(
            "STUN known <-> decap, mean",
            "fwd_stun_known + fwd_decap",
            cycle(lambda b: b.binding(), Reason.FWD_STUN_KNOWN),
        ),
        Row(
            "drop: decap, no flow (reverse miss)",
            "drop_decap_no_flow",
            steady(STRAY_REPLY, Reason.DROP_DECAP_NO_FLOW, ingress=TXR_LINK.name),
            new=True,
        ),
        Row(
            "drop: decap, another txr's flow",
            "drop_decap_wrong_txr",
            steady(REPLY, Reason.DROP_DECAP_WRONG_TXR, other_txr, TXR_LINK.name),
            new=True,
        ),
        Row(
            "drop: TTL 1 client packet",
            "drop_ttl_expired",
            # another client: the prologue gives CLIENT's packets TTL 64 back
            steady(client(RTP, ttl=1, src="198.19.64.7"), Reason.DROP_TTL_EXPIRED),
            new=True,
        ),
        Row(
            "drop: live flow not moved",
            "drop_flow_live",
            steady(lambda b: b.binding(), Reason.DROP_FLOW_LIVE, other_txr),
            new=True,
        ),
        Row(
            "drop: ufrag over its budget",
            "drop_ufrag_flood",
            steady(lambda b: b.binding(port=39999), Reason.DROP_UFRAG_FLOOD, flooded),
            new=True,
        ),
        Row(
            "v6 flow hit <-> v6 decap, mean",
            "fwd_flow + fwd_decap",
            cycle6(client6(RTP), Reason.FWD_FLOW),
            new=True,
        ),
        Row(
            "v6 STUN known <-> v6 decap, mean",
            "fwd_stun_known + fwd_decap",
            cycle6(binding6(), Reason.FWD_STUN_KNOWN),
            new=True,
        ),
        Row(
            "v6 pass: ICMPv6 to the VIP6",
            "pass_not_ours",
            steady(client6(RTP, nh=58), Reason.PASS_NOT_OURS),
            new=True,
        ),
        Row(
            "v6 drop: no flow",
            "drop_no_flow",
            steady(client6(RTP), Reason.DROP_NO_FLOW, Bench.clear),
            new=True,
        ),
        Row(
            "v6 drop: extension header",
            "drop_ipv6_ext_headers",
            steady(client6(RTP, nh=0), Reason.DROP_IPV6_EXT_HEADERS),
            new=True,
        ),
        Row(
            "v6 drop: hop limit 1",
            "drop_ttl_expired",
            # another client: the prologue gives CLIENT6's packets hop limit 64 back
            steady(client6(RTP, hops=1, src="2001:db8:ed40::7"), Reason.DROP_TTL_EXPIRED),
            new=True,
        ),
    ]


def _single_rows(n: int) -> list[Row]:
    def single(
        frames: Callable[[Bench], list[bytes]],
        reason: Reason,
        ingress: str = CLIENT_LINK.name,
        prepare: Callable[[Bench], None] = lambda b: None,
    ) -> Callable[[Bench], float]:
        def measure(b: Bench) -> float:
            prepare(b)
            batch = frames(b)
            with b.counted({reason: len(batch)}):
                return b.median(b.fd, batch, ingress)

        return measure

    clear = Bench.clear

    # one ufrag per new flow (a nonce each), as calls do: the per-ufrag budget is not the limit
    def new_flows(b: Bench) -> list[bytes]:
        nonces = [(i + 1).to_bytes(4, "big") for i in range(n)]
        return [b.binding(port=1024 + i % 60000, nonce=x) for i, x in enumerate(nonces)]

    def new_flows6(b: Bench) -> list[bytes]:
        nonces = [(i + 1).to_bytes(4, "big") for i in range(n)]
        return [binding6(port=1024 + i % 60000, nonce=x) for i, x in enumerate(nonces)]

    return [
        Row(
            "pass: not for us",
            "pass_not_ours",
            single(lambda b: [NOT_OURS] * n, Reason.PASS_NOT_OURS),
        ),
        Row(
            "drop: no flow",
            "drop_no_flow",
            single(lambda b: [client(RTP)] * n, Reason.DROP_NO_FLOW, prepare=clear),
        ),
        Row(
            "flow hit: encap + fib",
            "fwd_flow",
            single(lambda b: [client(RTP)] * n, Reason.FWD_FLOW, prepare=Bench.learn),
        ),
        Row(
            "STUN known: ufrag + encap",
            "fwd_stun_known",
            single(lambda b: [b.binding()] * n, Reason.FWD_STUN_KNOWN, prepare=Bench.learn),
        ),
        Row(
            "STUN new flow",
            "fwd_stun_new",
            single(new_flows, Reason.FWD_STUN_NEW, prepare=clear),
        ),
        Row(
            "decap: tunnel -> client",
            "fwd_decap",
            single(lambda b: [REPLY] * n, Reason.FWD_DECAP, TXR_LINK.name, Bench.learn),
        ),
        Row(
            "v6 flow hit: encap + fib",
            "fwd_flow",
            single(lambda b: [client6(RTP)] * n, Reason.FWD_FLOW, prepare=Bench.learn6),
            new=True,
        ),
        Row(
            "v6 STUN new flow",
            "fwd_stun_new",
            single(new_flows6, Reason.FWD_STUN_NEW, prepare=clear),
            new=True,
        ),
        Row(
            "v6 decap: tunnel -> client (FIB, uncached)",
            "fwd_decap",
            single(lambda b: [REPLY6] * n, Reason.FWD_DECAP, TXR_LINK.name, Bench.learn6),
            new=True,
        ),
    ]


def run(samples: int = 20_000, repeat: int = 1_000_000, baseline: str = "main") -> Table:
    repeat += repeat % 2  # the cycles need an even count
    table = Table(
        "XDP relay paths (BPF_PROG_TEST_RUN, ns/packet)",
        ["path", "counted as", "method", baseline, "this build", "delta", "minus XDP_PASS"],
    )
    with (
        fib_sandbox(prefix="edgebench") as sandbox,
        NetnsWorker(sandbox.path) as worker,
        tempfile.TemporaryDirectory(prefix="edgebench-") as tmp,
    ):
        old_dir = _baseline_dir(baseline, Path(tmp))
        trivial = BPF(text=BASELINE_SRC)
        relay = compile_relay(source=_prologue(relay_source()))
        old: Any = None
        try:
            base_fd = trivial.load_func(b"xdp_pass", BPF.XDP).fd
            b = Bench(sandbox, worker, relay, base_fd)
            if old_dir is not None:
                old = compile_relay(bpf_dir=old_dir, source=_prologue(relay_source(old_dir)))
            ob = Bench(sandbox, worker, old, base_fd) if old is not None else None
            methods = [
                (
                    f"repeat {repeat:,}",
                    lambda: b.best(base_fd, client(RTP), repeat),
                    _repeat_rows(repeat),
                ),
                (
                    f"median of {samples:,} runs",
                    lambda: b.median(base_fd, [client(RTP)] * samples),
                    _single_rows(samples),
                ),
            ]
            for method, baseline_ns, rows in methods:
                base = baseline_ns()
                table.add("trivial XDP_PASS program", "-", method, "-", base, "-", 0.0)
                for row in rows:
                    ns = row.measure(b)
                    was = row.measure(ob) if ob is not None and not row.new else None
                    table.add(
                        row.name,
                        row.counted_as,
                        method,
                        "-" if was is None else was,
                        ns,
                        "-" if was is None else ns - was,
                        ns - base,
                    )
        finally:
            for prog in (relay, old, trivial):
                if prog is not None:
                    prog.cleanup()
    table.notes += [
        f"{baseline}: the relay as of `git show {baseline}:bpf/`, built and measured in this run"
        + ("" if old_dir is not None else " (not available here: no figures)")
        + "; delta: this build minus it.",
        "both builds run behind the same prologue restoring the client packet's TTL (see top).",
        "one load of each build: a JIT image's placement alone moves a row by up to 15-20 ns "
        "(bench.bpf_breakdown loads each copy several times), so a smaller delta is no measured "
        "difference.",
        f"repeat rows: best of {TRIALS}, warm caches; a <-> row: mean of two paths run in turn.",
        "median rows: one packet per call; they include the kernel's timer and cold caches.",
        "FIB paths run in a veth sandbox netns with permanent neighbours (XDP_REDIRECT verdicts).",
        "bpf_fib_lookup is about half of a forwarded packet's time here (measured by stubbing it);",
        "its answers are cached per CPU for 250 ms (bpf/fib.h), so these rows run on cache hits;",
        "the IPv6 decap's AF_INET6 lookup is not cached (the cache is keyed by IPv4 addresses).",
        "v6 rows: an IPv6 client through the same program (issue 11); the baseline has no IPv6.",
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description="ns/packet per path of the XDP relay")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline", default="main", help="git revision of the baseline build (default main)"
    )
    args = parser.parse_args()
    print(run(samples=args.samples, repeat=args.repeat, baseline=args.baseline).render_text())


if __name__ == "__main__":
    main()
