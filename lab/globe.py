"""GlobeLab: three regions, each with an XDP relay behind the one global VIP and a registry of
its own, transceivers in two of them, a backbone with tens of ms between regions (docs/fleet.md).

    region i (10.i.0.0/24, a bridge in its router gi):
        client ci 10.i.0.10 --+
        relay  ri 10.i.0.2  --+-- br0 gi 10.i.0.1 ==delay line di== core (10.255.i.2)
        txr    ti 10.i.0.3  --+   (VIP/32 via ri: "anycast", each region's clients reach
                                   the global VIP at their own region's relay)

The backbone is a star: region i's router reaches the core through a delay line of `delay_ms`
one way (lab.delayline: this kernel has no netem), so region i to region j is
delay_i + delay_j one way. Each relay serves its own cluster and, by cluster records in its
registry, every other region's cluster, whose transceivers it reaches over the backbone: a call
from a region without transceivers enters at its own relay and is tunnelled, in the kernel,
straight to the remote transceiver; the reply comes back the same way and leaves from the VIP.
A region's relay can be withdrawn (`withdraw(i)`): its clients then reach the VIP through the
next nearest region's relay, over the backbone.

The registries are redis-servers on unix sockets (reached from every namespace: a registry
outage is a stopped server, not a cut link). Signaling (HTTP) from a client to a remote
transceiver is plain routing over the backbone.
"""

from __future__ import annotations

import secrets
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import netns
from lab.base import Lab, edge_host_sysctls, relayctl_path
from lab.delayline import Impairment, delayed_link
from lab.edge import HTTP_PORT, KEY_ID, TXR_PORT, VIP, VIP_PORT, LabError
from lab.peer import lab_key_file
from lab.redis_server import RedisServer
from lab.wait import wait_until
from wire import registry
from wire.defaults import RELAY_TUNNEL_PORT


@dataclass(frozen=True)
class Region:
    name: str
    lat: float
    lon: float
    delay_ms: float  # one way, this region's router <-> the backbone core
    cluster: int | None  # its transceivers' cluster; None: relays only


# One-way region to region: us-east <-> eu-west 35 ms, us-east <-> ap-south 55 ms,
# eu-west <-> ap-south 60 ms (the order of the real ones, a little shorter).
REGIONS = (
    Region("us-east", 40.7, -74.0, 15.0, 1),
    Region("eu-west", 50.1, 8.7, 20.0, 2),
    Region("ap-south", 19.1, 72.9, 40.0, None),
)
TXR_ID = 7
# The public internet between regions, for the comparison: a quarter longer than the backbone,
# with jitter and loss on each region's leg.
INTERNET_STRETCH = 1.25
INTERNET_JITTER_MS = 4.0
INTERNET_LOSS = 0.01
ALT_HOST = 20  # a client's second address, whose VIP traffic takes the public internet
FRONT_PORT = 8090  # the fleet's signaling front (`transceiver front`), at the core
_FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


