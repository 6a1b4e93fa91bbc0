"""CPU time, run-queue wait, resident memory and UDP socket state of a process tree, from /proc:
the one reader the bench, the lab and the tests use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Direct children, from every thread's children list (needs CONFIG_PROC_CHILDREN)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(p) for p in task.read_text().split()]
        except OSError:  # the thread or process went away between glob and read
            continue
    return kids


def tree(pid: int) -> list[int]:
    """pid and all its descendants (a server that forks workers is measured whole)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def user_system_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process tree, in seconds."""
    user = system = 0
    for p in tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, in seconds."""
    return sum(user_system_seconds(pid))


def _schedstat_seconds(pid: int, column: int) -> float:
    """A /proc/<pid>/task/*/schedstat column (ns) over the process tree's live threads, in s."""
    total = 0
    for p in tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[column])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def oncpu_seconds(pid: int) -> float:
    """Time the process tree's threads ran on a CPU (schedstat field 1): cpu_seconds in ns
    resolution instead of clock ticks, for spans of a few ms."""
    return _schedstat_seconds(pid, 0)


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process tree's threads spent runnable but waiting for a CPU (schedstat field 2):
    on a shared machine this tells "the server was starved" from "the server was slow"."""
    return _schedstat_seconds(pid, 1)


def rss_kib(pid: int) -> int:
    """VmRSS of the process tree, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
    return total


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").exists()


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


@dataclass
class UdpState:
    drops: int = 0  # datagrams the kernel dropped: the receive buffer was full
    queued: int = 0  # bytes received but not yet read by the process


def udp_state(pid: int) -> UdpState:
    """Receive-side state of the process tree's UDP sockets, summed: the `drops` and
    `rx_queue` columns of /proc/PID/net/udp{,6} for the sockets the processes hold."""
    state = UdpState()
    for p in tree(pid):
        inodes = _socket_inodes(p)
        for table in ("udp", "udp6"):
            try:
                lines = Path(f"/proc/{p}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) >= 13 and fields[9] in inodes:
                    state.drops += int(fields[12])
                    state.queued += int(fields[4].split(":")[1], 16)
    return state
