"""Drive the compiled relay through BPF_PROG_TEST_RUN inside a fib sandbox (lab.fibsandbox).

Addresses: the sandbox's links are 198.19.0.0/24 (clients' side) and 198.19.1.0/24
(transceivers' side); VIPs live in 198.19.128.0/24 and clients in 198.19.64.0/18.

IPv6 (tests/bpf/test_bpf_ipv6.py): the client link also has 2001:db8:ed00::1/64; clients live
in 2001:db8:ed40::/48 behind its gateway and the VIP6 is 2001:db8:ed80::10.

Most tests are tables of `Case`s (description, packet in, packet out, verdict, reason), each run
by `check` on a freshly reset relay: `@cases(...)` parametrizes a test with them, ids = the
descriptions.
"""

from __future__ import annotations

import ctypes as ct
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
from bcc import BPF

from control.program import MAP_NAMES
from control.reasons import Reason
from datapath.maps import (  # noqa: F401 (the flow clock, re-exported to the tests)
    CLUSTER_LOCAL,
    FLOW_SEEN_SHIFT,
    coarse_ns,
    next_txr_gen,
    seen_now,
    seen_of,
)
from lab.fibsandbox import (
    CLIENT_LINK,
    NEAR_TXR,
    TX_TXR,
    TXR_LINK,
    UNRESOLVED,
    NetnsWorker,
    Sandbox,
)
from wire.defaults import RELAY_TUNNEL_PORT
from wire.encap import encapsulate, forward_hop, ipv4_udp, ipv6_udp, parse_udp
from wire.stun import build_binding_request
from wire.ufrag import EPOCH_SECONDS, mint

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

NH_CACHE_BITS = 14  # bpf/constants.h

VIP = "198.19.128.10"
VIP_PORTS = (3478, 443)
TUNNEL_ADDR, TUNNEL_PORT = TXR_LINK.addr, RELAY_TUNNEL_PORT
CLIENT, CLIENT_PORT = "198.19.64.5", 50000
VIP6 = "2001:db8:ed80::10"
CLIENT6 = "2001:db8:ed40::5"
ETH_P_IPV6 = 0x86DD
KEY_ID = 1
KEY = bytes.fromhex("5ec2e7a1d04b3f96a8173c0d2e4f6b81")
CLUSTER = 1


@dataclass(frozen=True)
class Txr:
    cluster: int
    id: int
    addr: str
    port: int


NEAR = Txr(CLUSTER, 7, NEAR_TXR[0], 5000)  # on the transceiver link: XDP_REDIRECT from cli0
ON_CLIENT_LINK = Txr(CLUSTER, 8, TX_TXR[0], 5000)  # egress == ingress: XDP_TX
NO_NEIGH = Txr(CLUSTER, 9, UNRESOLVED, 5000)
UNREACHABLE = Txr(CLUSTER, 10, "198.19.3.5", 5000)
SMALL_MTU = Txr(CLUSTER, 11, "198.19.4.5", 5000)
ALL_TXRS = (NEAR, ON_CLIENT_LINK, NO_NEIGH, UNREACHABLE, SMALL_MTU)


def be32(addr: str) -> int:
    """An IPv4 address as the u32 whose memory holds it in network order."""
    return int.from_bytes(socket.inet_aton(addr), "little")


def be16(port: int) -> int:
    return socket.htons(port)


def in6(addr: str) -> ct.Array:
    """An IPv6 address as bcc's `__be32 addr[4]` field holds it (network order in memory)."""
    return (ct.c_uint32 * 4).from_buffer_copy(socket.inet_pton(socket.AF_INET6, addr))


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def eth(
    payload: bytes,
    *,
    dst: str = CLIENT_LINK.mac,
    src: str = CLIENT_LINK.gateway_mac,
    ethertype: int = 0x0800,
) -> bytes:
    return mac(dst) + mac(src) + ethertype.to_bytes(2, "big") + payload


def client_frame(
    payload: bytes,
    *,
    client: str = CLIENT,
    port: int = CLIENT_PORT,
    vip_port: int = VIP_PORTS[0],
    tos: int = 0,
) -> bytes:
    """A client's datagram to the VIP, as it arrives on cli0."""
    return eth(ipv4_udp(client, port, VIP, vip_port, payload, tos=tos))


