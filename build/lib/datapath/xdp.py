"""XDP attachment over rtnetlink: attach, replace, detach, and what an interface runs.

One implementation for relayctl (the relay on its links) and the lab (XDP_PASS on veth peers).
Everything acts on the network namespace of the calling thread unless an open pyroute2 IPRoute
of another namespace is passed as `ipr`.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from datapath import DatapathError

# include/uapi/linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
MODES = tuple(MODE_FLAGS)


class XdpError(DatapathError):
    """An attach or detach the kernel refused; the message says what to do about it."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclass(frozen=True)
class Attached:
    """Program ids attached to one interface per mode (0: none)."""

    native: int = 0
    generic: int = 0

    def mode_of(self, prog_id: int) -> str | None:
        if prog_id and self.native == prog_id:
            return "native"
        if prog_id and self.generic == prog_id:
            return "generic"
        return None

    def modes(self) -> list[str]:
        return [m for m in MODES if getattr(self, m)]


@contextmanager
def _route(ipr: IPRoute | None) -> Iterator[IPRoute]:
    if ipr is not None:
        yield ipr
        return
    with IPRoute() as own:
        yield own


def ifindex(iface: str, ipr: IPRoute | None = None) -> int:
    with _route(ipr) as r:
        found = r.link_lookup(ifname=iface)
    if not found:
        raise XdpError(
            errno.ENODEV, f"no such interface {iface!r} in this network namespace (see `ip link`)"
        )
    return int(found[0])


def attached(iface: str, ipr: IPRoute | None = None) -> Attached:
    with _route(ipr) as r:
        links = r.get_links(ifindex(iface, r))
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if xdp is None:
        return Attached()
    return Attached(
        native=xdp.get_attr("IFLA_XDP_DRV_PROG_ID") or 0,
        generic=xdp.get_attr("IFLA_XDP_SKB_PROG_ID") or 0,
    )


def interfaces() -> list[tuple[int, str]]:
    """(index, name) of every interface in the calling thread's namespace."""
    return list(socket.if_nameindex())


def _set(r: IPRoute, index: int, fd: int, flags: int) -> int:
    """IFLA_XDP set; 0 or the errno."""
    try:
        r.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})
    except NetlinkError as exc:
        return int(exc.code)
    return 0


def attach(iface: str, fd: int, mode: str, ipr: IPRoute | None = None) -> None:
    """Attach program `fd` in `mode`, atomically replacing what runs in that mode; a program in
    the other mode is detached first (the kernel refuses native and generic at once)."""
    if mode not in MODE_FLAGS:
        raise ValueError(f"XDP mode must be one of {MODES}, got {mode!r}")
    with _route(ipr) as r:
        index = ifindex(iface, r)
        other = "generic" if mode == "native" else "native"
        if getattr(attached(iface, r), other):
            detach(iface, other, r)
        err = _set(r, index, fd, MODE_FLAGS[mode])
    if err == 0:
        return
    if mode == "native" and err in (errno.EOPNOTSUPP, errno.EINVAL):
        raise XdpError(
            err, f"{iface} has no native XDP support ({os.strerror(err)}): use --mode generic"
        )
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise XdpError(err, f"this kernel cannot attach XDP programs ({os.strerror(err)})")
    raise XdpError(err, f"cannot attach XDP to {iface} in {mode} mode: {os.strerror(err)}")


def detach(iface: str, mode: str | None = None, ipr: IPRoute | None = None) -> None:
    """Detach the program of `mode` (None: of every mode that has one)."""
    with _route(ipr) as r:
        index = ifindex(iface, r)
        modes = [mode] if mode else attached(iface, r).modes()
        for m in modes:
            err = _set(r, index, -1, MODE_FLAGS[m])
            if err:
                raise XdpError(err, f"cannot detach XDP from {iface}: {os.strerror(err)}")
