"""RelayLab: client, relay and transceiver namespaces joined by veths; relayctl loads the relay.

    client ns               relay ns                            txr ns
    cr 198.18.1.2/24 ------ rc 198.18.1.1/24
       198.18.1.3/24        lo 198.18.100.1/32 (the VIP)
                            rt 198.18.2.1/24 (tunnel address) -- tr 198.18.2.2/24
                            r2 198.18.3.1/24 ------------------- tr 198.18.3.2/24 (txr2 ns)

Client and transceiver traffic enter and leave the relay on different links, so the relay's
fib lookup picks another egress device and the program takes the XDP_REDIRECT path.
"""

from __future__ import annotations

import json
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import netns
from lab.base import Lab, edge_host_sysctls
from lab.standin import StandIn
from wire import ufrag
from wire.defaults import RELAY_TUNNEL_PORT

VIP = "198.18.100.1"
VIP_PORT = 3478
CLIENT_ADDRS = ("198.18.1.2", "198.18.1.3")
RELAY_CLIENT_SIDE = "198.18.1.1"
TUNNEL_ADDR = "198.18.2.1"
TXR_PORT = 5000
CLUSTER = 1
KEY_ID = 1


@dataclass(frozen=True)
class Transceiver:
    """One transceiver slot of the lab: its namespace, link and registered identity."""

    index: int
    ns: str
    cluster: int
    id: int
    addr: str
    port: int
    relay_ifname: str
    relay_addr: str

    @property
    def tunnel(self) -> str:
        return f"{self.addr}:{self.port}"