def client_frame6(
    payload: bytes,
    *,
    client: str = CLIENT6,
    port: int = CLIENT_PORT,
    vip: str = VIP6,
    vip_port: int = VIP_PORTS[0],
    hop_limit: int = 64,
    tclass: int = 0,
) -> bytes:
    """An IPv6 client's datagram to the VIP6, as it arrives on cli0."""
    pkt = ipv6_udp(client, port, vip, vip_port, payload, hop_limit=hop_limit, tclass=tclass)
    return eth(pkt, ethertype=ETH_P_IPV6)


RTP = bytes([0x80, 0x6F]) + bytes(range(2, 160))  # first byte 128: not STUN (RFC 7983)


def binding(txr: Txr, *, nonce: bytes = b"\x01\x02\x03\x04", epoch: int | None = None) -> bytes:
    """A Binding request whose ufrag routes to txr under the harness key (minted now, unless
    `epoch` says when)."""
    return build_binding_request(mint(KEY_ID, KEY, txr.cluster, txr.id, nonce, epoch) + ":cl1E")


IDLE = 1000  # seen-units ago: older than any idle time the tests use


def wall_offset_for(epoch: int) -> int:
    """A relay_config.wall_offset_ns that puts the program's clock in the middle of `epoch`
    (of the current 4096-epoch cycle), whatever the real time."""
    cycle = 4096 * EPOCH_SECONDS * 10**9
    base = time.time_ns() // cycle * cycle
    wall = base + epoch * EPOCH_SECONDS * 10**9 + EPOCH_SECONDS * 10**9 // 2
    return wall - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Outcome:
    action: int
    data: bytes
    counts: dict[Reason, tuple[int, int]]  # reason -> (packets, bytes) counted by this run

    @property
    def reason(self) -> Reason:
        """The one reason this run counted (fails unless exactly one packet was counted)."""
        assert sum(p for p, _ in self.counts.values()) == 1, self.counts
        (reason,) = self.counts
        return reason


