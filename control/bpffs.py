"""Where relayctl pins things: /sys/fs/bpf/NAME, with bpffs mounted when it is not."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from pathlib import Path

from control.errors import RelayctlError

BPFFS = Path("/sys/fs/bpf")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """A relay name becomes a directory under bpffs and a C string literal: keep it plain."""
    if not _NAME.match(name):
        raise RelayctlError(f"bad --name {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")
    return name


def pin_dir(name: str) -> Path:
    return BPFFS / check_name(name)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise RelayctlError(
            f"`relayctl {what}` needs root (it uses BPF and /sys/fs/bpf): run it with sudo"
        )


def bpffs_mounted() -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(
            len(f := line.split()) >= 3 and f[1] == str(BPFFS) and f[2] == "bpf" for line in mounts
        )


def ensure_bpffs() -> None:
    """Mount bpffs at /sys/fs/bpf when it is not (pins live there and survive relayctl)."""
    if bpffs_mounted():
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise RelayctlError(f"cannot mount bpffs at {BPFFS}: {os.strerror(err)}")
