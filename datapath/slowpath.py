"""The relay's slow path: datagrams of flows this relay never saw (DTLS/SRTP after a failover).

With the config flag CONFIG_F_SLOW_PATH set, the XDP program passes a client datagram that is
not a STUN Binding request and has no flow to the kernel (`pass_slow_path`); the VIP is a local
address, so it lands on our UDP socket bound to that VIP:port. We look the flow up in Redis
(docs/wire-format.md §6), install it in the kernel `flows` map (so the next packets take the XDP
path) and tunnel the packet to the transceiver from a raw socket, byte for byte as the program
would have: outer IPv4/UDP from the tunnel address, flow-entropy source port, checksum 0.

Bounded: token buckets per source address and per source /24 (a bounded LRU table: a flood
from one host or one network is cut down to its own share before it touches the rest), then
one global bucket cap packets per second; a batch caps work per wakeup, the socket buffer caps
the queue, and flows Redis does not know are remembered for a second (a flood of garbage costs
one Redis lookup per flow and second). A legitimate failover needs a packet or two per call
(the first installs the flow; the rest take the XDP path), so its sources never run dry. A flood
with spoofed sources spread over the whole internet still shares the global cap with everyone:
that one only bounds the work. With Redis unreachable every slow-path packet is a counted drop
and Redis is retried with backoff; the XDP path does not care.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from datapath import bpfsys
from datapath.maps import (
    CONFIG_F_SLOW_PATH,
    Config,
    FlowKey,
    FlowVal,
    MapError,
    RelayMaps,
    TxrKey,
    be16,
    be32,
    from_be16,
    from_be32,
    read_config,
    read_vips,
    write_config,
)
from wire.encap import EncapError, encapsulate, forward_hop, ipv4_udp
from wire.redisconn import Backoff
from wire.registry import flow_key, parse_flow_value

log = logging.getLogger("relayctl.run")

IP_RECVTTL = 12
IP_FREEBIND = 15
SO_RCVBUFFORCE = 33
RCVBUF = 4 << 20  # the slow path's queue: what exceeds it the kernel drops (RcvbufErrors)
MAX_DATAGRAM = 65535
BATCH = 256  # datagrams handled per wakeup, over all sockets
NEGATIVE_TTL = 1.0  # seconds a flow unknown to Redis is not asked about again
NEGATIVE_MAX = 65536
ANC_SIZE = socket.CMSG_SPACE(4) * 2

# Outcomes of a slow-path datagram (the metric's `outcome` label).
FORWARDED = "forwarded"
UNKNOWN_FLOW = "unknown_flow"  # no flow key in Redis: dropped
BAD_ENTRY = "bad_entry"  # a flow key whose value is not CLUSTER:ID
UNKNOWN_TXR = "unknown_txr"  # the flow's transceiver is not in this relay's map
REDIS_DOWN = "redis_down"
RATE_LIMITED = "rate_limited"  # the global bucket was empty
SOURCE_LIMITED = "source_limited"  # its source address's or source /24's bucket was empty
SEND_ERROR = "send_error"
TTL_EXPIRED = "ttl_expired"  # TTL 1 or 0: a router drops it (the XDP program already does)
OUTCOMES = (
    FORWARDED,
    UNKNOWN_FLOW,
    BAD_ENTRY,
    UNKNOWN_TXR,
    REDIS_DOWN,
    RATE_LIMITED,
    SOURCE_LIMITED,
    TTL_EXPIRED,
    SEND_ERROR,
)
SOURCES_MAX = 65536  # per-source (and per-/24) buckets kept; the least recently used go

Endpoint = tuple[str, int]
Flow = tuple[str, int, str, int]  # client, client port, VIP, VIP port


@dataclass(frozen=True)
class Datagram:
    flow: Flow
    payload: bytes
    ttl: int
    tos: int


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class SourceLimiter:
    """A token bucket per source address and one per source /24, in bounded LRU tables.

    A source evicted from the table comes back with a full bucket: eviction can only favour a
    source, never lock one out (a spoofer cycling through many sources is left to the global
    bucket).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        net_rate: float,
        net_burst: float,
        *,
        max_entries: int = SOURCES_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.net_rate, self.net_burst = net_rate, net_burst
        self.max_entries = max_entries
        self.clock = clock
        # source -> [tokens, last refill]
        self.hosts: OrderedDict[str, list[float]] = OrderedDict()
        self.nets: OrderedDict[str, list[float]] = OrderedDict()

    def _bucket(self, table: OrderedDict[str, list[float]], key: str, burst: float) -> list[float]:
        b = table.get(key)
        if b is None:
            b = table[key] = [burst, self.clock()]
            if len(table) > self.max_entries:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return b

    def _refill(self, b: list[float], rate: float, burst: float, now: float) -> None:
        b[0] = min(burst, b[0] + (now - b[1]) * rate)
        b[1] = now

    def take(self, source: str) -> bool:
        """One token from the source's and its /24's buckets (both, or neither)."""
        now = self.clock()
        host = self._bucket(self.hosts, source, self.burst)
        net = self._bucket(self.nets, source.rpartition(".")[0], self.net_burst)
        self._refill(host, self.rate, self.burst, now)
        self._refill(net, self.net_rate, self.net_burst, now)
        if host[0] >= 1 and net[0] >= 1:
            host[0] -= 1
            net[0] -= 1
            return True
        return False