class Relay:
    """The loaded program, its maps and the sandbox it runs in."""

    def __init__(self, bpf: BPF, prog_fd: int, worker: NetnsWorker, sandbox: Sandbox) -> None:
        self.bpf = bpf
        self.prog_fd = prog_fd
        self.worker = worker
        self.sandbox = sandbox
        self.maps = {name: bpf[name.encode()] for name in MAP_NAMES}
        # the per-CPU next-hop cache (bpf/fib.h) and its flush epoch, both unpinned
        self.nexthops, self.nh_epoch = bpf[b"nexthops"], bpf[b"nh_epoch"]
        # the per-CPU flow copies (bpf/flowcopy.h) and their slot versions, both unpinned
        self.flow_copy_map, self.flow_versions = bpf[b"flow_copies"], bpf[b"flow_versions"]
        self.flow_copy_tags = bpf[b"flow_copy_tags"]
        # each CPU's last coarse clock reading (bpf/clock.h), unpinned
        self.clock_readings = bpf[b"clock_readings"]

    # -- maps ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Clear every map and counter, then load the defaults: configured, both VIP ports,
        key 1, every sandbox transceiver."""
        for name in (
            "vips",
            "transceivers",
            "txr_addrs",
            "clusters",
            "flows",
            "counters",
            "vips6",
            "flows6",
        ):
            self.maps[name].clear()  # arrays: every slot zeroed (per CPU for counters)
        # a new generation (relayctl load starts at 1): no flow copied in the cache by an
        # earlier case is valid (bpf/flowcopy.h)
        self.set_txr_gen(next_txr_gen(self.txr_gen()))
        self.bpf[b"ufrag_rates"].clear()
        self.clock_readings.clear()  # a reading a case made up is not the next case's clock
        self.flush_nexthops()
        self.keys({})
        self.maps["config"].clear()
        self.configure(TUNNEL_ADDR, TUNNEL_PORT)
        self.set_clock()
        self.tunnel_links(TXR_LINK.name)
        for port in VIP_PORTS:
            self.add_vip(VIP, port)
            self.add_vip6(VIP6, port)
        self.keys({KEY_ID: KEY})
        for txr in ALL_TXRS:
            self.add_txr(txr)

    def _config(self, **fields: object) -> None:
        """Change some fields of config[0], keeping the others."""
        cfg = self.maps["config"]
        leaf = cfg[ct.c_uint32(0)]
        for name, value in fields.items():
            setattr(leaf, name, value)
        cfg[ct.c_uint32(0)] = leaf

    def configure(self, addr: str | None, port: int, flags: int = 0) -> None:
        self._config(tunnel_addr=be32(addr) if addr else 0, tunnel_port=be16(port), flags=flags)

    def set_clock(self, epoch: int | None = None, offset: int | None = None) -> None:
        """The program's wall clock: the real one, the middle of `epoch`, or a raw offset."""
        if offset is None:
            offset = (
                time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                if epoch is None
                else wall_offset_for(epoch)
            )
        self._config(wall_offset_ns=offset)

    def tunnel_links(self, *names: str) -> None:
        """The links tunnel datagrams are accepted on (the sandbox's link names)."""
        ids = [self.sandbox.ifindex[n] for n in names] + [0] * (4 - len(names))
        self._config(tunnel_ifindex=(ct.c_uint32 * 4)(*ids))

    def limits(self, **fields: int) -> None:
        """flow_idle_s, ufrag_max_age, ufrag_flow_limit, ufrag_window_s (0: the default)."""
        self._config(**fields)

    def add_vip(self, addr: str, port: int, index: int = 0) -> None:
        vips = self.maps["vips"]
        key = vips.Key()
        key.addr, key.port = be32(addr), be16(port)
        vips[key] = ct.c_uint32(index)

    def add_vip6(self, addr: str, port: int, index: int = 0) -> None:
        """A VIP6 address:port, and its address entry (port 0) as relayctl load writes it."""
        vips6 = self.maps["vips6"]
        for p in (port, 0):
            key = vips6.Key()
            key.addr, key.port = in6(addr), be16(p)
            vips6[key] = ct.c_uint32(index)

    def keys(self, keys: dict[int, bytes]) -> None:
        table = self.maps["keys"]
        for kid in range(16):
            leaf = table.Leaf()
            if kid in keys:
                leaf.k0 = int.from_bytes(keys[kid][:8], "little")
                leaf.k1 = int.from_bytes(keys[kid][8:], "little")
                leaf.live = 1
            table[ct.c_uint32(kid)] = leaf

    def add_txr(self, txr: Txr) -> None:
        table, addrs = self.maps["transceivers"], self.maps["txr_addrs"]
        key, val = table.Key(), table.Leaf()
        key.cluster, key.id = txr.cluster, txr.id
        val.addr, val.port = be32(txr.addr), be16(txr.port)
        moved = table.get(key) is not None
        table[key] = val
        if moved:  # a changed endpoint: bumped after the write, as control/sync.py does
            self.bump_txr_gen()
        akey = addrs.Key()
        akey.addr, akey.port = val.addr, val.port
        count = addrs.get(akey)
        addrs[akey] = ct.c_uint32((count.value if count is not None else 0) + 1)
        # as control/sync.py does: a cluster with a transceiver in the map is served
        self.maps["clusters"][ct.c_uint32(txr.cluster)] = ct.c_uint32(CLUSTER_LOCAL)

    def remove_txr(self, txr: Txr, *, bump: bool = True) -> None:
        """Delete txr from the map and (as control/sync.py does) then bump txr_gen."""
        table = self.maps["transceivers"]
        key = table.Key()
        key.cluster, key.id = txr.cluster, txr.id
        del table[key]
        if bump:
            self.bump_txr_gen()

    def txr_gen(self) -> int:
        return int(self.maps["txr_gen"][ct.c_uint32(0)].value)

    def set_txr_gen(self, gen: int) -> None:
        self.maps["txr_gen"][ct.c_uint32(0)] = ct.c_uint32(gen)

    def bump_txr_gen(self) -> None:
        self.set_txr_gen(next_txr_gen(self.txr_gen()))

    def flow_key(
        self,
        client: str = CLIENT,
        port: int = CLIENT_PORT,
        vip: str = VIP,
        vip_port: int = VIP_PORTS[0],
    ) -> ct.Structure:
        key = self.maps["flows"].Key()
        key.client_addr, key.vip_addr = be32(client), be32(vip)
        key.client_port, key.vip_port = be16(port), be16(vip_port)
        return key

    def set_flow(
        self, txr: Txr, created_ns: int = 1, *, live: bool = False, **where: object
    ) -> None:
        """A flow to txr; idle (last client packet long ago) unless `live`."""
        flows = self.maps["flows"]
        val = flows.Leaf()
        val.cluster, val.id, val.created_ns = txr.cluster, txr.id, created_ns
        val.seen = seen_now() if live else (seen_now() - IDLE) & 0xFFFF
        self.write_flow(self.flow_key(**where), val)

    def write_flow(self, key: ct.Structure, val: ct.Structure) -> None:
        """flows[key] = val, then the key's flow copy slot version bumped, as the program
        does after its own writes: no CPU uses a copy of the old flow."""
        self.maps["flows"][key] = val
        slot = ct.c_uint32(self.flow_copy_slot(key))
        self.flow_versions[slot] = ct.c_uint32((self.flow_versions[slot].value + 1) & 0xFFFFFFFF)

    def flow_copy_hash(self, key: ct.Structure) -> int:
        """flow_copy_hash() in bpf/flowcopy.h: its top bits are the slot, it | 1 the tag."""
        x = key.client_addr ^ ((key.client_port << 16) | key.vip_port)
        x ^= (key.vip_addr * 0x85EBCA6B) & 0xFFFFFFFF
        return (x * 0x9E3779B1) & 0xFFFFFFFF

    def flow_copy_slot(self, key: ct.Structure) -> int:
        """The flow copy slot of a flows key: flow_copy_slot_of() in bpf/flowcopy.h."""
        bits = self.flow_copy_map.max_entries.bit_length() - 1  # FLOW_COPY_BITS of this build
        return self.flow_copy_hash(key) >> (32 - bits)

    def flow_copies(self, **where: object) -> list[ct.Structure]:
        """The CPUs' copies of a flow that a packet would use now (bpf/flowcopy.h: key,
        slot version and txr_gen current, made in this clock unit; a client packet also wants
        `seen` of this unit)."""
        key = self.flow_key(**where)
        slot = ct.c_uint32(self.flow_copy_slot(key))
        version, gen = self.flow_versions[slot].value, self.txr_gen()
        tags = self.flow_copy_tags.getvalue(slot)
        return [
            c
            for c, tag in zip(self.flow_copy_map.getvalue(slot), tags, strict=True)
            if bytes(c.key) == bytes(key)
            and gen
            and int(tag) == self.flow_copy_hash(key) | 1
            and (c.gen, c.version, c.tick) == (gen, version, seen_now())
        ]

    def get_flow(self, **where: object) -> ct.Structure | None:
        if ":" in str(where.get("client", "")):
            return self.maps["flows6"].get(self.flow6_key(**where))  # type: ignore[arg-type]
        return self.maps["flows"].get(self.flow_key(**where))

    def flow6_key(
        self,
        client: str = CLIENT6,
        port: int = CLIENT_PORT,
        vip: str = VIP6,
        vip_port: int = VIP_PORTS[0],
    ) -> ct.Structure:
        key = self.maps["flows6"].Key()
        key.client_addr, key.vip_addr = in6(client), in6(vip)
        key.client_port, key.vip_port = be16(port), be16(vip_port)
        return key

    def set_flow6(
        self, txr: Txr, created_ns: int = 1, *, live: bool = False, **where: object
    ) -> None:
        """An IPv6 flow to txr (default: CLIENT6 to the VIP6's first port); idle unless live."""
        flows6 = self.maps["flows6"]
        val = flows6.Leaf()
        val.cluster, val.id, val.created_ns = txr.cluster, txr.id, created_ns
        val.seen = seen_now() if live else (seen_now() - IDLE) & 0xFFFF
        flows6[self.flow6_key(**where)] = val  # type: ignore[arg-type]

    def flows(self) -> list[tuple[ct.Structure, ct.Structure]]:
        """Both flow maps' entries (IPv4 keys are 12 bytes, IPv6 ones 36)."""
        return list(self.maps["flows"].items()) + list(self.maps["flows6"].items())

    def flow_table(self) -> dict[bytes, tuple[int, int, int]]:
        """The flow map by key bytes: (cluster, id, created_ns); `seen` is left out, every
        client packet of a flow refreshes it (tests of it read it themselves)."""
        return {bytes(k): (v.cluster, v.id, v.created_ns) for k, v in self.flows()}

    def counters(self) -> dict[int, tuple[int, int]]:
        table = self.maps["counters"]
        out = {}
        for reason in range(len(Reason)):
            cpus = table.getvalue(ct.c_uint32(reason))
            out[reason] = (sum(c.packets for c in cpus), sum(c.bytes for c in cpus))
        return out

    def flush_nexthops(self) -> None:
        """Forget every cached next hop (bump the epoch): the next packets ask the FIB."""
        epoch = self.nh_epoch[ct.c_uint32(0)].value
        self.nh_epoch[ct.c_uint32(0)] = ct.c_uint32((epoch + 1) & 0xFFFFFFFF)

    def nexthop_slot(
        self, daddr: str, saddr: str, sport: int, dport: int, ingress: str, tos: int = 0
    ) -> int:
        """The cache slot of a lookup's key: nh_slot_of() in bpf/fib.h."""
        ifindex = self.sandbox.ifindex[ingress]
        x = be32(daddr) ^ ((be16(sport) << 16) | be16(dport)) ^ ((ifindex << 8) & 0xFFFFFFFF) ^ tos
        x ^= (be32(saddr) * 0x85EBCA6B) & 0xFFFFFFFF
        return ((x * 0x9E3779B1) & 0xFFFFFFFF) >> (32 - NH_CACHE_BITS)

    def nexthop(self, slot: int) -> ct.Array:
        """The slot's per-CPU copies."""
        return self.nexthops.getvalue(ct.c_uint32(slot))

    def valid_nexthops(self, slot: int) -> list[ct.Structure]:
        """The copies of the slot that a packet would use now (epoch current, filled)."""
        epoch = self.nh_epoch[ct.c_uint32(0)].value
        return [c for c in self.nexthop(slot) if c.val.expires_ns and c.val.epoch == epoch]

    def set_nexthop(self, slot: int, copies: ct.Array) -> None:
        self.nexthops[ct.c_uint32(slot)] = copies

    def expire_nexthops(self, *slots: int) -> None:
        """Age these slots past the validity window (what NH_CACHE_NS of time does), without
        sleeping."""
        for slot in slots:
            copies = self.nexthop(slot)
            for c in copies:
                if c.val.expires_ns:
                    c.val.expires_ns = 1
            self.set_nexthop(slot, copies)

    # -- running ------------------------------------------------------------------------
    def run(self, frame: bytes, *, ingress: str = CLIENT_LINK.name) -> Outcome:
        before = self.counters()
        res = self.worker.test_run(
            self.prog_fd, frame, ingress_ifindex=self.sandbox.ifindex[ingress]
        )
        after = self.counters()
        counts = {
            Reason(r): (after[r][0] - before[r][0], after[r][1] - before[r][1])
            for r in after
            if after[r] != before[r]
        }
        return Outcome(res.retval, res.data_out, counts)

    def run_many(self, frames: Iterable[bytes], **kw: str) -> list[Outcome]:
        return [self.run(f, **kw) for f in frames]


