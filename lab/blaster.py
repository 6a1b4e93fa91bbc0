"""A bounded UDP blaster: sendmmsg(2) through ctypes, so Python's per-call cost is paid once per
batch and not per packet; the sender is then not what a relay benchmark measures."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import time
from dataclasses import dataclass

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MSG_DONTWAIT = 0x40


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


@dataclass(frozen=True)
class BlastResult:
    sent: int
    seconds: float
    send_errors: int

    @property
    def pps(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def blast(
    sock: socket.socket, payload: bytes, count: int, *, batch: int = 256, max_seconds: float = 10
) -> BlastResult:
    """Send `payload` `count` times on a connected UDP socket, as fast as sendmmsg allows.

    Bounded in count and in time. A full device queue (ENOBUFS/EAGAIN) is counted and retried:
    we measure what the relay forwards, not how often the sender's queue overflowed.
    """
    if count <= 0:
        raise ValueError("count must be positive")
    buf = ctypes.create_string_buffer(payload, len(payload))
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(payload))
    msgs = (_MMsgHdr * batch)()
    for m in msgs:
        m.msg_hdr.msg_iov = ctypes.pointer(iov)
        m.msg_hdr.msg_iovlen = 1
    fd = sock.fileno()
    sent = errors = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    while sent < count:
        n = _libc.sendmmsg(fd, msgs, min(batch, count - sent), 0)
        if n < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                raise OSError(err, os.strerror(err))
            errors += 1
            if time.perf_counter() > deadline:
                break
            continue
        sent += n
        if time.perf_counter() > deadline:
            break
    return BlastResult(sent, time.perf_counter() - start, errors)
