"""TURN for clients whose network blocks UDP: short-lived credentials and their Link headers.

The transceiver never relays anything itself. A TURN server beside it (coturn, docs/operations.md)
shares a secret with it (coturn `use-auth-secret` + `static-auth-secret`); signaling hands each
client credentials minted from that secret (the TURN REST API scheme, draft-uberti-behave-turn-rest,
as coturn implements it):

    username = "<expiry, Unix seconds>:<call or random id>"
    password = base64(HMAC-SHA1(secret, username))

so the TURN server checks them without asking anyone, and they stop working at the expiry. They
are announced to WHIP clients as `Link: <turns:...>; rel="ice-server"; username=...; credential=...;
credential-type="password"` (RFC 9725 §4.4), on `OPTIONS /v1/calls` (before the client gathers)
and on the 201 answer. The secret itself never leaves this process: it is read from a file or an
environment variable, never from the command line (/proc/PID/cmdline is public).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_SECRET = "TXR_TURN_SECRET"
ENV_SECRET_FILE = "TXR_TURN_SECRET_FILE"
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 1024
# Seconds a credential opens new allocations; one made in time lives on past it (coturn checks
# the expiry on Allocate only), but an ICE restart allocates again (docs/transceiver.md).
DEFAULT_TTL = 4 * 3600.0
MIN_TTL = 60.0
MAX_TTL = 24 * 3600.0
MAX_URLS = 8

# RFC 7065: turn(s):host[:port][?transport=udp|tcp]. Hosts are DNS names or IPv4 (what coturn and
# browsers accept here); nothing that could break out of a Link header's <...>.
_URL = re.compile(
    r"^(?P<scheme>turns?):(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?$"
)


class TurnConfigError(ValueError):
    """A TURN URL or secret that cannot be used; the message says which and why."""


def parse_url(text: str) -> str:
    """A TURN URL as given, checked (RFC 7065); raises TurnConfigError."""
    m = _URL.match(text.strip())
    if m is None:
        raise TurnConfigError(
            f"{text!r} is not a TURN URL: turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST..."
        )
    if m["port"] is not None and not 1 <= int(m["port"]) <= 65535:
        raise TurnConfigError(f"{text!r}: port {m['port']} is not in 1..65535")
    if m["scheme"] == "turns" and m["transport"] == "udp":
        raise TurnConfigError(f"{text!r}: turns (TLS) runs over TCP, not transport=udp")
    return m.group(0)


def read_secret(path: str | os.PathLike[str] | None, env: dict[str, str] | None = None) -> bytes:
    """The shared secret from a file (`--turn-secret-file`, env TXR_TURN_SECRET_FILE), else from
    env TXR_TURN_SECRET. Surrounding whitespace (a trailing newline) is not part of it."""
    env = dict(os.environ) if env is None else env
    if path is None:
        path = env.get(ENV_SECRET_FILE) or None
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise TurnConfigError(f"cannot read the TURN secret file {path}: {exc}") from None
        where = str(path)
    elif ENV_SECRET in env:
        raw, where = env[ENV_SECRET].encode(), f"env {ENV_SECRET}"
    else:
        raise TurnConfigError(
            f"--turn-url needs the shared secret: --turn-secret-file PATH (or env "
            f"{ENV_SECRET_FILE}, or env {ENV_SECRET})"
        )
    secret = raw.strip()
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise TurnConfigError(
            f"the TURN secret in {where} must be {MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} bytes, "
            f"got {len(secret)}"
        )
    if any(c in secret for c in b"\r\n\0"):
        # coturn reads it from a config line: it could never match there
        raise TurnConfigError(f"the TURN secret in {where} spans lines or holds a NUL byte")
    return secret


def password(secret: bytes, username: str) -> str:
    """The TURN REST API password of `username`: base64(HMAC-SHA1(secret, username))."""
    mac = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Credential:
    username: str
    password: str
    expires_at: int


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string (what we put in is base64, digits, ':' and id characters)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class TurnServers:
    """The TURN URLs this transceiver announces and the secret their credentials are minted with."""

    urls: Sequence[str]
    secret: bytes = field(repr=False)
    ttl: float = DEFAULT_TTL
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.urls:
            raise TurnConfigError("no TURN URL given")
        if len(self.urls) > MAX_URLS:
            raise TurnConfigError(f"at most {MAX_URLS} TURN URLs")
        self.urls = [parse_url(u) for u in self.urls]
        if not MIN_SECRET_BYTES <= len(self.secret) <= MAX_SECRET_BYTES:
            raise TurnConfigError(f"the TURN secret must be {MIN_SECRET_BYTES}.. bytes")
        if not MIN_TTL <= self.ttl <= MAX_TTL:
            raise TurnConfigError(f"the TURN credential lifetime must be {MIN_TTL}..{MAX_TTL} s")

    def mint(self, label: str | None = None) -> Credential:
        """A credential valid for `ttl` seconds; `label` (a call id) names it in coturn's log."""
        label = label if label and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", label) else None
        expires_at = int(self.clock() + self.ttl)
        username = f"{expires_at}:{label or secrets.token_urlsafe(12)}"
        return Credential(username, password(self.secret, username), expires_at)

    def link_headers(self, label: str | None = None) -> list[str]:
        """One `Link` header value per URL (RFC 9725 §4.4), all with one fresh credential."""
        cred = self.mint(label)
        return [
            f'<{url}>; rel="ice-server"; username={_quoted(cred.username)}; '
            f'credential={_quoted(cred.password)}; credential-type="password"'
            for url in self.urls
        ]
