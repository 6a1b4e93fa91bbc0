"""A private redis-server for tests, the demo and benchmarks: a unix socket in a temp dir, no
persistence, stoppable and restartable (the fault tests take Redis away mid-call).

Unix sockets are not bound to a network namespace, so every lab namespace reaches it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


class RedisError(RuntimeError):
    """redis-server is missing or did not come up."""


class RedisServer:
    def __init__(
        self, workdir: Path | None = None, ns: str | None = None, tcp: str | None = None
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RedisError("redis-server is not installed: run `make install`")
        self.exe = exe
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix=f"edge-redis-{os.getpid()}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "redis.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        # Run inside a lab namespace when given: deleting the namespace (or sweeping a lab whose
        # owner was SIGKILLed) then kills it too.
        self.ns = ns
        # Also listen on TCP at this lab address (port 6379, in `ns`): a registry other
        # namespaces reach over lab links, so cutting a link cuts it off (lab.globe).
        self.tcp = tcp
        self.tcp_url = f"redis://{tcp}:6379" if tcp else None

    def start(self, timeout: float = 10) -> RedisServer:
        port = ["--port", "6379", "--bind", self.tcp, "--protected-mode", "no"] if self.tcp else []
        argv = [self.exe, *(port or ["--port", "0"]), "--unixsocket", str(self.sock)]
        argv += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.dir)]
        if self.ns is not None:
            argv = ["nsenter", f"--net=/run/netns/{self.ns}", "--", *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        import redis

        if not self.sock.exists():
            return False
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.sock.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
