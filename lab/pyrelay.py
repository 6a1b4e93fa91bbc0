"""The relay in userspace Python: the same job as the XDP program, as a same-run baseline.

Client side: a UDP socket on each VIP:port. A STUN Binding request is routed by the routing ufrag
in its USERNAME (wire.stun, wire.ufrag) and records the flow; other packets follow the flow dict.
The client's packet is rebuilt as IPv4/UDP from what the socket reports (addresses, ports, payload;
TTL 64, TOS 0: a socket does not hand over the original header), encapsulated as the relay does
(byte for byte what wire.encap.encapsulate builds) and sent through a raw IP_HDRINCL socket.
Return side: a UDP socket on the tunnel address:port accepts datagrams from registered
transceivers only, checks the inner packet comes from a VIP and re-emits it with the raw socket.
Drops are counted under the spec's reason names (docs/wire-format.md §5).

    python -m lab.pyrelay --vip ADDR:PORT [--vip ...] --tunnel ADDR:PORT --registry FILE
prints `ready` once its sockets are bound and its counters as JSON on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import json
import selectors
import signal
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import FrameType

from wire import stun, ufrag
from wire.addr import addr_arg
from wire.encap import PathHeader, TunnelHeader, flow_entropy, inbound_key
from wire.registry import load_registry_file

Addr = tuple[str, int]
# Not exported by Python's socket module (33 on Linux); lets root exceed net.core.rmem_max.
SO_RCVBUFFORCE = 33
TxrKey = tuple[int, int]  # (cluster, id)
FlowKey = tuple[str, int, str, int]  # client addr, client port, vip addr, vip port
STUN_DROPS = {
    stun.BAD_COOKIE: "drop_bad_cookie",
    stun.TRUNCATED: "drop_truncated",
    stun.NO_USERNAME: "drop_no_username",
    stun.BAD_UFRAG: "drop_bad_ufrag",
}
MAX_PAYLOAD = 0xFFFF - 56  # outer and inner IPv4 + UDP headers
UFRAG_DROPS = {
    "bad_ufrag": "drop_bad_ufrag",
    "unknown_key": "drop_unknown_key",
    "bad_tag": "drop_bad_tag",
}


@dataclass(frozen=True)
class Routes:
    """What the relay needs from the registry: keys and transceiver tunnel addresses."""

    keys: Mapping[int, bytes]
    transceivers: Mapping[TxrKey, Addr]

    @classmethod
    def from_registry_file(cls, path: str) -> Routes:
        """Raises wire.registry.RegistryError (a ValueError) with the path on a bad file."""
        reg = load_registry_file(path)
        txrs = {key: rec.tunnel_endpoint for key, rec in reg.transceivers.items()}
        return cls(keys=dict(reg.keys), transceivers=txrs)


class FlowPlan:
    """One flow's headers built once (wire.encap's precomputed PathHeader for the inner packet,
    TunnelHeader for the outer): a packet then costs two header fills. The generic functions
    cost ~50 us a packet in Python, which would make the baseline a straw man."""

    def __init__(self, client: Addr, vip: Addr, tunnel_addr: str, dest: Addr) -> None:
        self.dest = dest
        self._inner = PathHeader(client, vip)
        self._outer = TunnelHeader(tunnel_addr, dest, flow_entropy(client[0], client[1], vip[1]))

    def build(self, payload: bytes) -> bytes:
        return self._outer.wrap(self._inner.wrap(payload))


class PyRelay:
    def __init__(self, vips: Iterable[Addr], tunnel: Addr, routes: Routes) -> None:
        self.vips = set(vips)
        self.vip_keys = {(socket.inet_aton(a), p) for a, p in self.vips}
        self.tunnel = tunnel
        self.routes = routes
        self.txr_addrs = set(routes.transceivers.values())
        self.flows: dict[FlowKey, TxrKey] = {}
        self.plans: dict[FlowKey, FlowPlan] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self.vip_socks = {}
        for vip in self.vips:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(vip)
            s.setblocking(False)
            self.vip_socks[s] = vip
        self.tunnel_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tunnel_sock.bind(tunnel)
        self.tunnel_sock.setblocking(False)
        # IPPROTO_RAW implies IP_HDRINCL: we hand the kernel complete IPv4 packets.
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        for s in (*self.vip_socks, self.tunnel_sock):
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        self._stop_r, self._stop_w = socket.socketpair()

    # --- client -> transceiver ----------------------------------------------------------------

    def from_client(self, payload: bytes, client: Addr, vip: Addr) -> bytes | None:
        """The tunnel datagram to send for a client packet, or None (counted drop)."""
        flow = (client[0], client[1], vip[0], vip[1])
        target = self._route_stun(payload, flow)
        if target is None:
            return None
        if target is False:  # not a Binding request: the flow decides
            ids = self.flows.get(flow)
            if ids is None:
                self.counters["drop_no_flow"] += 1
                return None
            reason = "fwd_flow"
        else:
            ids, reason = target
        dest = self.routes.transceivers.get(ids)
        if dest is None:
            self.counters["drop_unknown_txr"] += 1
            return None
        if len(payload) > MAX_PAYLOAD:
            self.counters["drop_too_big"] += 1
            return None
        plan = self.plans.get(flow)
        if plan is None or plan.dest != dest:  # new flow, or its transceiver moved
            plan = self.plans[flow] = FlowPlan(client, vip, self.tunnel[0], dest)
        self.counters[reason] += 1
        return plan.build(payload)

    def _route_stun(self, payload: bytes, flow: FlowKey) -> tuple[TxrKey, str] | bool | None:
        """(ids, reason) for a routable Binding request, False when the flow map decides,
        None when the packet is dropped (and counted)."""
        try:
            text = stun.routing_ufrag(payload)
        except stun.StunError as exc:
            if exc.reason in (stun.NOT_STUN, stun.NOT_BINDING):
                return False
            self.counters[STUN_DROPS[exc.reason]] += 1
            return None
        try:
            hint = ufrag.verify(text, self.routes.keys)
        except ufrag.UfragError as exc:
            self.counters[UFRAG_DROPS[exc.reason]] += 1
            return None
        ids = (hint.cluster, hint.transceiver)
        if ids not in self.routes.transceivers:
            self.counters["drop_unknown_txr"] += 1
            return None
        known = self.flows.get(flow) == ids
        self.flows[flow] = ids
        return ids, "fwd_stun_known" if known else "fwd_stun_new"

    # --- transceiver -> client ----------------------------------------------------------------

    def from_tunnel(self, payload: bytes, src: Addr) -> bytes | None:
        """The inner packet to emit for a tunnel datagram, or None (counted drop)."""
        if src not in self.txr_addrs:
            self.counters["drop_tunnel_stranger"] += 1
            return None
        if inbound_key(payload) is None:  # not a plain IPv4/UDP packet with agreeing lengths
            self.counters["drop_tunnel_bad_inner"] += 1
            return None
        if (payload[12:16], int.from_bytes(payload[20:22], "big")) not in self.vip_keys:
            self.counters["drop_tunnel_foreign_src"] += 1
            return None
        self.counters["fwd_decap"] += 1
        return payload

    # --- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self.vip_socks:
            sel.register(s, selectors.EVENT_READ)
        sel.register(self.tunnel_sock, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    if sock is self._stop_r:
                        return
                    if sock is self.tunnel_sock:
                        self._drain_tunnel()
                    else:
                        self._drain_vip(sock)  # type: ignore[arg-type]
        finally:
            sel.close()

    def _drain_vip(self, sock: socket.socket) -> None:
        vip = self.vip_socks[sock]
        while True:
            try:
                payload, client = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                continue
            outer = self.from_client(payload, client, vip)
            if outer is not None:
                self._emit(outer)

    def _drain_tunnel(self) -> None:
        while True:
            try:
                payload, src = self.tunnel_sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                continue
            inner = self.from_tunnel(payload, src)
            if inner is not None:
                self._emit(inner)

    def _emit(self, packet: bytes) -> None:
        """Send a complete IPv4 packet; the kernel routes it by its destination (bytes 16-19)."""
        try:
            self.raw.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
        except OSError:
            self.counters["drop_fib"] += 1

    def stop(self) -> None:
        self._stop_w.send(b"x")

    def close(self) -> None:
        for s in (*self.vip_socks, self.tunnel_sock, self.raw, self._stop_r, self._stop_w):
            s.close()


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave the serve loop."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.pyrelay", description=__doc__)
    ap.add_argument("--vip", type=addr_arg, action="append", required=True)
    ap.add_argument("--tunnel", type=addr_arg, required=True)
    ap.add_argument("--registry", required=True, help="JSON registry file (wire.registry)")
    args = ap.parse_args(argv)
    try:
        routes = Routes.from_registry_file(args.registry)
        relay = PyRelay(args.vip, args.tunnel, routes)
    except (OSError, ValueError) as exc:
        print(f"pyrelay: {exc}", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print("ready", flush=True)
    try:
        relay.serve()
    except _Stop:
        pass
    relay.close()
    print(json.dumps(dict(relay.counters)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