def bind_vip(addr: str, port: int) -> socket.socket:
    """A non-blocking UDP socket on VIP:port that reports each datagram's TTL and TOS."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # FREEBIND: bind even before the VIP is on lo (it must be, for the kernel to deliver).
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        try:  # FORCE (root) goes past net.core.rmem_max, which is far smaller by default
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((addr, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _ancillary(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    ttl, tos = 64, 0
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL and len(data) >= 4:
            ttl = int.from_bytes(data[:4], "little") & 0xFF
        elif level == socket.IPPROTO_IP and kind == socket.IP_TOS and data:
            tos = data[0]
    return ttl, tos


class SlowPath:
    """Owns the VIP sockets and a raw socket; `serve()` runs on its own thread until `stop()`.

    `redis_factory` makes a client with short timeouts; `count(outcome, n)` records outcomes.
    """

    def __init__(
        self,
        pin_dir: Any,
        redis_factory: Callable[[], Any],
        *,
        prefix: str,
        tunnel_addr: str,
        rate: float,
        burst: float,
        count: Callable[[str, int], None],
        on_redis: Callable[[bool], None] = lambda up: None,
        source_rate: float = 50.0,
        net_rate: float = 500.0,
    ) -> None:
        self.pin_dir = pin_dir
        self.maps = RelayMaps(pin_dir)  # own instance: used from the slow-path thread only
        self._reopen = False
        self.redis_factory = redis_factory
        self.prefix = prefix
        self.tunnel_addr = tunnel_addr
        self.bucket = TokenBucket(rate, burst)
        # Bursts of twice the rate: a failover's first packets all arrive at once.
        self.sources = SourceLimiter(source_rate, 2 * source_rate, net_rate, 2 * net_rate)
        self.count = count
        self.on_redis = on_redis
        self.backoff = Backoff()
        self.negative: OrderedDict[Flow, float] = OrderedDict()
        self.sockets: dict[Endpoint, socket.socket] = {}
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._pending: dict[Endpoint, socket.socket | None] = {}
        self._stopping = False
        self._redis: Any = None
        self.flag_mine = False  # we set CONFIG_F_SLOW_PATH (or took over a killed owner's)

    # --- the switch: sockets and the config flag (called from the control loop) ------------

    def maintain(self, maps: RelayMaps) -> None:
        """Sockets for exactly the pinned VIPs, and the flag on once they are bound (a reload by
        `relayctl load` writes flags 0 and may change the VIPs). `maps` is the caller's."""
        vips = read_vips(maps)
        failed = self.bind(vips)
        cfg = read_config(maps)
        self.tunnel_addr = cfg.tunnel_addr
        on = bool(cfg.flags & CONFIG_F_SLOW_PATH)
        if vips and not failed:
            if not on:
                self._set_flag(maps, True)
            elif not self.flag_mine:  # left set by a killed controller: ours now, we listen
                self.flag_mine = True
        elif failed and on and self.flag_mine:
            # Never clear a flag we did not set: it may be another controller's (it holds the
            # VIP sockets we could not bind).
            self._set_flag(maps, False)

    def release(self, maps: RelayMaps) -> None:
        """Clear our flag first, so no packet goes up to a socket about to close."""
        if self.flag_mine:
            self._set_flag(maps, False)

    def forget_flag(self) -> None:
        """The maps were loaded anew (flags 0): the next maintain() sets the flag again."""
        self.flag_mine = False

    def _set_flag(self, maps: RelayMaps, on: bool) -> None:
        try:
            cfg = read_config(maps)
            flags = (cfg.flags | CONFIG_F_SLOW_PATH) if on else (cfg.flags & ~CONFIG_F_SLOW_PATH)
            write_config(maps, Config(cfg.tunnel_addr, cfg.tunnel_port, flags))
        except (MapError, OSError) as exc:
            log.error("cannot %s the slow path flag: %s", "set" if on else "clear", exc)
            return
        self.flag_mine = on
        log.info("slow path flag %s", "set" if on else "cleared")

    # --- sockets (bound on the control loop's thread; applied on the slow-path thread) --------

    def bind(self, vips: list[Endpoint]) -> list[Endpoint]:
        """Bind sockets for VIPs not bound yet, hand them over, and drop sockets of VIPs that
        are gone. Returns the VIPs that could not be bound (the error is logged)."""
        failed = []
        wanted = set(vips)
        with self._lock:
            current = set(self.sockets) | {k for k, v in self._pending.items() if v is not None}
            for ep in wanted - current:
                try:
                    self._pending[ep] = bind_vip(*ep)
                except OSError as exc:
                    log.error("slow path: cannot bind %s:%d: %s", *ep, exc.strerror)
                    failed.append(ep)
            for ep in current - wanted:
                self._pending[ep] = None
            changed = bool(self._pending)
        if changed:
            self._wake_w.send(b"s")
        return failed

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for ep, sock in pending.items():
            old = self.sockets.pop(ep, None)
            if old is not None:
                self.sel.unregister(old)
                old.close()
            if sock is not None:
                self.sockets[ep] = sock
                self.sel.register(sock, selectors.EVENT_READ, ep)

    # --- serving ------------------------------------------------------------------------------

    def serve(self) -> None:
        while not self._stopping:
            events = self.sel.select(timeout=1.0)
            self._apply_pending()
            batch: list[Datagram] = []
            for key, _ in events:
                if key.fileobj is self._wake_r:
                    self._drain_wake()
                    continue
                sock = cast(socket.socket, key.fileobj)
                if sock in self.sockets.values():  # not closed by _apply_pending just now
                    batch.extend(self._receive(sock, key.data, BATCH - len(batch)))
            if batch and self._fresh_maps():
                try:
                    self.handle(batch)
                except Exception as exc:  # one bad batch must not end the slow path
                    log.error("slow path: %s: %s", type(exc).__name__, exc)

    def reopen_maps(self) -> None:
        """The relay was loaded anew: open its new maps before the next batch."""
        self._reopen = True

    def _fresh_maps(self) -> bool:
        if not self._reopen:
            return True
        self.maps.close()
        try:
            self.maps = RelayMaps(self.pin_dir)
        except MapError:
            return False  # not loaded right now: the batch is dropped (the flag is off anyway)
        self._reopen = False
        return True

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _receive(self, sock: socket.socket, vip: Endpoint, limit: int) -> list[Datagram]:
        out = []
        for _ in range(limit):  # also bounds a run of socket errors
            try:
                data, anc, _flags, src = sock.recvmsg(MAX_DATAGRAM, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error queued on the socket: skip it
                continue
            ttl, tos = _ancillary(anc)
            out.append(Datagram((src[0], src[1], vip[0], vip[1]), data, ttl, tos))
        return out

    def handle(self, batch: list[Datagram]) -> None:
        """Rate-limit (per source, then globally), resolve each flow once (map, then Redis),
        install, forward."""
        allowed: dict[Flow, list[Datagram]] = {}
        limited = by_source = 0
        for d in batch:
            # The source's own share first: a flood from it never drains the global bucket.
            if not self.sources.take(d.flow[0]):
                by_source += 1
            elif self.bucket.take():
                allowed.setdefault(d.flow, []).append(d)
            else:
                limited += 1
        if limited:
            self.count(RATE_LIMITED, limited)
        if by_source:
            self.count(SOURCE_LIMITED, by_source)
        where: dict[Flow, tuple[int, int] | str] = {}
        ask = []
        now = time.monotonic()
        for flow in allowed:
            known = self._in_map(flow)
            if known is not None:  # installed meanwhile (by XDP, or an earlier batch)
                where[flow] = known
            elif self.negative.get(flow, 0.0) > now:
                where[flow] = UNKNOWN_FLOW
            else:
                ask.append(flow)
        if ask:
            where.update(self._ask_redis(ask))
        for flow, datagrams in allowed.items():
            self._deliver(flow, where[flow], datagrams)

    def _in_map(self, flow: Flow) -> tuple[int, int] | None:
        val = self.maps["flows"].lookup(_flow_key(flow))
        return None if val is None else (val.cluster, val.id)

    def _ask_redis(self, flows: list[Flow]) -> dict[Flow, tuple[int, int] | str]:
        if not self.backoff.ready():
            return dict.fromkeys(flows, REDIS_DOWN)
        import redis

        try:
            if self._redis is None:
                self._redis = self.redis_factory()
            values = self._redis.mget([flow_key(self.prefix, *f) for f in flows])
        except (redis.RedisError, OSError) as exc:
            delay = self.backoff.failed()
            log.warning("slow path: redis: %s (retry in %.1f s)", exc, delay)
            self.on_redis(False)
            return dict.fromkeys(flows, REDIS_DOWN)
        self.backoff.succeeded()
        self.on_redis(True)
        out: dict[Flow, tuple[int, int] | str] = {}
        expiry = time.monotonic() + NEGATIVE_TTL
        for flow, value in zip(flows, values, strict=True):
            if value is None:
                out[flow] = UNKNOWN_FLOW
                self._remember_unknown(flow, expiry)
                continue
            try:
                out[flow] = parse_flow_value(value)
            except ValueError:
                out[flow] = BAD_ENTRY
                self._remember_unknown(flow, expiry)
        return out

    def _remember_unknown(self, flow: Flow, expiry: float) -> None:
        self.negative[flow] = expiry
        self.negative.move_to_end(flow)
        while len(self.negative) > NEGATIVE_MAX:
            self.negative.popitem(last=False)

    def _deliver(self, flow: Flow, where: tuple[int, int] | str, datagrams: list[Datagram]) -> None:
        if isinstance(where, str):
            self.count(where, len(datagrams))
            return
        cluster, txr_id = where
        txr = self.maps["transceivers"].lookup(TxrKey(cluster, 0, txr_id))
        if txr is None:
            self.count(UNKNOWN_TXR, len(datagrams))
            return
        self._install(flow, cluster, txr_id)
        dst, dport = from_be32(txr.addr), from_be16(txr.port)
        sent = 0
        for d in datagrams:
            try:
                # One hop less, as the XDP program forwards it (wire.encap.forward_hop).
                inner = forward_hop(ipv4_udp(*flow, d.payload, ttl=d.ttl, tos=d.tos))
                self.raw.sendto(encapsulate(inner, self.tunnel_addr, dst, dport), (dst, 0))
                sent += 1
            except (OSError, ValueError) as exc:  # EncapError is a ValueError
                if isinstance(exc, EncapError) and exc.reason == TTL_EXPIRED:
                    self.count(TTL_EXPIRED, 1)
                    continue
                log.warning("slow path: cannot forward to %s:%d: %s", dst, dport, exc)
                self.count(SEND_ERROR, 1)
        if sent:
            self.count(FORWARDED, sent)

    def _install(self, flow: Flow, cluster: int, txr_id: int) -> None:
        key = _flow_key(flow)
        val = FlowVal(cluster, 0, txr_id, time.monotonic_ns())  # bpf_ktime_get_ns clock
        # NOEXIST: a STUN packet that re-routed the flow meanwhile wins over the registry.
        try:
            bpfsys.map_update(self.maps["flows"].fd, key, val, bpfsys.NOEXIST)
        except bpfsys.BpfError as exc:
            if exc.errno != errno.EEXIST:
                log.warning("slow path: cannot install flow %s: %s", flow, exc.strerror)

    def stop(self) -> None:
        self._stopping = True
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._apply_pending()
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        for s in (self.raw, self._wake_r, self._wake_w):
            s.close()
        self.sel.close()
        self.maps.close()
        if self._redis is not None:
            self._redis.close()


def _flow_key(flow: Flow) -> FlowKey:
    client, cport, vip, vport = flow
    return FlowKey(be32(client), be32(vip), be16(cport), be16(vport))
