"""VmLab: the edge in QEMU VMs, each with its own kernel, installed as an operator would.

    router netns (this lab's, on the host)         VMs (QEMU, TCG; one tap each)
    brc 198.18.1.1/24 ---------------------------- client  198.18.1.2   aiortc (lab/callclient.py)
    bre 198.18.2.1/24 --+------------------------- relay0  198.18.2.11  XDP native on virtio-net,
                        +------------------------- relay1  198.18.2.12  relayctl-run.service
                        +------------------------- txr     198.18.2.2   transceiver serve, Redis
    VIP 198.18.100.1/32: ECMP over relay0 and relay1 (L4 hash), kept by a health checker

The router namespace is the network in front of the relays: the client reaches the VIP only
through it. Its health checker plays the BGP withdrawal or load-balancer check of a real edge:
it probes each relay's `relayctl run --metrics` endpoint and takes a relay that stops answering
out of the VIP's route (and puts it back when it answers again). Relays and transceiver share
the `bre` segment (the tunnel, Redis); the client's signalling (HTTP) to the transceiver is
plain routing through the router. The lab reaches every VM over SSH from the router namespace.

Every VM boots the same image (vagrant/build-image.sh) on its own copy-on-write disk, gets its
hostname, address and the run's SSH key from a 9p seed share, then the checkout (read-only 9p)
is copied to /opt/webrtc-edge and `make install` runs there with pip pointed at the host's
wheelhouse (PIP_NO_INDEX=1 PIP_FIND_LINKS=...). Relays then run deploy/systemd/relayctl-run.service
with /etc/default/relayctl; the transceiver VM runs redis-server and `transceiver serve`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import netns
from lab.base import Lab, packets_by_reason
from lab.calldriver import CallDriver
from lab.vm import Nic, Vm, VmError, VmSpec, in_parallel, make_ssh_key, write_seed
from lab.vmimage import Image, stage_checkout
from lab.wait import wait_until
from wire import registry

VIP = "198.18.100.1"
VIP_PORT = 3478
ROUTER_CLIENT = "198.18.1.1"
ROUTER_EDGE = "198.18.2.1"
CLIENT_ADDR = "198.18.1.2"
TXR_ADDR = "198.18.2.2"
RELAY_ADDRS = ("198.18.2.11", "198.18.2.12")
CLUSTER, TXR_ID, KEY_ID = 1, 7, 1
TXR_UDP_PORT, TXR_HTTP_PORT, REDIS_PORT, METRICS_PORT = 5000, 8080, 6379, 9477
RELAY_TABLE_BASE = 100  # router tables that send the VIP to one relay (steer_client)
STEER_PRIORITY = 1000
INSTALL_DIR = "/opt/webrtc-edge"
CHECKOUT_TAG, WHEELS_TAG, SEED_TAG = "edgeshare", "edgewheels", "edgeseed"
# Health checks: a probe every PROBE_INTERVAL s; this many misses in a row take a relay out.
PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 1.0
PROBE_FAILS = 2
PROBE_OKS = 2


class VmLabError(RuntimeError):
    """Something in the VM lab did not come up; the message says what."""


@dataclass(frozen=True)
class Role:
    name: str
    addr: str
    gateway: str
    bridge: str
    mem_mb: int

    @property
    def tap(self) -> str:
        return f"t-{self.name}"[:15]


ROLES = (
    Role("client", CLIENT_ADDR, ROUTER_CLIENT, "brc", 1024),
    Role("relay0", RELAY_ADDRS[0], ROUTER_EDGE, "bre", 1024),
    Role("relay1", RELAY_ADDRS[1], ROUTER_EDGE, "bre", 1024),
    Role("txr", TXR_ADDR, ROUTER_EDGE, "bre", 1280),
)


def _mac(index: int) -> str:
    return f"52:54:00:ed:00:{index + 0x10:02x}"


def mount_shares(vm: Vm, *tags: str) -> None:
    """Mount the VM's read-only 9p shares at /mnt/TAG."""
    vm.ssh(" && ".join(
        f"mkdir -p /mnt/{tag} && (mountpoint -q /mnt/{tag} || mount -t 9p -o "
        f"trans=virtio,version=9p2000.L,ro,msize=512000 {tag} /mnt/{tag})"
        for tag in tags
    ))  # fmt: skip