# -- tables of cases ------------------------------------------------------------------------


def eth_header(dst: str, src: str) -> bytes:
    return mac(dst) + mac(src) + b"\x08\x00"


# The Ethernet header the FIB gives a forwarded packet, by next hop (lab.fibsandbox's routes).
VIA_NEAR = eth_header(NEAR_TXR[1], TXR_LINK.mac)  # out of txr0 to NEAR (on-link)
VIA_TX_TXR = eth_header(TX_TXR[1], CLIENT_LINK.mac)  # back out of cli0 to ON_CLIENT_LINK
VIA_TXR_GATEWAY = eth_header(TXR_LINK.gateway_mac, TXR_LINK.mac)  # default route, small MTU
VIA_CLIENT_GATEWAY = eth_header(CLIENT_LINK.gateway_mac, CLIENT_LINK.mac)  # to the clients


def tunnelled(frame: bytes, txr: Txr, via: bytes | None = VIA_NEAR) -> bytes:
    """What the relay emits for a client frame it sends to txr: via's Ethernet header (None: the
    frame's own, kept when the FIB refuses), then the tunnel header and the whole IPv4 packet."""
    # the frame's own MACs when the FIB refused, with the outer header's ethertype (IPv4)
    head = frame[:12] + b"\x08\x00" if via is None else via
    return head + encapsulate(forward_hop(frame[14:]), TUNNEL_ADDR, txr.addr, txr.port)


