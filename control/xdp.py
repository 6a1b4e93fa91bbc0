"""XDP attachment of a program fd to an interface, and what an interface has attached."""

from __future__ import annotations

import ctypes as ct
import errno
import os
import socket
import sys
from dataclasses import dataclass

from control.errors import RelayctlError

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


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


def ifindex(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise RelayctlError(
            f"no such interface {iface!r} in this network namespace (see `ip link`)"
        ) from None


def attached(index: int) -> Attached:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(index)
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if xdp is None:
        return Attached()
    return Attached(
        native=xdp.get_attr("IFLA_XDP_DRV_PROG_ID") or 0,
        generic=xdp.get_attr("IFLA_XDP_SKB_PROG_ID") or 0,
    )


def interfaces() -> list[tuple[int, str]]:
    return [(i, name) for i, name in socket.if_nameindex()]


def _set(iface: str, fd: int, flags: int) -> int:
    """bpf_attach_xdp; returns 0 or the errno. libbcc prints its own error line to fd 2:
    silence it, relayctl reports the failure in one line of its own."""
    from bcc.libbcc import lib

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        rc = lib.bpf_attach_xdp(iface.encode(), fd, flags)
        err = ct.get_errno()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return 0 if rc >= 0 else err


def attach(iface: str, fd: int, mode: str) -> None:
    """Attach (or atomically replace) in `mode`, first detaching a program in the other mode:
    the kernel refuses native and generic programs on one interface at the same time."""
    index = ifindex(iface)
    now = attached(index)
    other = "generic" if mode == "native" else "native"
    if getattr(now, other):
        detach(iface, other)
    err = _set(iface, fd, MODE_FLAGS[mode])
    if err == 0:
        return
    if mode == "native" and err in (errno.EOPNOTSUPP, errno.EINVAL):
        raise RelayctlError(
            f"{iface} has no native XDP support ({os.strerror(err)}): use --mode generic"
        )
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise RelayctlError(f"this kernel cannot attach XDP programs ({os.strerror(err)})")
    raise RelayctlError(f"cannot attach XDP to {iface} in {mode} mode: {os.strerror(err)}")


def detach(iface: str, mode: str) -> None:
    err = _set(iface, -1, MODE_FLAGS[mode])
    if err:
        raise RelayctlError(f"cannot detach XDP from {iface}: {os.strerror(err)}")
