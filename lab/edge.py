"""EdgeLab: two XDP relays behind one VIP (ECMP in front of them), two transceivers, Redis.

    client ns            router ns             relay0 / relay1 ns          fabric ns    txr ns
    eth0 198.18.1.2,.3 -- cr 198.18.1.1  c0 -- rc 198.18.4.1 | rt .2.1  -- p0 -+- br0 -- t0 .2.2
    default via .1.1     VIP/32 ECMP:    c1 -- rc 198.18.5.1 | rt .2.11 -- p1 -+     +- t1 .2.3
                           via 198.18.4.1 dev c0, via 198.18.5.1 dev c1
                           (each relay: VIP on lo, XDP on rc and rt; 198.18.2.0/24 the fabric)

The client is an ordinary host: its addresses are on the one link its default route uses, as a
real host's are, so client stacks that send each check from the interface holding its address
(libnice) reach the VIP like any other. The router in front of it is the internet and the
"anycast" of the VIP: fib_multipath_hash_policy=1 spreads flows over the relays by port;
`route_client` pins one client address to one relay (a source rule on the router), which is how
a test moves a call from one relay to the other. Relays and transceivers share one L2 segment,
so every transceiver can answer through every relay.

Every relay runs `relayctl load` + `relayctl run --redis`; every transceiver runs
`transceiver serve --redis` and registers itself; the routing key is put in Redis by the lab.
"""

from __future__ import annotations

import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import netns
from lab.base import Lab, edge_host_sysctls, relayctl_path, stop_process
from lab.delayline import Impairment, delayed_link
from lab.peer import lab_key_file
from lab.redis_server import RedisServer
from lab.wait import wait_until
from wire import registry
from wire.defaults import RELAY_TUNNEL_PORT

VIP = "198.18.100.1"
VIP_PORT = 3478
CLIENT_ADDRS = ("198.18.1.2", "198.18.1.3")
CLIENT_GATEWAY = "198.18.1.1"  # the router's address on the client's link
CLUSTER = 1
KEY_ID = 1
TXR_PORT = 5000
HTTP_PORT = 8080
RULE_BASE = 1000  # ip rule priorities / table numbers of route_client


class LabError(RuntimeError):
    """Something in the lab did not come up; the message says what (and its log tail)."""


@dataclass(frozen=True)
class RelaySlot:
    index: int
    ns: str
    name: str  # relayctl --name (pins under /sys/fs/bpf/<name>)
    client_side: str  # rc address, the client's next hop
    client_gw: str  # the address the relay routes client addresses through (no host has it)
    client_if: str  # the router's link to this relay
    tunnel_addr: str


@dataclass(frozen=True)
class TxrSlot:
    index: int
    ns: str
    cluster: int
    id: int
    addr: str
    port: int = TXR_PORT

    @property
    def tunnel(self) -> str:
        return f"{self.addr}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{HTTP_PORT}"


