"""What every lab owns and tears down, whatever its topology.

A lab (RelayLab, EdgeLab, the relayctl tests' pair of namespaces, ...) is a subclass that builds
its topology in `build()` with the primitives of lab.netns; this base tracks everything it
creates (namespaces, processes, loaded relays, pins, a private temp directory, extra teardown
steps) and removes it in reverse on exit, also on failure and on Ctrl-C.

    with RelayLab() as lab:    # build() runs in __enter__; close() in __exit__, always
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lab import netns
from wire.addr import format_addr_port

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def relayctl_path() -> str:
    """The relayctl of the interpreter running the lab (the project venv), else PATH's."""
    exe = Path(sys.executable).parent / "relayctl"
    if exe.exists():
        return str(exe)
    found = shutil.which("relayctl")
    if found is None:
        raise netns.NetnsError("relayctl not found: run `make install`")
    return found


def edge_host_sysctls(ns: str) -> None:
    """The sysctls an edge host running the relay needs (docs/operations.md).

    bpf_fib_lookup refuses to forward unless forwarding is on. A packet whose next hop is
    unresolved is passed to the kernel already rewritten: its source is the tunnel address or
    the VIP, both local; the kernel forwards it (and so resolves the neighbour) only with
    accept_local and a non-strict rp_filter, otherwise it drops it as a martian.
    """
    netns.sysctl(ns, "net.ipv4.ip_forward", "1")
    netns.sysctl(ns, "net.ipv4.conf.all.accept_local", "1")
    netns.sysctl(ns, "net.ipv4.conf.all.rp_filter", "2")


def packets_by_reason(doc: Any) -> dict[str, int]:
    """Packet counters by reason name from `relayctl stats --json`."""
    return {name: int(v["packets"]) for name, v in doc.items()}


def stop_process(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
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


class Lab:
    """Build with `with SomeLab() as lab:`; everything is removed on exit, also on exceptions."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or netns.lab_prefix()
        self.tmpdir = Path(tempfile.gettempdir()) / f"{self.prefix}-files"
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._relays: dict[tuple[str, str], bool] = {}  # (ns, relay name) -> loaded
        self._closers: list[Callable[[], object]] = []
        self._owner = os.getpid()
        self._teardown_lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.tmpdir.mkdir(mode=0o700)
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def build(self) -> None:
        """Create the topology (subclasses)."""

    def close(self) -> None:
        """Tear everything down in reverse; safe to call twice, not interruptible by Ctrl-C."""
        if os.getpid() != self._owner:  # a forked child unwinding: the owner tears down
            return
        with self._teardown_lock, signals_deferred():
            for closer in reversed(self._closers):
                with contextlib.suppress(Exception):
                    closer()
            self._closers.clear()
            for proc in reversed(self._processes):
                with contextlib.suppress(Exception):
                    stop_process(proc, grace=5)
            self._processes.clear()
            for (ns, name), loaded in list(self._relays.items()):
                if loaded:
                    with contextlib.suppress(Exception):
                        self.unload_relay(ns, name)
            self._relays.clear()
            for ns in reversed(self._namespaces):
                with contextlib.suppress(Exception):
                    netns.delete(ns)
            self._namespaces.clear()
            netns.remove_pins(self.prefix)
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def on_close(self, fn: Callable[[], object]) -> None:
        """One more teardown step (run before processes stop and namespaces go)."""
        self._closers.append(fn)

    # --- namespaces and processes --------------------------------------------------------------

    def namespace(self, suffix: str, *, ipv6: bool = False) -> str:
        """A new namespace `<prefix>-<suffix>` (IPv6 disabled unless `ipv6`), deleted at
        teardown."""
        name = f"{self.prefix}-{suffix}"
        netns.create(name, ipv6=ipv6)
        self._namespaces.append(name)
        return name

    def ip(self, ns: str, *args: str) -> str:
        return netns.run(ns, ["ip", *args]).stdout

    def spawn(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """A process in one of the lab's namespaces, stopped at teardown."""
        proc = netns.popen(ns, argv, **kwargs)
        self._processes.append(proc)
        return proc

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """A process the caller started itself, stopped at teardown like spawned ones."""
        self._processes.append(proc)

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        """A process the caller stopped itself."""
        with contextlib.suppress(ValueError):
            self._processes.remove(proc)

    # --- relays, through the real CLI ----------------------------------------------------------

    def relayctl_in(
        self, ns: str, name: str, *args: str, check: bool = True, timeout: float = 120
    ) -> str:
        """`relayctl <args> --name <name>` in namespace `ns` (nsenter: the host's bpffs)."""
        argv = [relayctl_path(), *args, "--name", name]
        return netns.run(ns, argv, timeout=timeout, check=check).stdout

    def load_relay(
        self,
        ns: str,
        name: str,
        *,
        ifaces: Sequence[str],
        vips: Sequence[tuple[str, int]],
        tunnel: tuple[str, int],
        mode: str = "native",
    ) -> None:
        args = ["load"]
        for iface in ifaces:
            args += ["--iface", iface]
        for addr, port in vips:
            args += ["--vip", format_addr_port(addr, port)]  # [v6]:port for an IPv6 VIP
        args += ["--tunnel", f"{tunnel[0]}:{tunnel[1]}", "--mode", mode]
        self._relays[(ns, name)] = True  # first: a half-done load is unloaded too
        self.relayctl_in(ns, name, *args)

    def unload_relay(self, ns: str, name: str) -> None:
        self.relayctl_in(ns, name, "unload")
        self._relays[(ns, name)] = False

    def relay_loaded(self, ns: str, name: str) -> bool:
        return self._relays.get((ns, name), False)

    def relay_stats(self, ns: str, name: str) -> dict[str, int]:
        return packets_by_reason(json.loads(self.relayctl_in(ns, name, "stats", "--json")))

    def relay_flows(self, ns: str, name: str) -> list[dict[str, Any]]:
        return list(json.loads(self.relayctl_in(ns, name, "flows", "--json")))

    def relay_maps(self, ns: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.relayctl_in(ns, name, "map", "show", "--json")))
