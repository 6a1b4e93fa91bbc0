"""Network-namespace plumbing for labs: namespaces, veth pairs, addresses, commands and sockets.

Everything is created inside namespaces this module names, never in the host's: a veth pair is
created in one lab namespace with its peer placed straight into another, so host interfaces are
never touched and interface names only need to be unique within a lab namespace.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2 import config as pr_config
from pyroute2 import netns as pr_netns

from datapath import bpfsys, xdp

# pyroute2 forks short-lived children to open sockets in namespaces. They must not inherit the
# lab's signal handlers (a demo's Ctrl-C handler would run the teardown in a child, too).
pr_config.disable_mp_signal = True

NETNS_DIR = Path("/run/netns")
BPFFS = Path("/sys/fs/bpf")
# Every lab's names start with this, followed by the owner's pid: `sweep_stale` uses the pid to
# tell an abandoned lab from one another process is still running.
LAB_BASE = "edgelab"
IFNAMSIZ = 15
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class NetnsError(RuntimeError):
    """A namespace operation failed; the message says which and why."""


_lab_numbers = itertools.count()


def lab_prefix() -> str:
    """A name prefix unique to this process and call: parallel and repeated labs never collide.

    pid (unique among live processes), then a fixed-width per-process counter (unique within
    the process) and random bits (against leftovers of a dead process with the same pid).
    Fixed width: no lab's prefix is a prefix of another's, so sweeping one never hits another.
    """
    return f"{LAB_BASE}{os.getpid()}x{next(_lab_numbers) % 4096:03x}{secrets.token_hex(2)}"


def ns_path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return ns_path(name).exists()


def list_namespaces(prefix: str = "") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def create(name: str, *, ipv6: bool = False) -> None:
    """Create a named namespace (bind-mounted under /run/netns) with its loopback up.

    Labs are IPv4 only by default: without IPv6, new links send no neighbour discovery or MLD
    chatter, so packet counters in a lab move only with the test's own traffic.
    """
    if exists(name):
        raise NetnsError(f"namespace {name} already exists")
    pr_netns.create(name)
    try:
        if not ipv6:
            for scope in ("all", "default"):
                sysctl(name, f"net.ipv6.conf.{scope}.disable_ipv6", "1")
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    except BaseException:
        pr_netns.remove(name)  # half a namespace is no use to anyone: leave none behind
        raise


def delete(name: str) -> None:
    """Kill what still runs in the namespace, then remove it; its links go with it."""
    if not exists(name):
        return
    kill_processes(name)
    pr_netns.remove(name)


def setns_net(fd: int) -> None:
    """Move the calling thread into the network namespace open at fd."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Move the calling thread (only it: setns is per thread) into a namespace, and back.

    Sockets created inside stay in that namespace for their whole life, which is what
    `socket_in` relies on; /proc/sys/net opened inside shows that namespace's sysctls.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(ns_path(name), os.O_RDONLY)
    except FileNotFoundError:
        os.close(own)
        raise NetnsError(f"namespace {name} does not exist") from None
    try:
        setns_net(target)
        try:
            yield
        finally:
            setns_net(own)
    finally:
        os.close(target)
        os.close(own)


def call_in(name: str, fn: Callable[[], T]) -> T:
    """fn() run inside the namespace, on a short-lived thread that entered it.

    The calling thread never changes namespace, so a Ctrl-C landing at any point cannot leave
    it in the wrong one; sockets and files fn opens stay bound to the namespace.
    """
    box: list[T] = []
    err: list[BaseException] = []
    done = _thread.allocate_lock()
    done.acquire()

    def body() -> None:
        try:
            with entered(name):
                box.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            err.append(exc)
        finally:
            done.release()

    # A bare _thread, not threading.Thread: if a Ctrl-C interrupts the wait, the helper just
    # finishes on its own, without threading's bookkeeping complaining on stderr.
    _thread.start_new_thread(body, ())
    done.acquire()
    if err:
        raise err[0]
    return box[0]