def reply_from(txr: Txr) -> bytes:
    """txr's reply to the harness client (RTP from the VIP's first port), tunnelled from txr to
    the relay, as it arrives on txr0."""
    inner = ipv4_udp(VIP, VIP_PORTS[0], CLIENT, CLIENT_PORT, RTP)
    outer = ipv4_udp(txr.addr, txr.port, TUNNEL_ADDR, TUNNEL_PORT, inner)
    return eth(outer, dst=TXR_LINK.mac, src=NEAR_TXR[1])


Setup = Callable[["Relay"], object]


def with_flow(txr: Txr, created_ns: int = 1, *, live: bool = False, **where: object) -> Setup:
    """The flow map holds a flow to txr (default: the harness client to the first VIP port),
    idle unless `live`."""
    return lambda relay: relay.set_flow(txr, created_ns, live=live, **where)


def with_limits(**fields: int) -> Setup:
    return lambda relay: relay.limits(**fields)


def with_tunnel_links(*names: str) -> Setup:
    return lambda relay: relay.tunnel_links(*names)


def at_epoch(epoch: int) -> Setup:
    """The program's clock in the middle of `epoch`."""
    return lambda relay: relay.set_clock(epoch)


def with_txr(txr: Txr) -> Setup:
    return lambda relay: relay.add_txr(txr)


