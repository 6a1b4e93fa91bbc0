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

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from lab import netns
from lab.standin import StandIn
from wire import ufrag
from wire.encap import RELAY_TUNNEL_PORT

VIP = "198.18.100.1"
VIP_PORT = 3478
CLIENT_ADDRS = ("198.18.1.2", "198.18.1.3")
RELAY_CLIENT_SIDE = "198.18.1.1"
TUNNEL_ADDR = "198.18.2.1"
TXR_PORT = 5000
CLUSTER = 1
KEY_ID = 1
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


@dataclass
class LabState:
    """What the lab created, so teardown removes exactly that, in reverse."""

    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    standins: list[StandIn] = field(default_factory=list)
    loaded: bool = False


def relayctl_path() -> str:
    """The relayctl of the interpreter running the lab (the project venv), else PATH's."""
    exe = Path(sys.executable).parent / "relayctl"
    if exe.exists():
        return str(exe)
    found = shutil.which("relayctl")
    if found is None:
        raise netns.NetnsError("relayctl not found: run `make install`")
    return found


class RelayLab:
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
        self.prefix = prefix or netns.lab_prefix()
        self.name = self.prefix  # relayctl --name: pins under /sys/fs/bpf/<prefix>
        self.mode = mode
        self.load_relay = load_relay
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
        self.tmpdir = Path(tempfile.gettempdir()) / f"{self.prefix}-files"
        self.registry_file = self.tmpdir / "registry.json"
        self.state = LabState()
        self._owner = os.getpid()
        self._teardown_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RelayLab:
        try:
            self._build()
            if self.load_relay:
                self.load()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        self.tmpdir.mkdir(mode=0o700)
        for ns in (self.client_ns, self.relay_ns, *(t.ns for t in self.txrs)):
            netns.create(ns)
            self.state.namespaces.append(ns)
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
        # bpf_fib_lookup refuses to forward unless forwarding is on in the relay's namespace.
        netns.sysctl(self.relay_ns, "net.ipv4.ip_forward", "1")
        # A packet whose next hop is unresolved is passed to the kernel already rewritten: its
        # source is the tunnel address or the VIP, both local. The kernel forwards it (and so
        # resolves the neighbour) only with accept_local and a non-strict rp_filter; otherwise
        # it drops it as a martian and the neighbour is never resolved. Set as on an edge host.
        netns.sysctl(self.relay_ns, "net.ipv4.conf.all.accept_local", "1")
        netns.sysctl(self.relay_ns, "net.ipv4.conf.all.rp_filter", "2")
        self._static_neighbours()
        # The veth trap (see netns.load_xdp_pass): frames the relay redirects into a veth are
        # only delivered if the peer runs an XDP program, so every peer gets XDP_PASS.
        netns.attach_xdp_pass(self.client_ns, "cr")
        for t in self.txrs:
            netns.attach_xdp_pass(t.ns, "tr")
        self.write_registry()

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

    def close(self) -> None:
        """Tear everything down; safe to call twice and not interruptible by Ctrl-C."""
        if os.getpid() != self._owner:  # a forked child unwinding: the owner tears down
            return
        with self._teardown_lock, _signals_deferred():
            for standin in self.state.standins:
                standin.stop()
            self.state.standins.clear()
            for proc in reversed(self.state.processes):
                _stop(proc)
            self.state.processes.clear()
            if self.state.loaded:
                with contextlib.suppress(Exception):
                    self.unload()
            for ns in reversed(self.state.namespaces):
                with contextlib.suppress(Exception):
                    netns.delete(ns)
            self.state.namespaces.clear()
            netns.remove_pins(self.prefix)
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # --- the relay (via the real CLI) ----------------------------------------------------------

    def relayctl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run `relayctl <args> --name <lab name>` inside the relay namespace; returns stdout."""
        argv = [relayctl_path(), *args, "--name", self.name]
        return netns.run(self.relay_ns, argv, timeout=timeout, check=check).stdout

    def load(self) -> None:
        """`relayctl load` on every relay link: client datagrams arrive on one, transceiver
        replies on the others, and the program must see both directions."""
        args = ["load"]
        for iface in self.relay_ifaces:
            args += ["--iface", iface]
        args += ["--vip", f"{self.vip}:{self.vip_port}"]
        args += ["--tunnel", f"{self.tunnel_addr}:{self.tunnel_port}", "--mode", self.mode]
        self.state.loaded = True  # set first: a half-done load is unloaded too
        self.relayctl(*args)
        self.sync()

    @property
    def prog_pin(self) -> Path:
        return netns.BPFFS / self.name / "prog"

    def unload(self) -> None:
        self.relayctl("unload")
        self.state.loaded = False
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
        return _packets_by_reason(json.loads(self.relayctl("stats", "--json")))

    def flows(self) -> list[dict[str, Any]]:
        doc = json.loads(self.relayctl("flows", "--json"))
        return list(doc["flows"] if isinstance(doc, dict) else doc)

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

    def spawn(self, ns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """A process in one of the lab's namespaces, stopped at teardown."""
        proc = netns.popen(ns, argv, **kwargs)
        self.state.processes.append(proc)
        return proc

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
        self.state.standins.append(standin)
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


def _packets_by_reason(doc: Any) -> dict[str, int]:
    """Accept the shapes a stats document may reasonably take: {"counters": {...}} or a list."""
    if isinstance(doc, dict) and "counters" in doc:
        doc = doc["counters"]
    out: dict[str, int] = {}
    if isinstance(doc, dict):
        for name, v in doc.items():
            out[name] = int(v["packets"] if isinstance(v, dict) else v)
    else:
        for row in doc:
            out[str(row.get("name") or row.get("reason"))] = int(row["packets"])
    return out


def _stop(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while tearing down, so a second Ctrl-C cannot leave half a lab
    behind; a signal that came in meanwhile is re-raised afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda n, f: pending.append(n)) for s in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in pending[:1]:
            handler = old[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(s)


def sweep_lab(prefix: str) -> list[str]:
    """Remove what a lab with this prefix left (namespaces, pins) and its temp directories."""
    removed = netns.sweep(prefix)
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}-*"):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


__all__ = [
    "CLIENT_ADDRS",
    "TUNNEL_ADDR",
    "VIP",
    "VIP_PORT",
    "RelayLab",
    "Transceiver",
    "relayctl_path",
    "sweep_lab",
    "sweep_stale_labs",
]


def sweep_stale_labs() -> list[str]:
    """Remove every lab whose owner process is gone, temp directories included."""
    tmp = [d.name for d in Path(tempfile.gettempdir()).glob(f"{netns.LAB_BASE}*")]
    removed: list[str] = []
    for prefix in sorted(netns.stale_prefixes(tmp)):
        removed.extend(sweep_lab(prefix))
    return removed