def provision(vm: Vm, *args: str, timeout: float = 600) -> None:
    """vagrant/provision.sh in the VM (the Vagrantfile provisions with the same script)."""
    vm.sh(["bash", f"{INSTALL_DIR}/vagrant/provision.sh", *args], timeout=timeout)


def install_checkout(vm: Vm) -> None:
    """The checkout (share edgeshare) to /opt/webrtc-edge, then `make install` there, offline
    (pip reads only the wheelhouse share)."""
    mount_shares(vm, CHECKOUT_TAG, WHEELS_TAG)
    tar = f"/mnt/{CHECKOUT_TAG}/checkout.tar"
    # provision.sh comes with the checkout: unpack it first, then let it install.
    vm.ssh(f"mkdir -p {INSTALL_DIR} && tar -xf {tar} -C {INSTALL_DIR} vagrant/provision.sh")
    provision(vm, "install", tar, f"/mnt/{WHEELS_TAG}", timeout=3000)


class HealthChecker:
    """The router's view of the relays: probes `relayctl run`'s metrics endpoint of each and
    keeps the VIP route over the relays that answer. What differs from a real network: the
    decision is this thread's, on one probe path, with no BGP hold timers or damping."""

    def __init__(self, lab: VmLab) -> None:
        self.lab = lab
        self.healthy = [True] * len(RELAY_ADDRS)
        self.events: list[tuple[float, int, bool]] = []  # (monotonic, relay, healthy)
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = netns.thread_in(lab.router_ns, self._loop)

    def _probe(self, addr: str) -> bool:
        with contextlib.suppress(OSError):
            with socket.create_connection((addr, METRICS_PORT), PROBE_TIMEOUT) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                return s.recv(12).startswith(b"HTTP/1.")
        return False

    def _loop(self) -> None:
        streak = [0] * len(RELAY_ADDRS)  # >0: consecutive oks, <0: consecutive misses
        while not self._stop.wait(PROBE_INTERVAL):
            for i, addr in enumerate(RELAY_ADDRS):
                ok = self._probe(addr)
                streak[i] = max(1, streak[i] + 1) if ok else min(-1, streak[i] - 1)
                flip = (self.healthy[i] and streak[i] <= -PROBE_FAILS) or (
                    not self.healthy[i] and streak[i] >= PROBE_OKS
                )
                if flip:
                    self.healthy[i] = ok
                    self.lab.set_vip_route(self.healthy)
                    with self._changed:
                        self.events.append((time.monotonic(), i, ok))
                        self._changed.notify_all()

    def wait(self, relay: int, healthy: bool, timeout: float) -> float:
        """Until the checker has marked the relay so; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.healthy[relay] != healthy:
                left = deadline - time.monotonic()
                if left <= 0:
                    state = "healthy" if healthy else "down"
                    raise VmLabError(f"the health checker did not see relay{relay} {state}")
                self._changed.wait(left)
            return next(t for t, i, h in reversed(self.events) if i == relay and h == healthy)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class VmLab(Lab):
    """`with VmLab(image, wheels) as lab:` boots, installs and starts everything; everything
    (QEMU processes, taps, bridges, the namespace, files) is removed on exit (lab.base.Lab's
    teardown, with the VMs and the health checker stopped first)."""

    def __init__(self, image: Image, wheels: Path, *, prefix: str | None = None) -> None:
        super().__init__(prefix)
        self.image = image
        self.wheels = wheels
        self.router_ns = f"{self.prefix}-vmr"
        self.vip, self.vip_port = VIP, VIP_PORT
        self.key = secrets.token_bytes(16)
        self.redis_password = secrets.token_hex(16)
        # The signaling API key: the transceiver VM serves with it, the client VM's call client
        # mints single-use client tokens with it (as an application server would).
        self.api_key = secrets.token_urlsafe(24)
        self.vms: dict[str, Vm] = {}
        self.health: HealthChecker | None = None
        self.timings: dict[str, float] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    def build(self) -> None:
        self.on_close(self._stop_vms)
        t0 = time.monotonic()
        self._build_router()
        self._boot_all()
        self.timings["boot_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        in_parallel([lambda v=v: self._install(v) for v in self.vms.values()], "make install")
        self.timings["install_s"] = time.monotonic() - t1
        t2 = time.monotonic()
        self._start_registry()
        # The relays need only Redis: they start while the transceiver does.
        starts = [lambda i=i: self._start_relay(i) for i in range(2)]
        in_parallel([self._start_transceiver, *starts], "service start")
        self.timings["services_s"] = time.monotonic() - t2
        self.health = HealthChecker(self)
        self.wait_maps()

    def _stop_vms(self) -> None:
        """Before the base deletes the namespace: the health checker, then every VM (their logs
        kept first with EDGE_VM_KEEP_LOGS=DIR)."""
        if self.health is not None:
            self.health.stop()
            self.health = None
        if os.environ.get("EDGE_VM_KEEP_LOGS"):
            self._save_journals()
        for vm in self.vms.values():
            with contextlib.suppress(Exception):
                vm.close()
        if os.environ.get("EDGE_VM_KEEP_LOGS"):
            self._keep_logs()

    def _save_journals(self) -> None:
        """Each running VM's journal of this boot, beside its console log (for _keep_logs)."""

        def save(vm: Vm) -> None:
            r = vm.ssh("journalctl -b --no-pager -o short-monotonic", check=False, timeout=60)
            (vm.dir / "journal.log").write_text(r.stdout + r.stderr)

        with contextlib.suppress(Exception):
            in_parallel([lambda v=v: save(v) for v in self.vms.values() if v.running()], "journal")

    def _keep_logs(self) -> None:
        keep = Path(os.environ["EDGE_VM_KEEP_LOGS"]) / self.prefix
        for p in self.tmpdir.rglob("*.log"):
            dest = keep / p.relative_to(self.tmpdir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(p, dest)

    # --- the router namespace --------------------------------------------------------------------

    def router(self, *args: str, check: bool = True) -> str:
        return netns.run(self.router_ns, ["ip", *args], check=check).stdout

    def _build_router(self) -> None:
        self.namespace("vmr")
        for sysctl, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "1"),  # no spoofed sources from the client
            ("net.ipv4.conf.default.rp_filter", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),  # ECMP by ports: calls spread
        ):
            netns.sysctl(self.router_ns, sysctl, value)
        for bridge, addr in (("brc", ROUTER_CLIENT), ("bre", ROUTER_EDGE)):
            self.router("link", "add", bridge, "type", "bridge")
            self.router("link", "set", bridge, "up")
            netns.add_addr(self.router_ns, bridge, f"{addr}/24")
        for role in ROLES:
            self.router("tuntap", "add", "dev", role.tap, "mode", "tap", "vnet_hdr")
            self.router("link", "set", role.tap, "master", role.bridge)
            self.router("link", "set", role.tap, "up")
        for i, addr in enumerate(RELAY_ADDRS):
            self.router("route", "add", f"{VIP}/32", "via", addr, "table",
                        str(RELAY_TABLE_BASE + i))  # fmt: skip
        self.set_vip_route([True, True])

    def set_vip_route(self, healthy: list[bool]) -> None:
        """The VIP over the healthy relays (ECMP), or no route at all when none is."""
        hops = [a for a, ok in zip(RELAY_ADDRS, healthy, strict=True) if ok]
        if not hops:
            self.router("route", "del", f"{VIP}/32", check=False)
        elif len(hops) == 1:
            self.router("route", "replace", f"{VIP}/32", "via", hops[0])
        else:
            nexthops = [w for a in hops for w in ("nexthop", "via", a)]
            self.router("route", "replace", f"{VIP}/32", *nexthops)

    def vip_next_hops(self) -> list[str]:
        out = self.router("-j", "route", "show", f"{VIP}/32")
        routes = json.loads(out or "[]")
        hops: list[str] = []
        for r in routes:
            hops += [n["gateway"] for n in r.get("nexthops", [])] or [r["gateway"]]
        return hops

    def steer_client(self, relay: int | None) -> None:
        """Send the client's VIP traffic through one relay (None: back to ECMP), as a route
        change in front of the relays would (lab/edge.py's route_client, on the router)."""
        self.router("rule", "del", "priority", str(STEER_PRIORITY), check=False)
        if relay is not None:
            self.router("rule", "add", "priority", str(STEER_PRIORITY), "from", CLIENT_ADDR,
                        "to", f"{VIP}/32", "lookup", str(RELAY_TABLE_BASE + relay))  # fmt: skip

    # --- the VMs ---------------------------------------------------------------------------------

    def _boot_all(self) -> None:
        key = make_ssh_key(self.tmpdir / "ssh_key", self.prefix)
        pubkey = key.with_suffix(".pub").read_text()
        share = self.tmpdir / "share"
        stage_checkout(share)
        hosts = "".join(f"{r.addr} {r.name}\n" for r in ROLES)
        for i, role in enumerate(ROLES):
            seed = write_seed(
                self.tmpdir / "seeds" / role.name, hostname=role.name, mac=_mac(i),
                addr=f"{role.addr}/24", gateway=role.gateway, pubkey=pubkey, hosts=hosts,
            )  # fmt: skip
            spec = VmSpec(
                role.name, role.mem_mb, [Nic(role.tap, _mac(i))], role.addr,
                {SEED_TAG: seed, CHECKOUT_TAG: share, WHEELS_TAG: self.wheels},
            )  # fmt: skip
            self.vms[role.name] = Vm(spec, self.image, self.router_ns, self.tmpdir, key)
        for vm in self.vms.values():  # from this thread: the VMs die with it (PDEATHSIG)
            vm.boot()
        in_parallel([vm.wait_up for vm in self.vms.values()], "boot")

    def vm(self, name: str) -> Vm:
        return self.vms[name]

    def relay(self, i: int) -> Vm:
        return self.vms[f"relay{i}"]

    # --- installing, as an operator would --------------------------------------------------------

    def _install(self, vm: Vm) -> None:
        install_checkout(vm)

    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{TXR_ADDR}:{REDIS_PORT}/0"

    def _start_registry(self) -> None:
        provision(self.vm("txr"), "registry", TXR_ADDR, self.redis_password)
        self.publish_key(KEY_ID, self.key)

    def _start_transceiver(self) -> None:
        provision(self.vm("txr"), "transceiver", TXR_ADDR, f"{VIP}:{VIP_PORT}", self.redis_url(),
                  str(CLUSTER), str(TXR_ID), self.api_key)  # fmt: skip
        # Its first start imports (and byte-compiles) aiortc and PyAV: minutes under TCG.
        wait_until(self._txr_healthy, 900, "the transceiver's /healthz", step=2)

    def _txr_healthy(self) -> bool:
        def get() -> bool:
            with contextlib.suppress(OSError):
                with socket.create_connection((TXR_ADDR, TXR_HTTP_PORT), 2) as s:
                    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                    # aiohttp answers in the request's version: "HTTP/1.0 200 OK"
                    return s.recv(16).split(b" ")[1:2] == [b"200"]
            return False

        return netns.call_in(self.router_ns, get)

    def _start_relay(self, i: int) -> None:
        """What docs/operations.md asks of an edge host, then relayctl-run.service (its start
        returns once `relayctl run` told systemd it is ready)."""
        provision(self.relay(i), "relay", RELAY_ADDRS[i], f"{VIP}:{VIP_PORT}",
                       self.redis_url(), "eth0")  # fmt: skip
        self.wait_relay_unit(i)

    def wait_relay_unit(self, i: int, timeout: float = 1500) -> None:
        """Until relayctl-run is active (`relayctl load` compiled and attached the program,
        `relayctl run` told systemd it is ready); its first failure raises with the journal."""
        vm = self.relay(i)

        def active() -> bool:
            out = vm.ssh("systemctl show -p ActiveState -p NRestarts relayctl-run").stdout
            state = dict(line.split("=", 1) for line in out.split())
            if int(state.get("NRestarts", "0")) > 0 or state.get("ActiveState") == "failed":
                log = vm.ssh("journalctl -u relayctl-run -o cat --no-pager | tail -n 12",
                             check=False).stdout  # fmt: skip
                raise VmLabError(f"relayctl-run on relay{i} failed to start:\n{log}")
            return state.get("ActiveState") == "active"

        wait_until(active, timeout, f"relayctl-run on relay{i}", step=3)

    # --- registry --------------------------------------------------------------------------------

    def redis_call(self, fn: Any) -> Any:
        """fn(client) with a Redis client whose connection lives in the router namespace."""
        import redis

        def body() -> Any:
            client = redis.Redis(
                host=TXR_ADDR, port=REDIS_PORT, password=self.redis_password, socket_timeout=5
            )
            try:
                return fn(client)
            finally:
                client.close()

        return netns.call_in(self.router_ns, body)

    def publish_key(self, key_id: int, key: bytes) -> None:
        def put(r: Any) -> None:
            registry.set_key(r, key_id, key)
            registry.set_current_key(r, key_id)

        self.redis_call(put)

    def flow_in_redis(self, client: tuple[str, int]) -> bool:
        key = "edge:flow:{}:{}:{}:{}".format(*client, VIP, VIP_PORT)
        return bool(self.redis_call(lambda r: r.get(key)))

    # --- relays ----------------------------------------------------------------------------------

    def relayctl(self, i: int, *args: str, timeout: float = 120) -> str:
        return self.relay(i).sh([f"{INSTALL_DIR}/.venv/bin/relayctl", *args], timeout=timeout)

    def stats(self, i: int) -> dict[str, int]:
        return packets_by_reason(json.loads(self.relayctl(i, "stats", "--json")))

    def flows(self, i: int) -> list[dict[str, Any]]:
        doc = json.loads(self.relayctl(i, "flows", "--json"))
        return list(doc["flows"] if isinstance(doc, dict) else doc)

    def map_show(self, i: int) -> dict[str, Any]:
        return dict(json.loads(self.relayctl(i, "map", "show", "--json")))

    def xdp_mode(self, i: int) -> str:
        """How the relay's program is attached to eth0: "native", "generic", ... or "none"."""
        link = json.loads(self.relay(i).sh(["ip", "-j", "-d", "link", "show", "eth0"]))[0]
        mode = link.get("xdp", {}).get("mode")
        return {1: "native", 2: "generic", 3: "offload"}.get(mode, "none")

    def unit_state(self, i: int) -> str:
        r = self.relay(i).ssh("systemctl is-active relayctl-run", check=False)
        return r.stdout.strip()

    def carrier(self, client: tuple[str, int], relays: tuple[int, ...] = (0, 1)) -> list[int]:
        """Relays (of those given) whose flow map holds this client address."""
        want = f"{client[0]}:{client[1]}"
        return [i for i in relays if any(f["client"] == want for f in self.flows(i))]

    def wait_maps(self, relays: tuple[int, ...] = (0, 1), timeout: float = 300) -> None:
        """The relays list the transceiver and the current key (synced from Redis)."""

        def synced() -> bool:
            for i in relays:
                doc = self.map_show(i)
                if {int(t["id"]) for t in doc["transceivers"]} != {TXR_ID} or not doc["keys"]:
                    return False
            return True

        wait_until(synced, timeout, "the relays' maps to list the transceiver and key", step=1)

    # --- clients ---------------------------------------------------------------------------------

    @property
    def txr_url(self) -> str:
        return f"http://{TXR_ADDR}:{TXR_HTTP_PORT}"


class VmCallDriver(CallDriver):
    """lab/callclient.py in the client VM, driven through SSH exactly like CallDriver drives it
    in a namespace (JSON lines out, commands in)."""

    def __init__(self, lab: VmLab, urls: list[str]) -> None:
        self.log = lab.tmpdir / f"callclient-{time.monotonic_ns()}.log"
        keys = "/run/edge-api-keys"
        command = f"umask 077 && printf '%s\\n' {shlex.quote(lab.api_key)} > {keys} && "
        command += (
            f"cd {INSTALL_DIR} && TXR_API_KEYS_FILE={keys} exec .venv/bin/python -m lab.callclient"
        )
        command += "".join(f" {shlex.quote(u)}" for u in urls)
        with self.log.open("wb") as err:
            self.proc = lab.vm("client").ssh_popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
            )
        self.calls: list[dict[str, Any]] = []

    def call(self, url: str, timeout: float = 120) -> dict[str, Any]:
        """A new call; set-up under TCG takes longer than CallDriver's 40 s allow."""
        self._send(f"call {url}")
        return self.wait_call(timeout)


__all__ = ["VmCallDriver", "VmError", "VmLab", "VmLabError"]