class ClientHost:
    """One region's client host, as lab.calldriver.CallDriver wants a lab."""

    def __init__(self, lab: GlobeLab, index: int) -> None:
        self.lab, self.index = lab, index
        self.tmpdir = lab.tmpdir
        self.ns = lab.ns(index, "c")
        self.addr = lab.addr(index, 10)

    def spawn_client(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.lab.spawn(self.ns, argv, **kwargs)


class GlobeLab(Lab):
    def __init__(
        self,
        regions: tuple[Region, ...] = REGIONS,
        prefix: str | None = None,
        internet: dict[int, int] | None = None,
    ) -> None:
        """internet: {client region i: far region k}: client i's second address
        (10.i.0.20) reaches the global VIP at region k's relay straight over the public
        internet (lab `inet` namespace, INTERNET_* impairments on every region's leg) instead of
        at its own relay and the backbone; the replies come back the same way."""
        super().__init__(prefix)
        self.regions = regions
        self.internet = internet or {}
        self.inet_ns = f"{self.prefix}-inet"
        self.vip, self.vip_port = VIP, VIP_PORT
        self.key_id, self.key = KEY_ID, secrets.token_bytes(16)
        self.core_ns = f"{self.prefix}-core"
        self.redis: list[RedisServer] = []
        self.controllers: dict[int, subprocess.Popen[bytes]] = {}
        self.transceivers: dict[int, subprocess.Popen[bytes]] = {}
        self.front: subprocess.Popen[bytes] | None = None
        self.withdrawn: set[int] = set()
        self.removed: set[int] = set()  # regions taken out of the fleet (remove_region)

    # --- names and addresses ---------------------------------------------------------------------

    def ns(self, i: int, role: str) -> str:
        return f"{self.prefix}-{role}{i}"

    @staticmethod
    def addr(i: int, host: int) -> str:
        return f"10.{i + 1}.0.{host}"

    def relay_name(self, i: int) -> str:
        return f"{self.prefix}r{i}"

    def txr_url(self, i: int) -> str:
        return f"http://{self.addr(i, 3)}:{HTTP_PORT}"

    def client(self, i: int) -> ClientHost:
        return ClientHost(self, i)

    def front_url(self, i: int) -> str:
        """The front on the core's address on region i's backbone link: where that region
        reaches it."""
        return f"http://10.255.{i + 1}.2:{FRONT_PORT}"

    def one_way_ms(self, i: int, j: int) -> float:
        return 0.0 if i == j else self.regions[i].delay_ms + self.regions[j].delay_ms

    # --- build -----------------------------------------------------------------------------------

    def build(self) -> None:
        self.namespace("core")
        netns.sysctl(self.core_ns, "net.ipv4.ip_forward", "1")
        netns.sysctl(self.core_ns, "net.ipv4.conf.all.rp_filter", "0")
        netns.sysctl(self.core_ns, "net.ipv4.conf.default.rp_filter", "0")
        for i, region in enumerate(self.regions):
            self._region(i, region)
        for i in range(len(self.regions)):
            self._backbone_routes(i)
        if self.internet:
            self._internet()
        self.on_close(self._stop)
        for i in range(len(self.regions)):
            self._start_registry(i)
        self._publish()
        for i in range(len(self.regions)):
            self._start_relay(i)
        for i, region in enumerate(self.regions):
            if region.cluster is not None:
                self._start_transceiver(i, region.cluster)
        self.wait_maps()

    def add_region(self, region: Region) -> int:
        """A new region joins while calls run: its network, registry, relay and transceiver,
        and its cluster record in every registry; returns its index."""
        if self.internet:
            raise LabError("add_region: not with internet paths")
        i = len(self.regions)
        self.regions = (*self.regions, region)
        self._region(i, region)
        self._backbone_routes(i)
        self._start_registry(i)
        self._publish()
        self._start_relay(i)
        if region.cluster is not None:
            self._start_transceiver(i, region.cluster)
        return i

    def remove_region(self, i: int) -> None:
        """Region i leaves the fleet: its cluster record out of every registry, its
        transceiver (deregistering) and its relay's controller stopped. (Its namespaces stay
        until the lab closes; nothing routes to them.)"""
        from lab.base import stop_process

        cluster = self.regions[i].cluster
        self.removed.add(i)
        if cluster is not None:
            for j, server in enumerate(self.redis):
                if j not in self.removed:
                    r = server.client()
                    try:
                        registry.remove_cluster(r, cluster)
                    finally:
                        r.close()
        for procs in (self.transceivers, self.controllers):
            proc = procs.pop(i, None)
            if proc is not None:
                self.forget(proc)
                stop_process(proc, grace=5)

    def kill_transceiver(self, i: int) -> None:
        """Region i's transceiver dies (SIGKILL: no drain, no deregistration)."""
        proc = self.transceivers.pop(i)
        self.forget(proc)
        proc.kill()
        proc.wait()

    def cut(self, i: int, j: int) -> None:
        """The backbone path between regions i and j fails: the core drops whatever goes
        between their prefixes (a silent loss, as a cut fibre is: no ICMP)."""
        for a, b in ((i, j), (j, i)):
            self.ip(self.core_ns, "rule", "add", "from", f"10.{a + 1}.0.0/24",
                    "to", f"10.{b + 1}.0.0/24", "blackhole", "pref", "100")  # fmt: skip

    def heal(self, i: int, j: int) -> None:
        for a, b in ((i, j), (j, i)):
            self.ip(self.core_ns, "rule", "del", "from", f"10.{a + 1}.0.0/24",
                    "to", f"10.{b + 1}.0.0/24", "blackhole", "pref", "100")  # fmt: skip

    def _backbone_routes(self, i: int) -> None:
        """Region i's prefix and every other region's, each way, via the core."""
        for j in range(len(self.regions)):
            if j != i:
                self.ip(self.ns(i, "g"), "route", "replace", f"10.{j + 1}.0.0/24", "via",
                        f"10.255.{i + 1}.2")  # fmt: skip
                self.ip(self.ns(j, "g"), "route", "replace", f"10.{i + 1}.0.0/24", "via",
                        f"10.255.{j + 1}.2")  # fmt: skip

    def _start_registry(self, i: int) -> None:
        """Region i's registry: on a unix socket for its own relay and transceiver, and on
        TCP at its router's address, where the other regions' relays read it over the backbone."""
        (self.tmpdir / f"redis{i}").mkdir()
        server = RedisServer(self.tmpdir / f"redis{i}", ns=self.ns(i, "g"), tcp=self.addr(i, 1))
        self.redis.append(server.start())
        self.on_close(server.close)

    def _start_relay(self, i: int) -> None:
        self.load_relay(self.ns(i, "r"), self.relay_name(i), ifaces=["eth0"],
                        vips=[(self.vip, self.vip_port)],
                        tunnel=(self.addr(i, 2), RELAY_TUNNEL_PORT))  # fmt: skip
        self._start_controller(i)

    def _region(self, i: int, region: Region) -> None:
        g, r, c = self.ns(i, "g"), self.ns(i, "r"), self.ns(i, "c")
        for role in ("g", "r", "c"):
            self.namespace(f"{role}{i}")
        netns.sysctl(g, "net.ipv4.ip_forward", "1")
        netns.sysctl(g, "net.ipv4.conf.all.rp_filter", "0")
        netns.sysctl(g, "net.ipv4.conf.default.rp_filter", "0")
        # The VIP's next hop is on the link the client's packets came in on: an ICMP redirect
        # would send the client straight to the relay, and a withdrawn route would not move it.
        # (Before br0 exists: an interface takes the defaults when it is made.)
        for conf in ("all", "default"):
            netns.sysctl(g, f"net.ipv4.conf.{conf}.send_redirects", "0")
        self.ip(g, "link", "add", "name", "br0", "type", "bridge")
        self.ip(g, "link", "set", "br0", "up")
        netns.add_addr(g, "br0", f"{self.addr(i, 1)}/24")
        hosts = [(r, 2, "pr"), (c, 10, "pc")]
        if region.cluster is not None:
            self.namespace(f"t{i}")
            hosts.append((self.ns(i, "t"), 3, "pt"))
        for ns, host, port in hosts:
            netns.veth(ns, "eth0", g, port)
            self.ip(g, "link", "set", port, "master", "br0")
            netns.add_addr(ns, "eth0", f"{self.addr(i, host)}/24")
            netns.add_route(ns, "default", self.addr(i, 1))
        # The veth trap: a frame the relay sends back out with XDP_TX reaches the bridge only
        # if the peer runs XDP.
        netns.attach_xdp_pass(g, "pr")
        netns.add_addr(r, "lo", f"{self.vip}/32")
        edge_host_sysctls(r)
        self._announce(i)
        # This region's router to the backbone core, through its delay line.
        delayed_link(self, g, "bb", self.core_ns, f"g{i}", Impairment(region.delay_ms), f"bb{i}")
        netns.add_addr(g, "bb", f"10.255.{i + 1}.1/30")
        netns.add_addr(self.core_ns, f"g{i}", f"10.255.{i + 1}.2/30")
        self.ip(self.core_ns, "route", "add", f"10.{i + 1}.0.0/24", "via", f"10.255.{i + 1}.1")

    def _internet(self) -> None:
        """The public internet: one namespace, every region's router on it through an
        impaired delay line; only the clients' second addresses are routed over it."""
        self.namespace("inet")
        inet = self.inet_ns
        netns.sysctl(inet, "net.ipv4.ip_forward", "1")
        for conf in ("all", "default"):
            netns.sysctl(inet, f"net.ipv4.conf.{conf}.rp_filter", "0")
        for i, region in enumerate(self.regions):
            imp = Impairment(region.delay_ms * INTERNET_STRETCH, INTERNET_JITTER_MS, INTERNET_LOSS)
            g = self.ns(i, "g")
            delayed_link(self, g, "in", inet, f"g{i}", imp, f"in{i}")
            netns.add_addr(g, "in", f"10.254.{i + 1}.1/30")
            netns.add_addr(inet, f"g{i}", f"10.254.{i + 1}.2/30")
            self.ip(inet, "route", "add", f"10.{i + 1}.0.0/24", "via", f"10.254.{i + 1}.1")
        for i, k in self.internet.items():
            alt = self.addr(i, ALT_HOST)
            netns.add_addr(self.ns(i, "c"), "eth0", f"{alt}/24")
            # region i's router: the alt address's VIP traffic to the internet ...
            table = str(200 + i)
            g = self.ns(i, "g")
            self.ip(g, "route", "add", f"{self.vip}/32", "via", f"10.254.{i + 1}.2", "table", table)
            self.ip(g, "rule", "add", "from", alt, "to", f"{self.vip}/32", "lookup", table)
            # ... the internet delivers it to region k ...
            table = str(300 + i)
            self.ip(inet, "route", "add", f"{self.vip}/32", "via", f"10.254.{k + 1}.1",
                    "table", table)  # fmt: skip
            self.ip(inet, "rule", "add", "from", alt, "to", f"{self.vip}/32", "lookup", table)
            # ... and region k sends the replies to it back over the internet.
            self.ip(self.ns(k, "g"), "route", "add", f"{alt}/32", "via", f"10.254.{k + 1}.2")

    def _announce(self, i: int) -> None:
        """Region i's router sends the global VIP to its own relay."""
        self.ip(self.ns(i, "g"), "route", "replace", f"{self.vip}/32", "via", self.addr(i, 2))

    def withdraw(self, i: int, to: int) -> None:
        """Region i's relays stop announcing the VIP: its router sends VIP traffic to region
        `to`'s relay over the backbone (the next nearest announcement)."""
        g = self.ns(i, "g")
        self.ip(g, "route", "replace", f"{self.vip}/32", "via", f"10.255.{i + 1}.2")
        self.ip(self.core_ns, "route", "replace", f"{self.vip}/32", "via", f"10.255.{to + 1}.1")
        self.withdrawn.add(i)

    def restore(self, i: int) -> None:
        self._announce(i)
        self.withdrawn.discard(i)

    def _publish(self) -> None:
        """Every registry: the fleet-wide key, and a cluster record for every cluster (its own
        local, the others naming their registries)."""
        for i, server in enumerate(self.redis):
            if i in self.removed:
                continue
            r = server.client()
            try:
                registry.set_key(r, self.key_id, self.key)
                registry.set_current_key(r, self.key_id)
                for j, region in enumerate(self.regions):
                    if region.cluster is None or j in self.removed:
                        continue
                    url = "" if i == j else self.redis[j].tcp_url or ""
                    rec = registry.ClusterRecord(region.cluster, region.name, region.lat,
                                                 region.lon, url)  # fmt: skip
                    registry.put_cluster(r, rec)
            finally:
                r.close()

    def _start_controller(self, i: int) -> None:
        log = self.tmpdir / f"run{i}.log"
        region = self.regions[i]
        argv = [relayctl_path(), "run", "--name", self.relay_name(i),
                "--redis", self.redis[i].url, "--region", region.name,
                "--lat", str(region.lat), "--lon", str(region.lon)]  # fmt: skip
        with log.open("wb") as out:
            proc = self.spawn(self.ns(i, "r"), argv, stdout=out, stderr=subprocess.STDOUT)
        self.controllers[i] = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise LabError(f"relayctl run in region {i} exited:\n{log.read_text()[-2000:]}")
            return "ready:" in log.read_text(errors="replace")

        wait_until(ready, 30, f"relayctl run in region {i}")

    def _start_transceiver(self, i: int, cluster: int) -> None:
        exe = str(Path(sys.executable).parent / "transceiver")
        a = self.addr(i, 3)
        argv = [exe, "serve", f"--listen={a}:{HTTP_PORT}", f"--udp={a}:{TXR_PORT}",
                f"--vip={self.vip}:{self.vip_port}", f"--cluster={cluster}", f"--id={TXR_ID}",
                f"--redis={self.redis[i].url}", f"--relay-tunnel-port={RELAY_TUNNEL_PORT}",
                f"--api-keys={lab_key_file(self.tmpdir)}",
                f"--advertise-http=http://{a}:{HTTP_PORT}"]  # fmt: skip
        # The front (start_front) runs in the core and reaches region j's transceiver from the
        # core's address on that backbone link: its X-Forwarded-For names the client, so each
        # client keeps its own POST budget behind it (docs/front.md).
        argv += [f"--trusted-proxy=10.255.{j + 1}.2/32" for j in range(len(self.regions))]
        log = self.tmpdir / f"txr{i}.log"
        with log.open("wb") as err:
            proc = self.spawn(self.ns(i, "t"), argv, stdout=subprocess.PIPE, stderr=err)
        self.transceivers[i] = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""
        if b"transceiver ready" not in line:
            raise LabError(f"transceiver in region {i} did not start: {log.read_text()[-2000:]}")

    def start_front(self, timeout: float = 30) -> None:
        """`transceiver front` in the core namespace, reading region 0's registry (its cluster
        records name every cluster's registry), until it has read every cluster."""
        exe = str(Path(sys.executable).parent / "transceiver")
        argv = [exe, "front", f"--listen=0.0.0.0:{FRONT_PORT}", f"--redis={self.redis[0].url}",
                "--default-region", self.regions[0].name, "--log-level=warning"]  # fmt: skip
        log = self.tmpdir / "front.log"
        with log.open("wb") as out:
            self.front = self.spawn(self.core_ns, argv, stdout=out, stderr=out)
        clusters = sum(r.cluster is not None for r in self.regions)
        wait_until(
            lambda: f'"fresh": {clusters}' in self.fetch(0, self.front_url(0) + "/healthz"),
            timeout,
            "the front to see every cluster",
        )

    def fetch(self, i: int, url: str) -> str:
        """GET url from region i's client host: the body, or "" when it fails."""
        argv = [sys.executable, "-c", _FETCH, url]
        return netns.run(self.ns(i, "c"), argv, check=False).stdout

    def _stop(self) -> None:
        from lab.base import stop_process

        for procs in (self.transceivers, self.controllers):
            for p in procs.values():
                self.forget(p)
                stop_process(p, grace=5)
            procs.clear()

    # --- reading it ------------------------------------------------------------------------------

    def map_show(self, i: int) -> dict[str, Any]:
        return self.relay_maps(self.ns(i, "r"), self.relay_name(i))

    def stats(self, i: int) -> dict[str, int]:
        return self.relay_stats(self.ns(i, "r"), self.relay_name(i))

    def flows(self, i: int) -> list[dict[str, Any]]:
        return self.relay_flows(self.ns(i, "r"), self.relay_name(i))

    def carrier(self, client: tuple[str, int]) -> list[tuple[int, int, int]]:
        """(region of the relay, cluster, transceiver id) of every relay holding this flow."""
        want = f"{client[0]}:{client[1]}"
        return [
            (i, int(f["cluster"]), int(f["transceiver"]))
            for i in range(len(self.regions))
            for f in self.flows(i)
            if f["client"] == want
        ]

    def wait_maps(self, timeout: float = 30) -> None:
        """Every relay lists every region's transceiver (its own and the remote ones)."""
        live = [i for i in range(len(self.regions)) if i not in self.removed]
        clusters = {self.regions[i].cluster for i in live} - {None}
        want = {(c, TXR_ID) for c in clusters}

        def synced() -> bool:
            return all(
                {(t["cluster"], t["id"]) for t in self.map_show(i)["transceivers"]} == want
                for i in live
            )

        wait_until(synced, timeout, "every relay to serve every cluster", step=0.2)
