"""How every component reaches the registry's Redis: one client factory and one backoff policy.

relayctl (its control loop, event listener and slow path) and transceivers connect the same way,
so a setting (a timeout, credentials, TLS) has one home, and every loop that retries Redis waits
the same way between attempts.

Credentials never need a command line (/proc/PID/cmdline is world-readable). `resolve_url`
builds the one URL every client is made from, out of (first found wins):
  the URL        --redis URL, else the file --redis-url-file / $REDIS_URL_FILE (first line),
                 else $REDIS_URL
  the password   the URL's own, else the file $REDIS_PASSWORD_FILE (--redis-password-file),
                 else $REDIS_PASSWORD; the ACL user: the URL's, else $REDIS_USERNAME
  TLS (rediss://) the URL's query (ssl_ca_certs=, ssl_certfile=, ssl_keyfile=), else
                 $REDIS_CA_FILE, $REDIS_CERT_FILE, $REDIS_KEY_FILE
The server certificate is always verified (redis-py's default, ssl_cert_reqs=required).
docs/security.md has the ACL each component needs.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

SCHEMES = ("redis", "rediss", "unix")
# TLS settings from the environment -> redis-py's URL query parameters.
TLS_ENV = {
    "REDIS_CA_FILE": "ssl_ca_certs",
    "REDIS_CERT_FILE": "ssl_certfile",
    "REDIS_KEY_FILE": "ssl_keyfile",
}


class RedisConfigError(ValueError):
    """A Redis URL, password or TLS setting that cannot be used; the message says which."""


def read_secret_file(path: str | Path, what: str) -> tuple[str, list[str]]:
    """The first line of a secret file, stripped, and warnings (a file group/others can read).

    RedisConfigError when it is missing, unreadable or empty.
    """
    p = Path(path)
    try:
        text = p.read_text()
        mode = p.stat().st_mode
    except OSError as exc:
        raise RedisConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RedisConfigError(f"{what} {path}: not text") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise RedisConfigError(f"{what} {path}: empty")
    warnings = []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{what} {path} is readable by group or others (mode {stat.S_IMODE(mode):o}): "
            "chmod 600 it"
        )
    return lines[0].strip(), warnings


def _read_password(path: str) -> tuple[str | None, list[str]]:
    """A password file; an empty one (a Secret created before Redis had a password) means no
    password, said in a warning. Missing or unreadable: RedisConfigError."""
    try:
        return read_secret_file(path, "Redis password file")
    except RedisConfigError as exc:
        if not str(exc).endswith(": empty"):
            raise
        return None, [f"Redis password file {path} is empty: connecting without a password"]


def resolve_url(
    url: str | None = None,
    *,
    url_file: str | None = None,
    password_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, list[str]]:
    """(the full Redis URL, warnings), or (None, []) when nothing names a Redis.

    RedisConfigError for an unusable URL, password file or TLS file. The URL returned holds the
    password: keep it in memory and log it only through `redact`.
    """
    env = os.environ if environ is None else environ
    warnings: list[str] = []
    url_file = url_file or env.get("REDIS_URL_FILE") or None
    if not url and url_file:
        url, warnings = read_secret_file(url_file, "Redis URL file")
    url = url or env.get("REDIS_URL") or None
    if not url:
        return None, []
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise RedisConfigError(f"{redact(url)}: expected redis://, rediss:// (TLS) or unix:// URL")
    netloc = parts.netloc
    user, password = parts.username, parts.password
    password_file = password_file or env.get("REDIS_PASSWORD_FILE") or None
    if password is None:
        if password_file:
            password, more = _read_password(password_file)
            warnings += more
        elif env.get("REDIS_PASSWORD"):
            password = env["REDIS_PASSWORD"]
        # A user means nothing without a password (and AUTH user "" fails on a Redis without
        # ACLs): manifests may set REDIS_USERNAME before the Secret holds a password.
        if user is None and password is not None and env.get("REDIS_USERNAME"):
            user = env["REDIS_USERNAME"]
    else:
        password = unquote(password)
    if user is not None:
        user = unquote(user)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme == "rediss":
        for var, name in TLS_ENV.items():
            if name not in query and env.get(var):
                query[name] = env[var]
        for name in TLS_ENV.values():
            if name in query and not os.access(query[name], os.R_OK):
                raise RedisConfigError(f"{name} {query[name]}: cannot read it")
    elif any(name in query for name in TLS_ENV.values()):
        raise RedisConfigError(f"{redact(url)}: TLS files given for a plain-text URL (rediss://?)")
    host = netloc.rpartition("@")[2]
    if password is not None or user is not None:
        cred = quote(user or "", safe="")
        if password is not None:
            cred += ":" + quote(password, safe="")
        netloc = f"{cred}@{host}"
    # Written out by hand: urlunsplit drops the // of unix:///path.
    full = f"{parts.scheme}://{netloc}{parts.path}"
    return (f"{full}?{urlencode(query)}" if query else full), warnings


def connect(url: str, *, timeout: float, retries: bool = True) -> Any:
    """A redis.Redis for `url` with connect and I/O timeouts of `timeout` seconds.

    retries=False: no client-side retry, for loops that have their own backoff and must never
    block for longer than one timeout. ValueError for a malformed URL (redis-py's parser).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if not retries:
        kwargs["retry"] = Retry(NoBackoff(), 0)
    return redis.Redis.from_url(url, **kwargs)


def redact(url: str) -> str:
    """The URL without credentials or query (redis://user:secret@host/0?ssl_ca_certs=... ->
    redis://***@host/0): for logs and errors."""
    url = url.partition("?")[0]
    head, at, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if at else url


class Backoff:
    """Exponential backoff between attempts at something that failed: first, 2x first, ... cap.

    `ready()` says whether the next attempt is due; `failed()` returns the new delay;
    `succeeded()` resets it.
    """

    def __init__(
        self, first: float = 0.25, cap: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.first = first
        self.cap = cap
        self.clock = clock
        self.delay = 0.0
        self.until = 0.0

    @property
    def failing(self) -> bool:
        return self.delay > 0

    def ready(self) -> bool:
        return self.clock() >= self.until

    def remaining(self) -> float:
        """Seconds until the next attempt is due (0 when it is)."""
        return max(0.0, self.until - self.clock())

    def failed(self) -> float:
        self.delay = min(self.cap, self.delay * 2) if self.delay else self.first
        self.until = self.clock() + self.delay
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
        self.until = 0.0