@dataclass
class Proc:
    """A long-running lab process and the log file it writes."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class EdgeState:
    controllers: dict[int, Proc] = field(default_factory=dict)
    transceivers: dict[int, Proc] = field(default_factory=dict)


class EdgeLab(Lab):
    """`with EdgeLab() as lab:` builds, loads and starts everything; all is removed on exit."""

    def __init__(
        self,
        *,
        prefix: str | None = None,
        redis: RedisServer | None = None,
        mode: str = "native",
        txr_args: tuple[str, ...] = (),
        client_link: Impairment | None = None,
        remote_cluster: int | None = None,
    ) -> None:
        """client_link: delay (jitter, loss) on the client's link, both ways (lab.delayline:
        the lab's netem), so that set-up can be counted in round trips.
        remote_cluster: transceiver 1 is of that cluster and registers in a registry of its own
        (another region's Redis, `remote_redis`), which a cluster record in the relays'
        registry names: the relays serve it as a remote cluster (docs/fleet.md)."""
        super().__init__(prefix)
        self.mode = mode
        self.txr_args = txr_args
        self.client_link = client_link
        self.vip, self.vip_port = VIP, VIP_PORT
        self.client_addrs = CLIENT_ADDRS
        self.client_ns = f"{self.prefix}-client"
        self.router_ns = f"{self.prefix}-router"
        self.fabric_ns = f"{self.prefix}-fabric"
        self.relays = [
            RelaySlot(0, f"{self.prefix}-r0", f"{self.prefix}r0", "198.18.4.1", "198.18.4.2",
                      "c0", "198.18.2.1"),
            RelaySlot(1, f"{self.prefix}-r1", f"{self.prefix}r1", "198.18.5.1", "198.18.5.2",
                      "c1", "198.18.2.11"),
        ]  # fmt: skip
        self.remote_cluster = remote_cluster
        self.txrs = [
            TxrSlot(0, f"{self.prefix}-t0", CLUSTER, 7, "198.18.2.2"),
            TxrSlot(1, f"{self.prefix}-t1", remote_cluster or CLUSTER, 8, "198.18.2.3"),
        ]
        self.remote_redis: RedisServer | None = None
        self.key_id = KEY_ID
        self.key = secrets.token_bytes(16)
        self._own_redis = redis is None
        self.redis = redis
        self.state = EdgeState()

    def build(self) -> None:
        self._build()
        if self.redis is None:
            (self.tmpdir / "redis").mkdir()
            self.redis = RedisServer(self.tmpdir / "redis", ns=self.fabric_ns).start()
            self.on_close(self.redis.close)
        if self.remote_cluster is not None:
            (self.tmpdir / "redis-remote").mkdir()
            self.remote_redis = RedisServer(self.tmpdir / "redis-remote", ns=self.fabric_ns)
            self.remote_redis.start()
            self.on_close(self.remote_redis.close)
            r = self.redis.client()
            try:
                registry.put_cluster(
                    r,
                    registry.ClusterRecord(
                        self.remote_cluster, "remote", 50.1, 8.7, self.remote_redis.url
                    ),
                )
            finally:
                r.close()
        # Stop transceivers, then controllers, before the base stops everything else.
        self.on_close(self._stop_controllers)
        self.on_close(self._stop_transceivers)
        self.publish_key(self.key_id, self.key)
        for r in self.relays:
            self.load(r.index)
            self.start_controller(r.index)
        for t in self.txrs:
            self.start_transceiver(t.index)
        self.wait_maps()

    def _stop_transceivers(self) -> None:
        for p in self.state.transceivers.values():
            self.forget(p.proc)
            stop_process(p.proc, grace=5)
        self.state.transceivers.clear()

    def _stop_controllers(self) -> None:
        for p in self.state.controllers.values():
            self.forget(p.proc)
            stop_process(p.proc, grace=5)
        self.state.controllers.clear()

    # --- topology --------------------------------------------------------------------------------

    def _build(self) -> None:
        for ns in (self.client_ns, self.router_ns, self.fabric_ns, *(r.ns for r in self.relays),
                   *(t.ns for t in self.txrs)):  # fmt: skip
            self.namespace(ns.removeprefix(f"{self.prefix}-"))
        # The client: its addresses on its one link, a default route through the router.
        if self.client_link is None:
            netns.veth(self.client_ns, "eth0", self.router_ns, "cr")
        else:
            delayed_link(
                self, self.client_ns, "eth0", self.router_ns, "cr", self.client_link, "wan"
            )
        for a in self.client_addrs:
            netns.add_addr(self.client_ns, "eth0", f"{a}/24")
        netns.add_addr(self.router_ns, "cr", f"{CLIENT_GATEWAY}/24")
        netns.add_route(self.client_ns, "default", CLIENT_GATEWAY)
        # The router forwards; replies from the VIP come back on either relay's link.
        netns.sysctl(self.router_ns, "net.ipv4.ip_forward", "1")
        netns.sysctl(self.router_ns, "net.ipv4.conf.all.rp_filter", "0")
        netns.sysctl(self.router_ns, "net.ipv4.conf.default.rp_filter", "0")
        netns.sysctl(self.router_ns, "net.ipv4.fib_multipath_hash_policy", "1")
        self.ip(self.fabric_ns, "link", "add", "name", "br0", "type", "bridge")
        self.ip(self.fabric_ns, "link", "set", "br0", "up")
        for r in self.relays:
            self._build_relay(r)
        for t in self.txrs:
            netns.veth(t.ns, "tr", self.fabric_ns, f"t{t.index}")
            self.ip(self.fabric_ns, "link", "set", f"t{t.index}", "master", "br0")
            netns.add_addr(t.ns, "tr", f"{t.addr}/24")
            # Signalling (HTTP) from the client is plain kernel forwarding through relay 0.
            netns.add_route(t.ns, "default", self.relays[0].tunnel_addr)
        self._neighbours()
        nexthops: list[str] = []
        for r in self.relays:
            nexthops += ["nexthop", "via", r.client_side, "dev", r.client_if, "onlink"]
        self.ip(self.router_ns, "route", "add", f"{self.vip}/32", *nexthops)
        r0 = self.relays[0]
        self.ip(self.router_ns, "route", "add", "198.18.2.0/24", "via", r0.client_side,
                "dev", r0.client_if, "onlink")  # fmt: skip
        for r in self.relays:  # per-relay tables for route_client
            self.ip(self.router_ns, "route", "add", f"{self.vip}/32", "via", r.client_side,
                    "dev", r.client_if, "onlink", "table", str(RULE_BASE + r.index))  # fmt: skip
        # The veth trap: a frame redirected into a veth is delivered only if the peer runs XDP.
        for r in self.relays:
            netns.attach_xdp_pass(self.router_ns, r.client_if)
            netns.attach_xdp_pass(self.fabric_ns, f"p{r.index}")

    def _build_relay(self, r: RelaySlot) -> None:
        netns.veth(r.ns, "rc", self.router_ns, r.client_if)
        netns.add_addr(r.ns, "rc", f"{r.client_side}/24")
        netns.add_addr(r.ns, "lo", f"{self.vip}/32")
        self.ip(r.ns, "route", "add", "198.18.1.0/24", "via", r.client_gw)
        netns.veth(r.ns, "rt", self.fabric_ns, f"p{r.index}")
        self.ip(self.fabric_ns, "link", "set", f"p{r.index}", "master", "br0")
        netns.add_addr(r.ns, "rt", f"{r.tunnel_addr}/24")
        edge_host_sysctls(r.ns)

    def _neighbours(self) -> None:
        """Permanent ARP everywhere: no packet of a call waits on ARP."""
        tr = {t.index: netns.mac(t.ns, "tr") for t in self.txrs}
        eth0, cr = netns.mac(self.client_ns, "eth0"), netns.mac(self.router_ns, "cr")
        netns.add_neigh(self.client_ns, "eth0", CLIENT_GATEWAY, cr)
        for a in self.client_addrs:
            netns.add_neigh(self.router_ns, "cr", a, eth0)
        for r in self.relays:
            rc, rt = netns.mac(r.ns, "rc"), netns.mac(r.ns, "rt")
            netns.add_neigh(r.ns, "rc", r.client_gw, netns.mac(self.router_ns, r.client_if))
            netns.add_neigh(self.router_ns, r.client_if, r.client_side, rc)
            for t in self.txrs:
                netns.add_neigh(r.ns, "rt", t.addr, tr[t.index])
                netns.add_neigh(t.ns, "tr", r.tunnel_addr, rt)

    # --- routing ---------------------------------------------------------------------------------

    def route_client(self, addr: str, relay: int | None) -> None:
        """Send this client address's VIP traffic through one relay (None: back to ECMP)."""
        prio = str(RULE_BASE + self.client_addrs.index(addr))
        netns.run(self.router_ns, ["ip", "rule", "del", "priority", prio], check=False)
        if relay is not None:
            table = str(RULE_BASE + relay)
            self.ip(self.router_ns, "rule", "add", "priority", prio, "from", addr, "to",
                    f"{self.vip}/32", "lookup", table)  # fmt: skip

    # --- relays ----------------------------------------------------------------------------------

    def relayctl(self, relay: int, *args: str, check: bool = True, timeout: float = 120) -> str:
        r = self.relays[relay]
        return self.relayctl_in(r.ns, r.name, *args, check=check, timeout=timeout)

    def load(self, relay: int) -> None:
        r = self.relays[relay]
        self.load_relay(
            r.ns,
            r.name,
            ifaces=["rc", "rt"],
            vips=[(self.vip, self.vip_port)],
            tunnel=(r.tunnel_addr, RELAY_TUNNEL_PORT),
            mode=self.mode,
        )

    def unload(self, relay: int) -> None:
        r = self.relays[relay]
        self.unload_relay(r.ns, r.name)

    def loaded(self, relay: int) -> bool:
        r = self.relays[relay]
        return self.relay_loaded(r.ns, r.name)

    def start_controller(self, relay: int, timeout: float = 30) -> Proc:
        r = self.relays[relay]
        assert self.redis is not None
        log = self.tmpdir / f"run-{relay}-{time.monotonic_ns()}.log"
        argv = [relayctl_path(), "run", "--name", r.name, "--redis", self.redis.url]
        with log.open("wb") as out:
            proc = self.spawn(r.ns, argv, stdout=out, stderr=subprocess.STDOUT)
        p = Proc(proc, log)
        self.state.controllers[relay] = p
        wait_until(lambda: _ready(p, "ready:"), timeout, f"relayctl run on relay {relay}")
        return p

    def kill_controller(self, relay: int, sig: int = signal.SIGKILL) -> None:
        p = self.state.controllers.pop(relay)
        p.proc.send_signal(sig)
        p.proc.wait(timeout=10)
        self.forget(p.proc)

    def stats(self, relay: int) -> dict[str, int]:
        r = self.relays[relay]
        return self.relay_stats(r.ns, r.name)

    def flows(self, relay: int) -> list[dict[str, Any]]:
        r = self.relays[relay]
        return self.relay_flows(r.ns, r.name)

    def map_show(self, relay: int) -> dict[str, Any]:
        r = self.relays[relay]
        return self.relay_maps(r.ns, r.name)

    def carrier(self, client: tuple[str, int]) -> list[tuple[int, int]]:
        """(relay, transceiver id) of every relay whose flow map holds this client."""
        want = f"{client[0]}:{client[1]}"
        return [
            (r.index, int(f["transceiver"]))
            for r in self.relays
            if self.loaded(r.index)
            for f in self.flows(r.index)
            if f["client"] == want
        ]

    def wait_maps(self, timeout: float = 30) -> None:
        """Both relays list every running transceiver and the current key."""

        def synced() -> bool:
            want = {t.id for i, t in enumerate(self.txrs) if i in self.state.transceivers}
            for i in (r.index for r in self.relays if self.loaded(r.index)):
                doc = self.map_show(i)
                if {int(t["id"]) for t in doc["transceivers"]} != want or not doc["keys"]:
                    return False
            return True

        wait_until(synced, timeout, "both relays' maps to list the transceivers", step=0.2)

    # --- registry --------------------------------------------------------------------------------

    def publish_key(self, key_id: int, key: bytes, *, current: bool = True) -> None:
        """In every registry of the lab: routing keys are fleet-wide (docs/fleet.md)."""
        assert self.redis is not None
        for server in filter(None, (self.redis, self.remote_redis)):
            r = server.client()
            try:
                registry.set_key(r, key_id, key)
                if current:
                    registry.set_current_key(r, key_id)
            finally:
                r.close()

    def registry_of(self, index: int) -> RedisServer:
        """The registry transceiver `index` registers in."""
        remote = index == 1 and self.remote_redis is not None
        server = self.remote_redis if remote else self.redis
        assert server is not None
        return server

    # --- transceivers ----------------------------------------------------------------------------

    def start_transceiver(self, index: int, timeout: float = 30) -> Proc:
        t = self.txrs[index]
        assert self.redis is not None
        exe = str(Path(sys.executable).parent / "transceiver")
        argv = [exe, "serve", f"--listen={t.addr}:{HTTP_PORT}", f"--udp={t.tunnel}",
                f"--vip={self.vip}:{self.vip_port}", f"--cluster={t.cluster}", f"--id={t.id}",
                f"--redis={self.registry_of(index).url}",
                f"--relay-tunnel-port={RELAY_TUNNEL_PORT}",
                f"--api-keys={lab_key_file(self.tmpdir)}", *self.txr_args]  # fmt: skip
        log = self.tmpdir / f"txr-{index}-{time.monotonic_ns()}.log"
        with log.open("wb") as err:
            proc = self.spawn(t.ns, argv, stdout=subprocess.PIPE, stderr=err)
        p = Proc(proc, log)
        self.state.transceivers[index] = p
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if b"transceiver ready" not in line:
            raise LabError(f"transceiver {index} did not start: {line!r}\n{p.text()[-2000:]}")
        return p

    def stop_transceiver(self, index: int, sig: int = signal.SIGTERM) -> Proc:
        """Send the signal; the caller waits (SIGTERM drains)."""
        p = self.state.transceivers[index]
        p.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            p.proc.wait(timeout=10)
            del self.state.transceivers[index]
            self.forget(p.proc)
        return p

    # --- clients ---------------------------------------------------------------------------------

    def spawn_client(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.spawn(self.client_ns, argv, **kwargs)


def _ready(p: Proc, marker: str) -> bool:
    if not p.alive():
        raise LabError(f"process exited ({p.proc.returncode}):\n{p.text()[-2000:]}")
    return marker in p.text()
