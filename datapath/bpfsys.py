"""The bpf() system call, for the commands the relay's userspace uses (include/uapi/linux/bpf.h).

One implementation for relayctl, the slow path, the lab, the bench and the tests: map element
access (also in batches), pinned objects, a trivial XDP program for lab peers, and
BPF_PROG_TEST_RUN. Only `relayctl load` needs bcc (to compile the program); everything that
reads or writes the pinned maps goes through this module. Errors raise `BpfError` (an OSError,
so `errno` tells ENOENT from EPERM).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# __NR_bpf differs per architecture (arch/*/include/uapi/asm/unistd*.h, asm-generic for the rest).
_NR_BPF_BY_ARCH = {
    "x86_64": 321,
    "aarch64": 280,
    "arm64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
    "i686": 357,
    "armv7l": 386,
}

# enum bpf_cmd
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
OBJ_PIN = 6
OBJ_GET = 7
PROG_TEST_RUN = 10
MAP_LOOKUP_BATCH = 24

# map update flags
ANY, NOEXIST, EXIST = 0, 1, 2

PROG_TYPE_XDP = 6
XDP_PASS = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf() command failed; the message names the command and the object."""


def _nr_bpf() -> int:
    machine = platform.machine()
    try:
        return _NR_BPF_BY_ARCH[machine]
    except KeyError:
        raise BpfError(errno.ENOSYS, f"no bpf() syscall number known for {machine}") from None


_NR_BPF = _nr_bpf()


def _call(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr): the result, or -errno."""
    rc = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return int(rc) if rc >= 0 else -ctypes.get_errno()


def _raise(rc: int, what: str) -> None:
    raise BpfError(-rc, f"{what}: {os.strerror(-rc)}")


def _addr(obj: Any) -> int:
    return ctypes.addressof(obj) if obj is not None else 0


# --- union bpf_attr members ------------------------------------------------------------------


class _MapElemAttr(ctypes.Structure):
    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # also next_key
        ("flags", ctypes.c_uint64),
    )


class _MapBatchAttr(ctypes.Structure):
    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _ObjAttr(ctypes.Structure):
    _fields_ = (
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
        ("path_fd", ctypes.c_int32),
        ("pad", ctypes.c_uint32),
    )


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("pad", ctypes.c_uint8 * 64),
    )


class _TestRunAttr(ctypes.Structure):
    _fields_ = (
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context of an XDP test run."""

    _fields_ = (
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    )


# --- map elements ----------------------------------------------------------------------------


def map_lookup(fd: int, key: Any, value: Any) -> bool:
    """Fill `value` (a ctypes object) with the element at `key`; False when there is none."""
    rc = _call(MAP_LOOKUP_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value)))
    if rc == -errno.ENOENT:
        return False
    if rc < 0:
        _raise(rc, f"map lookup (fd {fd})")
    return True


def map_update(fd: int, key: Any, value: Any, flags: int = ANY) -> None:
    attr = _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags)
    rc = _call(MAP_UPDATE_ELEM, attr)
    if rc < 0:
        _raise(rc, f"map update (fd {fd})")


def map_delete(fd: int, key: Any) -> bool:
    """True when the element existed."""
    rc = _call(MAP_DELETE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(key)))
    if rc == -errno.ENOENT:
        return False
    if rc < 0:
        _raise(rc, f"map delete (fd {fd})")
    return True


def map_next_key(fd: int, key: Any | None, next_key: Any) -> bool:
    """Fill `next_key` with the key after `key` (the first key for None); False at the end."""
    rc = _call(MAP_GET_NEXT_KEY, _MapElemAttr(map_fd=fd, key=_addr(key), value=_addr(next_key)))
    if rc == -errno.ENOENT:
        return False
    if rc < 0:
        _raise(rc, f"map next key (fd {fd})")
    return True


@dataclass
class BatchCursor:
    """Where a batched walk of a hash map stands (opaque to callers; None: from the start)."""

    token: Any = None
    done: bool = False


def map_lookup_batch(fd: int, cursor: BatchCursor, keys: Any, values: Any, count: int) -> int:
    """Read up to `count` elements into the ctypes arrays keys/values (BPF_MAP_LOOKUP_BATCH);
    returns how many were read and advances `cursor` (cursor.done at the end of the map).

    One syscall for thousands of elements: the flow export walks a million-entry LRU map this
    way. For hash maps the batch token is a u32 bucket index, stored in the cursor.
    """
    out = ctypes.c_uint32()
    attr = _MapBatchAttr(
        in_batch=_addr(cursor.token),
        out_batch=ctypes.addressof(out),
        keys=ctypes.addressof(keys),
        values=ctypes.addressof(values),
        count=count,
        map_fd=fd,
    )
    rc = _call(MAP_LOOKUP_BATCH, attr)
    if rc == -errno.ENOENT:  # the last (possibly partial) batch: count says how many
        cursor.done = True
        return int(attr.count)
    if rc < 0:
        _raise(rc, f"map lookup batch (fd {fd})")
    cursor.token = out
    return int(attr.count)


