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


# PROC_PID_INIT_INO (include/linux/proc_ns.h): the inode of the host's pid namespace, the same
# on every boot. A mount namespace has no such constant, so it is compared with init's.
INIT_PID_NS_INODE = 0xEFFFFFFC


def in_host_mount_namespace() -> bool:
    """True for a process that shares the host init's mount namespace (not a container, not
    `ip netns exec`, which unshares the mount namespace to give the command a private /sys)."""
    try:
        same_mnt = os.stat("/proc/self/ns/mnt").st_ino == os.stat("/proc/1/ns/mnt").st_ino
        host_pid = os.stat("/proc/self/ns/pid").st_ino == INIT_PID_NS_INODE
    except OSError:
        return False
    return same_mnt and host_pid


def ensure_bpffs() -> None:
    """Make sure /sys/fs/bpf is a bpffs whose pins outlive relayctl, mounting it on a host that
    booted without one; refuse where a mount would be private to this process.

    A bpffs mounted in a private mount namespace dies with it: `relayctl load` there would pin,
    report success and leave the program attached with maps nobody can reach again.
    """
    if bpffs_mounted():
        return
    if not in_host_mount_namespace():
        raise RelayctlError(
            f"{BPFFS} is not a mounted bpffs here, and this process runs in a private mount "
            "namespace (`ip netns exec` gives its command a private /sys; so does a container "
            "without the host's bpffs): pins made here would vanish when relayctl exits. Run "
            "relayctl with `nsenter --net=/run/netns/NS` (network namespace only), or mount the "
            f"host's {BPFFS} into the container"
        )
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise RelayctlError(f"cannot mount bpffs at {BPFFS}: {os.strerror(err)}")
