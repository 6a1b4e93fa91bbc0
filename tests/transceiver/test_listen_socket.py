"""limits.ListenSocket: with every descriptor in use, accept() counts it and answers "nothing to
accept now" (asyncio's cue to try on its next pass) instead of raising EMFILE, which asyncio logs
with a traceback and answers by not accepting for a second; once one is free it accepts."""

from __future__ import annotations

import subprocess
import sys

CHILD = r"""
import os, resource, socket
from transceiver.limits import listen_socket

exhausted = []
lsock = listen_socket("127.0.0.1", 0, lambda: exhausted.append(1))
lsock.listen(8)
client = socket.create_connection(lsock.getsockname())
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
hogs = []
try:
    while True:
        hogs.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    lsock.accept()
    print("accepted with no descriptor free")
except BlockingIOError:
    print("would block", len(exhausted))
os.close(hogs.pop())
conn, _ = lsock.accept()
print("accepted", conn.getpeername() == client.getsockname(), len(exhausted))
"""


def test_accept_without_a_free_descriptor_waits_for_the_next_pass() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()
    assert out == ["would block 1", "accepted True 1"]
