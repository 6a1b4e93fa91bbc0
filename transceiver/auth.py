"""Who may place a call: API keys from a file and short-lived, single-use client tokens.

- **API keys** (`--api-keys FILE`, env TXR_API_KEYS_FILE): one key per line, `#` comments and
  blank lines ignored, at least 16 characters. They never appear on a command line. The
  application server holds one; it may POST /v1/calls itself or mint client tokens.
- **Client tokens** (POST /v1/tokens with an API key -> `{"value", "expires_at"}`, like OpenAI's
  ephemeral client secrets): `et1.<payload>.<mac>`, the payload a JSON object with the minting
  key's fingerprint (`kid`), the expiry (`exp`, Unix seconds) and a random id (`jti`); the MAC is
  HMAC-SHA256 under a key derived from that API key. Any transceiver that has the same key
  file verifies it without asking anyone; dropping a key from the file revokes its tokens too.
- **Single use**: a token's `jti` is spent when a call is placed with it. With `--redis` the
  spent set is in Redis (`<prefix>:tokens:<jti>`, SET NX with the token's remaining lifetime),
  so a token places one call in the whole cluster; without Redis it is this process's memory
  (one call per transceiver, documented in docs/security.md). While Redis cannot be
  asked, this process's memory stands in (counted in `RedisSpent.fallbacks`, logged): the
  edge keeps taking calls without Redis, as it keeps routing and media, and a token is then
  single-use per transceiver until Redis is back.

Every comparison of secret material is `hmac.compare_digest`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_PREFIX = "et1."
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 512
DEFAULT_TOKEN_TTL = 60.0  # seconds a minted client token is valid unless asked for less
MAX_TOKEN_TTL = 600.0
MAX_TOKEN_CHARS = 512
_DERIVE = b"webrtc-edge client token v1"
ENV_KEYS_FILE = "TXR_API_KEYS_FILE"


class AuthConfigError(ValueError):
    """The key file is missing, unreadable or holds a key that is not one."""


class Unauthorized(Exception):
    """The request carries no valid credential; `reason` goes into the 401 body and a counter."""

    def __init__(self, reason: str, label: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.label = label


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(key: str) -> str:
    """A key's public name: in tokens and logs instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_key_file(path: str | os.PathLike[str]) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"cannot read API keys file {path}: {exc}") from None
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not MIN_KEY_CHARS <= len(line) <= MAX_KEY_CHARS or not line.isprintable() or " " in line:
            # never print the line: it may be a key with a typo
            raise AuthConfigError(
                f"{path}:{number}: an API key is {MIN_KEY_CHARS}..{MAX_KEY_CHARS} printable "
                "characters without spaces"
            )
        if line.startswith(TOKEN_PREFIX):
            raise AuthConfigError(f"{path}:{number}: an API key may not start with {TOKEN_PREFIX}")
        keys.append(line)
    if not keys:
        raise AuthConfigError(f"API keys file {path} holds no key")
    return keys


def new_key() -> str:
    return "ek_" + secrets.token_urlsafe(32)


def write_key_file(path: str | os.PathLike[str]) -> str:
    """A key file with one fresh key, readable by its owner only (labs, demo, tests);
    returns the key. An existing file is kept and its first key returned."""
    p = Path(path)
    if p.exists():
        return read_key_file(p)[0]
    key = new_key()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# webrtc-edge API keys, one a line\n{key}\n")
    return key


def bearer(headers: object) -> str | None:
    """The credential of an `Authorization: Bearer ...` header, None when there is none."""
    value = headers.get("Authorization") if hasattr(headers, "get") else None  # type: ignore[union-attr]
    if not value:
        return None
    scheme, _, cred = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        return None
    return cred.strip()


# spend(jti, seconds left) -> True the first time, False if it was spent already
Spend = Callable[[str, float], Awaitable[bool]]


class LocalSpent:
    """Spent token ids in this process (no Redis): bounded by the tokens' lifetimes."""

    def __init__(self) -> None:
        self._spent: dict[str, float] = {}

    async def __call__(self, jti: str, ttl: float) -> bool:
        now = time.monotonic()
        if len(self._spent) > 1024:
            self._spent = {j: t for j, t in self._spent.items() if t > now}
        if self._spent.get(jti, 0.0) > now:
            return False
        self._spent[jti] = now + ttl
        return True


class RedisSpent:
    """Spent token ids in Redis: `SET <prefix>:tokens:<jti> 1 NX PX <ms left>`."""

    def __init__(self, url: str, prefix: str, timeout: float) -> None:
        import redis  # here, not at the top: lab.gstclient imports this module without redis

        from wire.redisconn import connect

        self._errors = (redis.RedisError, OSError)
        self._local = LocalSpent()  # while Redis cannot be asked
        self.fallbacks = 0
        # No client-side retry: a POST waits at most one timeout, then single use is local.
        self._redis = connect(url, timeout=timeout, retries=False)
        self._prefix = prefix

    async def __call__(self, jti: str, ttl: float) -> bool:
        ms = max(1, int(ttl * 1000))
        key = f"{self._prefix}:tokens:{jti}"
        try:
            fresh = bool(await asyncio.to_thread(self._redis.set, key, b"1", nx=True, px=ms))
        except self._errors as exc:
            self.fallbacks += 1
            log.warning("client tokens: Redis unreachable (%s), single use checked locally", exc)
            return await self._local(jti, ttl)
        # spent here during an outage, seen by Redis as new: still spent
        return fresh and await self._local(jti, ttl)

    def close(self) -> None:
        self._redis.close()