class RelayLab(Lab):
    """Build with `with RelayLab() as lab:`; everything is removed on exit, also on exceptions.

    load_relay=False builds the namespaces only (the userspace relay, or plumbing tests).
    """

    def __init__(
        self,
        *,
        transceivers: int = 1,
        load_relay: bool = True,
        mode: str = "native",
        prefix: str | None = None,
    ) -> None:
        if transceivers not in (1, 2):
            raise ValueError("the lab has one or two transceivers")
        super().__init__(prefix)
        self.name = self.prefix  # relayctl --name: pins under /sys/fs/bpf/<prefix>
        self.mode = mode
        self._load_at_start = load_relay
        self.client_ns = f"{self.prefix}-client"
        self.relay_ns = f"{self.prefix}-relay"
        self.vip = VIP
        self.vip_port = VIP_PORT
        self.tunnel_addr = TUNNEL_ADDR
        self.tunnel_port = RELAY_TUNNEL_PORT
        self.client_addrs = CLIENT_ADDRS
        self.key_id = KEY_ID
        self.key = secrets.token_bytes(16)
        self.txrs = [
            Transceiver(
                0, f"{self.prefix}-txr", CLUSTER, 7, "198.18.2.2", TXR_PORT, "rt", TUNNEL_ADDR
            ),
            Transceiver(
                1, f"{self.prefix}-txr2", CLUSTER, 8, "198.18.3.2", TXR_PORT, "r2", "198.18.3.1"
            ),
        ][:transceivers]
        self.relay_ifaces = ["rc", *(t.relay_ifname for t in self.txrs)]
        self.registry_file = self.tmpdir / "registry.json"
        self._standins: list[StandIn] = []

    def build(self) -> None:
        self.client_ns = self.namespace("client")
        self.relay_ns = self.namespace("relay")
        for t in self.txrs:
            self.namespace(t.ns.removeprefix(f"{self.prefix}-"))
        # (IPv4 only: the relay's pass_not_ipv4 counter sees no IPv6 chatter.)
        # client <-> relay
        netns.veth(self.relay_ns, "rc", self.client_ns, "cr")
        netns.add_addr(self.relay_ns, "rc", f"{RELAY_CLIENT_SIDE}/24")
        for a in self.client_addrs:
            netns.add_addr(self.client_ns, "cr", f"{a}/24")
        netns.add_route(self.client_ns, "default", RELAY_CLIENT_SIDE)
        netns.add_addr(self.relay_ns, "lo", f"{self.vip}/32")
        # relay <-> each transceiver; a transceiver's default route points back at the relay
        for t in self.txrs:
            netns.veth(self.relay_ns, t.relay_ifname, t.ns, "tr")
            netns.add_addr(self.relay_ns, t.relay_ifname, f"{t.relay_addr}/24")
            netns.add_addr(t.ns, "tr", f"{t.addr}/24")
            netns.add_route(t.ns, "default", t.relay_addr)
        edge_host_sysctls(self.relay_ns)
        self._static_neighbours()
        # The veth trap (see lab.netns.attach_xdp_pass): frames the relay redirects into a veth
        # are only delivered if the peer runs an XDP program, so every peer gets XDP_PASS.
        netns.attach_xdp_pass(self.client_ns, "cr")
        for t in self.txrs:
            netns.attach_xdp_pass(t.ns, "tr")
        self.write_registry()
        self.on_close(self._stop_standins)
        if self._load_at_start:
            self.load()

    def _static_neighbours(self) -> None:
        """Permanent ARP entries on both sides of every link: no packet waits on ARP, so the
        relay's counters are exact (tests can drop an entry to exercise pass_fib_no_neigh)."""
        cr, rc = netns.mac(self.client_ns, "cr"), netns.mac(self.relay_ns, "rc")
        for a in self.client_addrs:
            netns.add_neigh(self.relay_ns, "rc", a, cr)
        netns.add_neigh(self.client_ns, "cr", RELAY_CLIENT_SIDE, rc)
        for t in self.txrs:
            tr, rt = netns.mac(t.ns, "tr"), netns.mac(self.relay_ns, t.relay_ifname)
            netns.add_neigh(self.relay_ns, t.relay_ifname, t.addr, tr)
            netns.add_neigh(t.ns, "tr", t.relay_addr, rt)

    def _stop_standins(self) -> None:
        for standin in self._standins:
            standin.stop()
        self._standins.clear()

    # --- the relay (via the real CLI) ----------------------------------------------------------

    def relayctl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run `relayctl <args> --name <lab name>` inside the relay namespace; returns stdout."""
        return self.relayctl_in(self.relay_ns, self.name, *args, check=check, timeout=timeout)

    def load(self) -> None:
        """`relayctl load` on every relay link: client datagrams arrive on one, transceiver
        replies on the others, and the program must see both directions."""
        self.load_relay(
            self.relay_ns,
            self.name,
            ifaces=self.relay_ifaces,
            vips=[(self.vip, self.vip_port)],
            tunnel=(self.tunnel_addr, self.tunnel_port),
            mode=self.mode,
        )
        self.sync()

    def unload(self) -> None:
        self.unload_relay(self.relay_ns, self.name)
        for iface in self.relay_ifaces:
            if netns.xdp_attached(self.relay_ns, iface):
                raise netns.NetnsError(f"relayctl unload left XDP attached to {iface}")

    def write_registry(self, transceivers: list[Transceiver] | None = None) -> None:
        """The JSON registry (wire.registry.load_registry_file format) relayctl syncs from."""
        txrs = self.txrs if transceivers is None else transceivers
        doc = {
            "keys": {str(self.key_id): self.key.hex()},
            "current_key": self.key_id,
            "transceivers": [{"cluster": t.cluster, "id": t.id, "tunnel": t.tunnel} for t in txrs],
        }
        self.registry_file.write_text(json.dumps(doc, indent=2))

    def sync(self) -> None:
        self.relayctl("map", "sync", "--file", str(self.registry_file))

    def stats(self) -> dict[str, int]:
        """Packet counters by reason name, from `relayctl stats --json`."""
        return self.relay_stats(self.relay_ns, self.name)

    def flows(self) -> list[dict[str, Any]]:
        return self.relay_flows(self.relay_ns, self.name)

    # --- things to run in the lab ---------------------------------------------------------------

    def mint(self, txr: Transceiver | int = 0) -> str:
        """A fresh routing ufrag for a transceiver, under the lab's key."""
        t = self.txrs[txr] if isinstance(txr, int) else txr
        return ufrag.mint(self.key_id, self.key, t.cluster, t.id)

    def client_socket(self, addr: str | None = None, port: int = 0) -> socket.socket:
        """A UDP socket in the client namespace (bound, 2 s timeout)."""
        sock = netns.socket_in(self.client_ns)
        sock.bind((addr or self.client_addrs[0], port))
        sock.settimeout(2.0)
        return sock

    def spawn_ready(self, ns: str, module: str, args: list[str], timeout: float = 20) -> Service:
        """`python -m module args` in a namespace, once it has printed its `ready` line."""
        proc = self.spawn(
            ns,
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        svc = Service(module, proc)
        svc.wait_ready(timeout)
        return svc

    def start_pyrelay(self) -> Service:
        """The userspace relay (lab/pyrelay.py) on the same VIP and tunnel port, from the same
        registry file; unload the XDP relay first or it answers before the socket sees anything."""
        args = ["--vip", f"{self.vip}:{self.vip_port}"]
        args += ["--tunnel", f"{self.tunnel_addr}:{self.tunnel_port}"]
        args += ["--registry", str(self.registry_file)]
        return self.spawn_ready(self.relay_ns, "lab.pyrelay", args)

    def start_standin_process(
        self, txr: int = 0, *, prefix: str = "", reply: bool = True
    ) -> Service:
        t = self.txrs[txr]
        args = ["--bind", t.tunnel, "--relay-port", str(self.tunnel_port), "--prefix", prefix]
        return self.spawn_ready(t.ns, "lab.standin", args + ([] if reply else ["--no-reply"]))

    def standin(self, txr: int = 0, *, prefix: bytes = b"", reply: bool = True) -> StandIn:
        """An in-process stand-in on transceiver `txr`'s tunnel address (not started)."""
        t = self.txrs[txr]
        standin = StandIn.in_ns(
            t.ns, t.addr, t.port, relay_port=self.tunnel_port, prefix=prefix, reply=reply
        )
        self._standins.append(standin)
        return standin


class Service:
    """A lab helper process speaking the `ready` / JSON-line protocol of lab.standin/pyrelay."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.proc = proc

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.name} said nothing within {timeout} s")
        return self.proc.stdout.readline().decode().strip()

    def wait_ready(self, timeout: float) -> None:
        line = self._readline(timeout)
        if line != "ready":
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise netns.NetnsError(f"{self.name} did not start: {line} {err}".strip())

    def query(self, timeout: float = 5) -> dict[str, float]:
        """Ask a stand-in for its counts (one `counts` line on stdin)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"counts\n")
        self.proc.stdin.flush()
        return dict(json.loads(self._readline(timeout)))

    def finish(self, timeout: float = 10) -> dict[str, float]:
        """SIGTERM, then the final JSON line it prints."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise TimeoutError(f"{self.name} did not stop within {timeout} s") from None
        lines = out.decode().strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise netns.NetnsError(f"{self.name} exited {self.proc.returncode}: {err.decode()}")
        return dict(json.loads(lines[-1]))


def sweep_lab(prefix: str) -> list[str]:
    """Remove what a lab with this prefix left (namespaces, pins) and its temp directories."""
    removed = netns.sweep(prefix)
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}-*"):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def sweep_stale_labs() -> list[str]:
    """Remove every lab whose owner process is gone, temp directories included."""
    tmp = [d.name for d in Path(tempfile.gettempdir()).glob(f"{netns.LAB_BASE}*")]
    removed: list[str] = []
    for prefix in sorted(netns.stale_prefixes(tmp)):
        removed.extend(sweep_lab(prefix))
    return removed
