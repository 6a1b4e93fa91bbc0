"""lab.fibsandbox: clear errors for bad calls, and a sandbox that leaves nothing behind."""

from __future__ import annotations

import errno
import os
import socket
import subprocess

import pytest

from lab.fibsandbox import NetnsWorker, fib_sandbox, prog_test_run


def test_short_packet_is_refused() -> None:
    with pytest.raises(ValueError, match="Ethernet header"):
        prog_test_run(0, b"\x00" * 13)


def test_bad_prog_fd_is_an_oserror() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            prog_test_run(fd, bytes(64))
        assert info.value.errno in (errno.EINVAL, errno.EBADF)
    finally:
        os.close(fd)


def test_sandbox_is_removed_even_on_error() -> None:
    name = None
    with pytest.raises(RuntimeError, match="boom"), fib_sandbox(prefix="edgetr") as sandbox:
        name = sandbox.name
        assert {"cli0", "txr0"} <= set(sandbox.ifindex)
        with NetnsWorker(sandbox.path) as worker:
            # the worker thread is inside (its sockets resolve the sandbox's links); we are not
            assert worker.call(socket.if_nametoindex, "txr1") == sandbox.ifindex["txr1"]
            with pytest.raises(OSError):
                socket.if_nametoindex("txr1")
            raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert name is not None and name not in listed.stdout
