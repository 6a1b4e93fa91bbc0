"""A network namespace in which bpf_fib_lookup has answers to give, and a thread living in it.

An XDP test run (datapath.bpfsys.prog_test_run) with ingress_ifindex set looks the device up in
the network namespace of the calling *thread*, and bpf_fib_lookup then routes in that
namespace. NetnsWorker runs calls on a thread that has setns()'d into a namespace, so the rest of
the process stays where it is. Used by the BPF unit tests and the bench.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from datapath.bpfsys import TestRunResult, prog_test_run
from lab.netns import setns_net

T = TypeVar("T")


class NetnsWorker:
    """One thread living in the network namespace at netns_path (e.g. /run/netns/NAME)."""

    def __init__(self, netns_path: str) -> None:
        self._fd = os.open(netns_path, os.O_RDONLY)
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=self._enter)

    def _enter(self) -> None:
        setns_net(self._fd)

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run fn on the namespace's thread (a failed setns surfaces as BrokenThreadPool)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def test_run(
        self, prog_fd: int, data: bytes, *, ingress_ifindex: int = 0, repeat: int = 1
    ) -> TestRunResult:
        return self.call(
            prog_test_run, prog_fd, data, ingress_ifindex=ingress_ifindex, repeat=repeat
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        os.close(self._fd)

    def __enter__(self) -> NetnsWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A network namespace in which bpf_fib_lookup has answers to give: two links with permanent
# neighbours (known MACs), an unresolved neighbour, an unreachable prefix and a small-MTU route.
# Both ends of each veth stay inside the namespace: nothing leaves it.
@dataclass(frozen=True)
class Link:
    name: str
    peer: str
    addr: str  # ours, /24
    mac: str
    gateway: str  # a permanent neighbour on this link
    gateway_mac: str


CLIENT_LINK = Link(
    "cli0", "cli1", "198.19.0.1", "02:ed:00:00:00:01", "198.19.0.2", "02:ed:00:00:00:02"
)
TXR_LINK = Link(
    "txr0", "txr1", "198.19.1.1", "02:ed:00:00:01:01", "198.19.1.2", "02:ed:00:00:01:02"
)
CLIENT_NET = "198.19.64.0/18"  # clients, via the client gateway
NEAR_TXR = ("198.19.1.10", "02:ed:00:00:01:10")  # a transceiver on the transceiver link
TX_TXR = ("198.19.0.20", "02:ed:00:00:00:20")  # a transceiver on the client link: XDP_TX
UNRESOLVED = "198.19.1.11"  # on-link, no neighbour entry: BPF_FIB_LKUP_RET_NO_NEIGH
UNREACHABLE_NET = "198.19.3.0/24"
SMALL_MTU_NET, SMALL_MTU = "198.19.4.0/24", 600  # via the transceiver gateway


# IPv6 (the documentation range, never routed anywhere): the client link's address and its
# gateway, the clients behind it, an unresolved on-link neighbour, an unreachable prefix and a
# small-MTU route (IPv6's minimum, 1280).
CLIENT_LINK6 = ("2001:db8:ed00::1", "2001:db8:ed00::2")  # ours, the gateway (gateway_mac)
CLIENT_NET6 = "2001:db8:ed40::/48"
UNRESOLVED6 = "2001:db8:ed00::11"
UNREACHABLE_NET6 = "2001:db8:ed03::/48"
SMALL_MTU_NET6, SMALL_MTU6 = "2001:db8:ed04::/48", 1280


@dataclass(frozen=True)
class Sandbox:
    name: str
    path: str  # /run/netns/NAME
    ifindex: dict[str, int]


def _ip(*args: str, ns: str | None = None, script: str | None = None) -> str:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(cmd, input=script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def _script() -> str:
    """The `ip -batch` commands that build the sandbox."""
    cmds = ["link set lo up"]
    for link in (CLIENT_LINK, TXR_LINK):
        cmds += [
            f"link add {link.name} address {link.mac} type veth peer name {link.peer}",
            f"addr add {link.addr}/24 dev {link.name}",
            f"link set {link.name} up",
            f"link set {link.peer} up",
            f"neigh replace {link.gateway} lladdr {link.gateway_mac} nud permanent dev {link.name}",
        ]
    for (addr, mac), link in ((NEAR_TXR, TXR_LINK), (TX_TXR, CLIENT_LINK)):
        cmds.append(f"neigh replace {addr} lladdr {mac} nud permanent dev {link.name}")
    ours6, gw6 = CLIENT_LINK6
    gw_mac = CLIENT_LINK.gateway_mac
    cmds += [
        f"addr add {ours6}/64 dev {CLIENT_LINK.name} nodad",
        f"neigh replace {gw6} lladdr {gw_mac} nud permanent dev {CLIENT_LINK.name}",
        f"route add {CLIENT_NET6} via {gw6} dev {CLIENT_LINK.name}",
        f"route add unreachable {UNREACHABLE_NET6}",
        f"route add {SMALL_MTU_NET6} via {gw6} dev {CLIENT_LINK.name} mtu lock {SMALL_MTU6}",
        f"route add default via {gw6} dev {CLIENT_LINK.name}",  # the peer is in here too
    ]
    cmds += [
        f"route add {CLIENT_NET} via {CLIENT_LINK.gateway}",
        f"route add default via {TXR_LINK.gateway}",
        f"route add unreachable {UNREACHABLE_NET}",
        f"route add {SMALL_MTU_NET} via {TXR_LINK.gateway} mtu lock {SMALL_MTU}",
    ]
    return "\n".join(cmds) + "\n"


@contextmanager
def fib_sandbox(prefix: str = "edgebpf") -> Iterator[Sandbox]:
    """A throwaway namespace (unique name: prefix-pid-random), deleted on exit even on error."""
    name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        _ip("-batch", "-", ns=name, script=_script())
        # bpf_fib_lookup answers FWD_DISABLED unless the ingress device forwards (each family).
        sysctl = ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1"]
        subprocess.run(sysctl, check=True, capture_output=True)
        sysctl6 = ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]
        subprocess.run(sysctl6, check=True, capture_output=True)
        links = json.loads(_ip("-j", "link", "show", ns=name))
        yield Sandbox(name, f"/run/netns/{name}", {i["ifname"]: i["ifindex"] for i in links})
    finally:
        _ip("netns", "del", name)