@dataclass(frozen=True)
class Identity:
    """Who a request is: an API key (by fingerprint) or a client token minted with one."""

    kid: str
    kind: str  # "api_key" | "token" | "none" (--no-auth)


class Authenticator:
    """Checks bearer credentials; `keys=None` is --no-auth (everything passes)."""

    def __init__(
        self,
        keys: list[str] | None,
        *,
        spend: Spend | None = None,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = keys is not None
        self._keys = {fingerprint(k): k.encode() for k in keys or []}
        self._mac_keys = {
            kid: hmac.new(k, _DERIVE, hashlib.sha256).digest() for kid, k in self._keys.items()
        }
        self.spend: Spend = spend or LocalSpent()
        self.token_ttl = min(token_ttl, MAX_TOKEN_TTL)
        self.clock = clock

    def api_key(self, cred: str | None) -> Identity:
        """An API key (not a token); raises Unauthorized."""
        if not self.enabled:
            return Identity("", "none")
        if cred is None:
            raise Unauthorized("an API key is required (Authorization: Bearer <key>)", "missing")
        found = None
        given = cred.encode()
        for kid, key in self._keys.items():  # every key compared: no early exit on a match
            if hmac.compare_digest(given, key):
                found = kid
        if found is None:
            raise Unauthorized("unknown API key", "bad_key")
        return Identity(found, "api_key")

    def mint(self, ttl: float | None = None, *, kid: str) -> tuple[str, float]:
        """A client token valid for ttl seconds (at most the configured TTL): (value, expiry)."""
        ttl = self.token_ttl if ttl is None else min(ttl, self.token_ttl)
        exp = int(self.clock() + ttl)
        payload = {"kid": kid, "exp": exp, "jti": secrets.token_urlsafe(16)}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        mac = hmac.new(self._mac_keys[kid], body.encode(), hashlib.sha256).digest()
        return f"{TOKEN_PREFIX}{body}.{_b64(mac)}", float(exp)

    def _token(self, cred: str) -> tuple[str, str, float]:
        """(kid, jti, seconds left) of a token whose MAC verifies; raises Unauthorized."""
        bad = Unauthorized("invalid client token", "bad_token")
        if len(cred) > MAX_TOKEN_CHARS:
            raise bad
        body, dot, mac_text = cred[len(TOKEN_PREFIX) :].partition(".")
        if not dot:
            raise bad
        try:
            payload = json.loads(_unb64(body))
            mac = _unb64(mac_text)
            kid, exp, jti = payload["kid"], payload["exp"], payload["jti"]
        except (ValueError, TypeError, KeyError):
            raise bad from None
        if not (isinstance(kid, str) and isinstance(jti, str) and isinstance(exp, int)):
            raise bad
        mac_key = self._mac_keys.get(kid)
        if mac_key is None:
            raise bad
        want = hmac.new(mac_key, body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, mac):
            raise bad
        left = exp - self.clock()
        if left <= 0:
            raise Unauthorized("client token expired", "expired")
        return kid, jti, left

    def verify(self, cred: str | None) -> Identity:
        """Who a credential is, without spending a token (OPTIONS before the POST that spends
        it: transceiver/turn.py); raises Unauthorized."""
        if not self.enabled:
            return Identity("", "none")
        if cred is None or not cred.startswith(TOKEN_PREFIX):
            return self.api_key(cred)
        kid, _jti, _left = self._token(cred)
        return Identity(kid, "token")

    async def caller(self, cred: str | None) -> Identity:
        """Who may place a call: an API key, or a client token (spent by this call)."""
        if not self.enabled:
            return Identity("", "none")
        if cred is None:
            raise Unauthorized("a credential is required (Authorization: Bearer ...)", "missing")
        if not cred.startswith(TOKEN_PREFIX):
            return self.api_key(cred)
        kid, jti, left = self._token(cred)
        if not await self.spend(jti, left + 1.0):
            raise Unauthorized("client token already used", "reused")
        return Identity(kid, "token")


def load(
    keys_file: str | None, *, no_auth: bool, spend: Spend | None, token_ttl: float
) -> Authenticator:
    """The process's authenticator from its settings; raises AuthConfigError."""
    if no_auth:
        if keys_file:
            raise AuthConfigError("--no-auth and --api-keys exclude each other")
        log.warning(
            "*** --no-auth: ANYONE who reaches the HTTP port can place calls; local development "
            "only, never on a network ***"
        )
        return Authenticator(None)
    if not keys_file:
        raise AuthConfigError(
            f"signaling needs API keys: give --api-keys FILE (or env {ENV_KEYS_FILE}); "
            "--no-auth for local development only"
        )
    keys = read_key_file(keys_file)
    log.info(
        "signaling: %d API key(s) from %s: %s",
        len(keys),
        keys_file,
        ", ".join(fingerprint(k) for k in keys),
    )
    return Authenticator(keys, spend=spend, token_ttl=token_ttl)
