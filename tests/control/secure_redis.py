"""A real redis-server the way production runs it: ACL users from deploy/redis/users.conf (no
default user), TLS only on TCP with client certificates, from a throwaway CA made with openssl
in a temp dir. A unix socket (same ACL, no TLS) lets the test itself set things up as `admin`.

Run in a lab netns (`ns=`) the TLS port is 127.0.0.1 there, so parallel runs never collide; in
the test's own netns the port is a free one picked by the kernel.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import netns
from lab.base import stop_process

ROOT = Path(__file__).resolve().parents[2]
ACL_TEMPLATE = ROOT / "deploy" / "redis" / "users.conf"
USERS = ("relay", "txr-1-7", "transceiver", "keys", "front")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path) -> None:
    """ca.crt; server.{crt,key} for IP 127.0.0.1; client.{crt,key}; all signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=edge-test-ca", cwd=d)  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=edge-test-{name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    for f in d.glob("*.key"):
        f.chmod(0o600)


def acl_text(passwords: dict[str, str]) -> str:
    """deploy/redis/users.conf with each #SHA256:<user> replaced as its comment says."""
    text = ACL_TEMPLATE.read_text()
    for user, pw in passwords.items():
        text = text.replace(f"#SHA256:{user} ", f"#{hashlib.sha256(pw.encode()).hexdigest()} ")
    assert " #SHA256:" not in text, "a user of users.conf has no password in the test"
    # The test's own superuser (not in the sample: operators make their own).
    return text + f"user admin on >{passwords['admin']} ~* &* +@all\n"


class SecureRedis:
    def __init__(self, ns: str | None = None) -> None:
        self.ns = ns
        self.dir = Path(tempfile.mkdtemp(prefix=f"edge-sredis-{os.getpid()}-"))
        self.sock = self.dir / "redis.sock"
        self.passwords = {u: secrets.token_urlsafe(18) for u in (*USERS, "admin")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 6390 if ns else _free_port()

    # Files a client is given (0600: nothing here may warn about loose modes).
    def password_file(self, user: str) -> str:
        path = self.dir / f"{user}.password"
        path.write_text(self.passwords[user] + "\n")
        path.chmod(0o600)
        return str(path)

    @property
    def tls_url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def tls_env(self, user: str) -> dict[str, str]:
        """The environment a component gets: user, password file, CA, client cert and key."""
        return {
            "REDIS_USERNAME": user,
            "REDIS_PASSWORD_FILE": self.password_file(user),
            "REDIS_CA_FILE": str(self.dir / "ca.crt"),
            "REDIS_CERT_FILE": str(self.dir / "client.crt"),
            "REDIS_KEY_FILE": str(self.dir / "client.key"),
        }

    def start(self, timeout: float = 15) -> SecureRedis:
        make_certs(self.dir)
        (self.dir / "users.conf").write_text(acl_text(self.passwords))
        d = self.dir
        conf = f"""
port 0
tls-port {self.port}
bind 127.0.0.1
tls-cert-file {d}/server.crt
tls-key-file {d}/server.key
tls-ca-cert-file {d}/ca.crt
tls-auth-clients yes
unixsocket {self.sock}
unixsocketperm 700
include {d}/users.conf
save ""
appendonly no
dir {d}
"""
        (d / "redis.conf").write_text(conf)
        argv = [shutil.which("redis-server") or "redis-server", str(d / "redis.conf")]
        if self.ns is not None:
            argv = netns.nsenter_argv(self.ns, argv)
        self.log = open(d / "redis.log", "wb")  # closed in close()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (d / "redis.log").read_text(errors="replace")
                self.close()
                raise RuntimeError(f"secure redis-server did not come up:\n{log}")
            time.sleep(0.05)
        return self

    def admin(self) -> Any:
        import redis

        return redis.Redis(
            unix_socket_path=str(self.sock),
            username="admin",
            password=self.passwords["admin"],
            socket_timeout=5,
        )

    def _ping(self) -> bool:
        import redis

        if not self.sock.exists():
            return False
        client = self.admin()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
        self.proc = None
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SecureRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