# --- pinned objects --------------------------------------------------------------------------


def obj_get(path: str | Path) -> int:
    """An fd for the object pinned at `path` (the caller closes it)."""
    cpath = ctypes.create_string_buffer(os.fsencode(str(path)))
    rc = _call(OBJ_GET, _ObjAttr(pathname=ctypes.addressof(cpath)))
    if rc < 0:
        _raise(rc, f"cannot open {path}")
    return rc


def obj_pin(fd: int, path: str | Path) -> None:
    cpath = ctypes.create_string_buffer(os.fsencode(str(path)))
    rc = _call(OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(cpath), bpf_fd=fd))
    if rc < 0:
        _raise(rc, f"cannot pin at {path}")


def fd_info(fd: int) -> dict[str, str]:
    """The kernel's description of a BPF fd (map_type, key_size, max_entries, prog_id, ...)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in f) if v)


def possible_cpus() -> int:
    """Per-CPU map values hold one slot per possible CPU (not per online CPU)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


# --- programs --------------------------------------------------------------------------------

# r0 = XDP_PASS; exit
_XDP_PASS_INSNS = bytes([0xB7, 0, 0, 0, XDP_PASS, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


def load_xdp_pass(name: bytes = b"xdp_pass") -> int:
    """A two-instruction XDP program that passes every frame; returns its fd.

    Frames that XDP_REDIRECT/XDP_TX push into a veth are only delivered when the peer runs an XDP
    program (or GRO): the lab attaches this one to the peers of the relay's links.
    """
    insns = ctypes.create_string_buffer(_XDP_PASS_INSNS, len(_XDP_PASS_INSNS))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(
        prog_type=PROG_TYPE_XDP,
        insn_cnt=len(_XDP_PASS_INSNS) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(lic),
        prog_name=name[:15],
    )
    rc = _call(PROG_LOAD, attr)
    if rc < 0:
        _raise(rc, "BPF_PROG_LOAD (xdp_pass)")
    return rc


@dataclass(frozen=True)
class TestRunResult:
    retval: int  # the XDP action (0 aborted, 1 drop, 2 pass, 3 tx, 4 redirect)
    data_out: bytes  # the packet as the program left it
    duration_ns: int  # mean time per run, as the kernel measured it


_OUT_SLACK = 512  # the program may grow the packet (encapsulation adds 28 bytes)


def prog_test_run(
    prog_fd: int, data: bytes, *, ingress_ifindex: int = 0, repeat: int = 1
) -> TestRunResult:
    """Run an XDP program on one packet (`repeat` times): verdict, bytes out, ns per run.

    With ingress_ifindex set the kernel looks the device up in the calling thread's network
    namespace, and bpf_fib_lookup routes there (see lab.fibsandbox.NetnsWorker).
    """
    if len(data) < 14:
        raise ValueError("an XDP test run needs at least an Ethernet header (14 bytes)")
    buf_in = ctypes.create_string_buffer(data, len(data))
    buf_out = ctypes.create_string_buffer(len(data) + _OUT_SLACK)
    ctx = XdpMd(data=0, data_end=len(data), ingress_ifindex=ingress_ifindex)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=len(buf_out),
        data_in=ctypes.addressof(buf_in),
        data_out=ctypes.addressof(buf_out),
        repeat=repeat,
        ctx_size_in=ctypes.sizeof(ctx) if ingress_ifindex else 0,
        ctx_in=ctypes.addressof(ctx) if ingress_ifindex else 0,
    )
    rc = _call(PROG_TEST_RUN, attr)
    if rc < 0:
        _raise(rc, "BPF_PROG_TEST_RUN")
    return TestRunResult(attr.retval, buf_out.raw[: attr.data_size_out], attr.duration)


# --- program information ---------------------------------------------------------------------

PROG_GET_FD_BY_ID = 13
OBJ_GET_INFO_BY_FD = 15


class _GetIdAttr(ctypes.Structure):
    _fields_ = (
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    )


class _InfoAttr(ctypes.Structure):
    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class _ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to its name."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    )


def prog_name(prog_id: int) -> str:
    """The name the program was loaded with (15 characters at most), by its id."""
    fd = _call(PROG_GET_FD_BY_ID, _GetIdAttr(id=prog_id))
    if fd < 0:
        _raise(fd, f"program {prog_id}")
    try:
        info = _ProgInfo()
        rc = _call(
            OBJ_GET_INFO_BY_FD,
            _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
        )
        if rc < 0:
            _raise(rc, f"program {prog_id} info")
        return info.name.decode(errors="replace")
    finally:
        os.close(fd)