def socket_in(
    name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM, proto: int = 0
) -> socket.socket:
    """A socket that lives in namespace `name`, usable from any thread of this process."""
    return call_in(name, lambda: socket.socket(family, kind, proto))


def sysctl(name: str, key: str, value: str) -> None:
    """Write a sysctl (dotted key) as seen from inside the namespace."""
    path = Path("/proc/sys") / key.replace(".", "/")
    call_in(name, lambda: path.write_text(value))


def read_sysctl(name: str, key: str) -> str:
    path = Path("/proc/sys") / key.replace(".", "/")
    return call_in(name, lambda: path.read_text().strip())


def nsenter_argv(name: str, argv: Sequence[str]) -> list[str]:
    """argv run in the namespace's network only: unlike `ip netns exec`, nsenter does not
    remount /sys, so pinned maps under /sys/fs/bpf stay visible to the command."""
    return ["nsenter", f"--net={ns_path(name)}", "--", *argv]


def run(
    name: str, argv: Sequence[str], *, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command in the namespace, capture its output; a failure raises with its stderr."""
    proc = subprocess.run(
        nsenter_argv(name, argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        cmd = " ".join(argv)
        detail = (proc.stderr or proc.stdout).strip()
        raise NetnsError(f"`{cmd}` in {name} exited {proc.returncode}: {detail}")
    return proc


def popen(name: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a long-running command in the namespace (the caller stops it)."""
    return subprocess.Popen(nsenter_argv(name, argv), **kwargs)  # type: ignore[call-overload]


def _ipr(name: str) -> IPRoute:
    # flags=0: never create a namespace by accident through a typo.
    return IPRoute(netns=name, flags=0)


def ifindex(name: str, ifname: str) -> int:
    with _ipr(name) as ipr:
        found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(f"no interface {ifname} in {name}")
    return int(found[0])


def mac(name: str, ifname: str) -> str:
    with _ipr(name) as ipr:
        return str(ipr.get_links(ifname=ifname)[0].get("address"))


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair created inside ns_a with its peer placed directly in ns_b, both up."""
    for n in (if_a, if_b):
        if len(n) > IFNAMSIZ:
            raise NetnsError(f"interface name {n!r} is longer than {IFNAMSIZ} characters")
    with _ipr(ns_a) as ipr:
        ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
        ipr.link("set", index=ipr.link_lookup(ifname=if_a)[0], state="up")
    with _ipr(ns_b) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=if_b)[0], state="up")


def add_addr(name: str, ifname: str, cidr: str) -> None:
    addr, plen = cidr.split("/")
    with _ipr(name) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=addr, prefixlen=int(plen))


def add_route(name: str, dst: str, gateway: str) -> None:
    """dst is "a.b.c.d/len" or "default"."""
    with _ipr(name) as ipr:
        ipr.route("add", dst=dst, gateway=gateway)


def add_neigh(name: str, ifname: str, addr: str, lladdr: str) -> None:
    """A permanent neighbour entry: the XDP fib lookup then resolves the next hop on the very
    first packet instead of handing it to the kernel (pass_fib_no_neigh) to run ARP."""
    with _ipr(name) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.neigh("replace", ifindex=idx, dst=addr, lladdr=lladdr, state="permanent")


# --- XDP on lab links --------------------------------------------------------------------------
#
# Frames that XDP_REDIRECT/XDP_TX push into a veth are delivered by the PEER's NAPI poll, which a
# veth only runs when the peer has an XDP program (or GRO) enabled; otherwise they are dropped
# silently. The lab attaches a two-instruction XDP_PASS program to the peers in the client and
# transceiver namespaces. We chose XDP over GRO because it is independent of offload settings and
# kernel defaults, and the frame then takes the same path it would on a NIC driver.


def attach_xdp_pass(name: str, ifname: str) -> None:
    """Attach XDP_PASS to an interface; it goes away with the interface (namespace deletion)."""
    fd = bpfsys.load_xdp_pass(b"lab_xdp_pass")
    try:
        with _ipr(name) as ipr:
            xdp.attach(ifname, fd, "native", ipr)
    finally:
        os.close(fd)


def xdp_attached(name: str, ifname: str) -> bool:
    with _ipr(name) as ipr:
        return bool(xdp.attached(ifname, ipr).modes())


class LinkCounters:
    """Read an interface's kernel packet counters in a namespace, cheaply and repeatedly.

    /proc/thread-self/net/dev is bound to the namespace of the thread that opens it, so the file
    is opened inside the namespace once and re-read from any thread (a few microseconds a read).
    """

    def __init__(self, name: str, ifname: str) -> None:
        self.ifname = ifname
        self._f = call_in(name, lambda: open("/proc/thread-self/net/dev", "rb", buffering=0))

    def read(self) -> tuple[int, int]:
        """(rx_packets, tx_packets) of the interface."""
        self._f.seek(0)
        for line in self._f.readall().decode().splitlines():
            head, _, rest = line.partition(":")
            if head.strip() == self.ifname:
                f = rest.split()
                return int(f[1]), int(f[9])
        raise NetnsError(f"no interface {self.ifname} in /proc/net/dev")

    def close(self) -> None:
        self._f.close()


# --- processes and cleanup --------------------------------------------------------------------


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is this one (found by the namespace's inode)."""
    try:
        inode = os.stat(ns_path(name)).st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def kill_processes(name: str, grace: float = 2.0) -> None:
    """SIGTERM what runs in the namespace, SIGKILL what is still there after `grace` seconds."""
    pids = pids_in(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        if pids:
            time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def remove_pins(prefix: str) -> list[str]:
    """Remove bpffs pin directories named with the prefix (the lab's relayctl --name)."""
    removed = []
    if not BPFFS.is_dir():
        return removed
    for entry in BPFFS.iterdir():
        if entry.name.startswith(prefix):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(str(entry))
    return removed


def sweep(prefix: str) -> list[str]:
    """Remove every namespace and pin directory whose name starts with `prefix`.

    Deleting a namespace deletes its veths, which detaches their XDP programs.
    Returns what was removed.
    """
    if not prefix.startswith(LAB_BASE):
        raise NetnsError(f"refusing to sweep {prefix!r}: lab names start with {LAB_BASE!r}")
    removed = []
    for name in list_namespaces(prefix):
        try:
            delete(name)
            removed.append(name)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    removed.extend(remove_pins(prefix))
    return removed


_PREFIX_RE = re.compile(rf"^{LAB_BASE}(\d+)x[0-9a-f]+")


def stale_prefixes(names: Iterable[str] = ()) -> set[str]:
    """Prefixes of labs (by namespace, pin or given names) whose owner process is gone."""
    found = set(list_namespaces(LAB_BASE)) | set(names)
    if BPFFS.is_dir():
        found |= {p.name for p in BPFFS.iterdir() if p.name.startswith(LAB_BASE)}
    prefixes = set()
    for n in found:
        m = _PREFIX_RE.match(n)
        if m and not _alive(int(m.group(1))):
            prefixes.add(m.group(0))
    return prefixes


def sweep_stale() -> list[str]:
    """Sweep labs left behind by processes that no longer exist (e.g. a SIGKILLed test run)."""
    removed: list[str] = []
    for p in sorted(stale_prefixes()):
        removed.extend(sweep(p))
    return removed


def thread_in(name: str, target: Callable[[], None], *, daemon: bool = True) -> threading.Thread:
    """A started thread that enters the namespace first, so everything it creates lives there."""

    def body() -> None:
        fd = os.open(ns_path(name), os.O_RDONLY)
        try:
            setns_net(fd)
        finally:
            os.close(fd)
        target()

    t = threading.Thread(target=body, name=f"ns:{name}", daemon=daemon)
    t.start()
    return t