def without_txr(txr: Txr) -> Setup:
    return lambda relay: relay.remove_txr(txr)


def with_vip(addr: str, port: int) -> Setup:
    if ":" in addr:
        return lambda relay: relay.add_vip6(addr, port)
    return lambda relay: relay.add_vip(addr, port)


def with_flow6(txr: Txr, created_ns: int = 1, *, live: bool = False, **where: object) -> Setup:
    """flows6 holds a flow to txr (default: CLIENT6 to the VIP6's first port)."""
    return lambda relay: relay.set_flow6(txr, created_ns, live=live, **where)


def with_keys(keys: dict[int, bytes]) -> Setup:
    return lambda relay: relay.keys(keys)


def configured(addr: str | None, port: int, flags: int = 0) -> Setup:
    return lambda relay: relay.configure(addr, port, flags)


def cleared(map_name: str) -> Setup:
    return lambda relay: relay.maps[map_name].clear()


@dataclass(frozen=True)
class Case:
    """One packet through the relay, and everything it must do."""

    description: str  # also the test id
    packet: bytes  # the frame in
    out: bytes | None  # the frame as the program leaves it; None: exactly the frame in
    action: int  # the verdict: XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT
    reason: Reason  # counted once, with the frame's length as bytes
    setup: tuple[Setup, ...] = ()  # run after the relay's reset, before the packet
    ingress: str = CLIENT_LINK.name
    learns: Txr | None = None  # the flow this packet creates or moves; else flows stay as they were


def cases(*table: Case) -> pytest.MarkDecorator:
    """Parametrize a test's `case` argument with a table; the descriptions are the ids."""
    ids = [c.description for c in table]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"two cases share a description: {duplicates}"
    return pytest.mark.parametrize("case", table, ids=ids)


def check(relay: Relay, case: Case) -> Outcome:
    """Run the case's packet after its setup: the verdict, the one counted reason (packets and
    bytes), the bytes out and the flow map must be exactly what the case says."""
    for step in case.setup:
        step(relay)
    before = relay.flow_table()
    out = relay.run(case.packet, ingress=case.ingress)
    assert (out.action, out.counts) == (case.action, {case.reason: (1, len(case.packet))})
    assert out.data == (case.packet if case.out is None else case.out)
    after = relay.flow_table()
    if case.learns is None:
        assert after == before, "the flow map changed"
        return out
    d = parse_udp(case.packet[14:])
    keyf = relay.flow6_key if ":" in d.src else relay.flow_key
    key = bytes(keyf(client=d.src, port=d.sport, vip=d.dst, vip_port=d.dport))
    cluster, txr_id, created_ns = after.pop(key)
    assert (cluster, txr_id) == (case.learns.cluster, case.learns.id)
    assert created_ns > before.pop(key, (0, 0, 0))[2]  # created, or moved: a new timestamp
    seen = relay.get_flow(client=d.src, port=d.sport, vip=d.dst, vip_port=d.dport).seen
    assert (seen_now() - seen) & 0xFFFF <= 1, "a new flow is live"
    assert after == before, "a flow other than the packet's changed"
    return out
