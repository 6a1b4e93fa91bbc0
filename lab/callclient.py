"""Standard aiortc WebRTC calls to transceivers, driven over stdin/stdout (run in a client netns).

    python -m lab.callclient [--api-keys FILE] [--header "NAME: VALUE" ...] URL [URL ...]
    python -m lab.callclient [--api-keys FILE] --once URL [FRAMES]

With an API keys file (--api-keys, or env TXR_API_KEYS_FILE) the client does what an
application server and a browser do: it mints a single-use client token with the file's first
key (POST /v1/tokens) and places the call with that token.

One call per URL (lab.peer.ClientPeer: a WHIP-style POST of the offer; the answer's only
candidates are the VIPs). It prints one JSON line per event and reads commands, one per line:

    {"event": "call", "call": i, "state": "connected", "local": [a, p], "remote": [a, p],
     "setup_ms": ...}                               each call, once connected (or "failed")
    stats          -> {"event": "stats", "calls": [{"call", "sent", "rtp", "max_gap_ms",
                       "since_ms", "state"}]}   rtp: echoed RTP packets received on arrival
    call URL       -> a new call (a "call" event follows)
    rtt I N        -> {"event": "rtt", "call": I, "ms": [...]}  N authenticated STUN Binding
                      round trips on call I's credentials, from a fresh port, to the VIP
    rttdirect I N ADDR:PORT -> the same, sent straight to a transceiver's UDP socket
    rttfrom I N ADDR -> the same to the VIP, from another local address (another route)
    setup URL      -> {"event": "setup", "answer_ms", "ice_ms", "dtls_ms", "greeting_ms",
                      "echo_ms"}: one call on the warm HTTP connection, timed from the POST to
                      the answer, ICE completed, DTLS connected, the first packet of the
                      server's own audio (a greet-echo app) and the first echo; then hung up
    restart I HOST -> {"event": "restart", "call": I, "state", "ms", "local", "remote", "ufrag",
                      "location", "dtls"}  the client's network changed to HOST (its old
                      address gone): ICE restart by PATCH onto HOST (lab.peer.restart_ice);
                      ms is PATCH -> connected; call I's max_gap_ms starts over, so the next
                      stats show the gap across the restart
    hangup         -> DELETE every call, final "stats", exit 0

`--once` places one call, waits for FRAMES decoded frames of echo (default 50), hangs up and
prints one JSON document: state, frames, hz and rms of the echo (lab.tone), the nominated
local/remote addresses, the answer, the server's /metrics text and the DELETE status.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
import time
from typing import Any

import aiohttp
from aioice import stun

from lab.peer import ClientPeer, client_token, read_api_key
from lab.tone import dominant_hz, rms
from wire.addr import parse_addr_port


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


API_KEY: str | None = None  # set from --api-keys / TXR_API_KEYS_FILE at start
# --header "NAME: VALUE" (repeatable), on every offer POST: e.g. the location header a fleet's
# front places calls by (docs/front.md), as a CDN in front of it would set it.
HEADERS: dict[str, str] = {}


async def token_for(http: aiohttp.ClientSession, url: str) -> str | None:
    return await client_token(http, url, API_KEY) if API_KEY else None


class Client:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.calls: list[ClientPeer] = []

    async def place(self, url: str) -> None:
        index = len(self.calls)
        peer = ClientPeer()
        self.calls.append(peer)
        t0 = time.monotonic()
        try:
            token = await token_for(self.http, url)
            await peer.start(self.http, url, headers=HEADERS, token=token)
            local, remote = peer.nominated()
            emit({
                "event": "call", "call": index, "state": "connected", "url": url,
                "local": list(local), "remote": list(remote),
                "setup_ms": round((time.monotonic() - t0) * 1000, 1),
                "ufrag": peer.credentials()[0], "location": peer.location,
            })  # fmt: skip
        except Exception as exc:  # reported, not raised: the other calls go on
            emit({"event": "call", "call": index, "state": "failed", "error": str(exc)})

    def stats(self) -> list[dict[str, Any]]:
        return [{"call": i, **peer.stats()} for i, peer in enumerate(self.calls)]

    async def rtt(
        self, index: int, n: int, dest: tuple[str, int] | None, source: str | None = None
    ) -> list[float]:
        """n authenticated Binding requests for call `index` from a fresh socket; the
        transceiver answers them (they do not carry USE-CANDIDATE, so nothing moves).

        The socket answers the transceiver's own check, as an ICE agent does: until a path has
        answered one, the transceiver answers it only a few times a second (docs/security.md).
        """
        peer = self.calls[index]
        s_ufrag, s_pwd, c_ufrag = peer.credentials()
        c_pwd = peer.client_password().encode()
        (local, _), remote = peer.nominated()
        dest = dest or remote
        out: list[float] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source or local, 0))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            for _ in range(n):
                req = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
                req.attributes["USERNAME"] = f"{s_ufrag}:{c_ufrag}"
                req.attributes["PRIORITY"] = 1
                req.attributes["ICE-CONTROLLING"] = secrets.randbits(63)
                req.add_message_integrity(s_pwd.encode())
                req.add_fingerprint()
                t0 = time.perf_counter()
                await loop.sock_sendto(sock, bytes(req), dest)
                try:
                    while True:
                        data, src = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 1.0)
                        msg = stun.parse_message(data)
                        if msg.message_class == stun.Class.REQUEST:
                            await loop.sock_sendto(sock, _check_answer(msg, src, c_pwd), src)
                        elif msg.transaction_id == req.transaction_id:
                            break
                except TimeoutError:
                    continue  # a lost probe: not a sample
                out.append(round((time.perf_counter() - t0) * 1000, 3))
        return out

    async def restart(self, index: int, host: str) -> dict[str, Any]:
        """ICE restart of call `index` onto `host` after a network change (reported, not
        raised: the other calls go on)."""
        peer = self.calls[index]
        # Connections of the old network are dead (their address is gone): as an HTTP stack
        # does on a network change, drop them rather than wait for TCP to time them out.
        await self.http.close()
        self.http = aiohttp.ClientSession(timeout=self.http.timeout)
        peer.max_gap = 0.0  # the next arrival's gap reaches back to the last one before the move
        try:
            ms = await peer.restart_ice(self.http, host)
            local, remote = peer.nominated()
        except Exception as exc:
            return {"event": "restart", "call": index, "state": "failed", "error": str(exc)}
        dtls = peer.pc.getTransceivers()[0].receiver.transport
        return {
            "event": "restart", "call": index, "state": peer.pc.connectionState,
            "ms": round(ms, 1), "local": list(local), "remote": list(remote),
            "ufrag": peer.credentials()[0], "location": peer.location, "dtls": dtls.state,
        }  # fmt: skip

    async def hangup(self) -> None:
        for peer in self.calls:
            await peer.hang_up(self.http)


async def timed_setup(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """One call timed phase by phase (see the module doc), on `http`'s warm connection."""
    async with http.get(url + "/healthz") as resp:  # the connection is open before the POST
        await resp.read()
    token = await token_for(http, url)
    peer = ClientPeer(audio="opus", decode=False)
    try:
        await peer.start(http, url, token=token)
        await asyncio.wait_for(peer.echoed.wait(), 10)
        doc = {
            "event": "setup",
            "answer_ms": peer.answer_ms,
            "ice_ms": peer.ice_ms,
            "dtls_ms": peer.setup_ms,
            "greeting_ms": peer.greeting_ms,
            "echo_ms": peer.echo_ms,
        }
        await peer.hang_up(http)
        return doc
    finally:
        await peer.close()


def _check_answer(check: stun.Message, src: tuple[str, int], password: bytes) -> bytes:
    """The success response to the transceiver's connectivity check that came from `src`."""
    answer = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, check.transaction_id)
    answer.attributes["XOR-MAPPED-ADDRESS"] = src
    answer.add_message_integrity(password)
    answer.add_fingerprint()
    return bytes(answer)


async def once(url: str, frames: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        peer = ClientPeer(want_frames=frames)
        try:
            await peer.start(http, url, token=await token_for(http, url))
            await asyncio.wait_for(peer.got_frames.wait(), 20)
            local, remote = peer.nominated()
            tail = peer.frames[-40:]
            result: dict[str, Any] = {
                "state": peer.pc.connectionState,
                "frames": len(peer.frames),
                "hz": dominant_hz(tail),
                "rms": rms(tail),
                "local": list(local),
                "remote": list(remote),
                "answer": peer.answer_sdp,
            }
            async with http.get(url + "/metrics") as resp:
                result["metrics"] = await resp.text()
            result["delete"] = await peer.hang_up(http)
            return result
        finally:
            await peer.close()


async def main(urls: list[str]) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        client = Client(http)
        for url in urls:
            await client.place(url)
        try:
            while line := (await reader.readline()).decode():
                cmd = line.split()
                if not cmd:
                    continue
                if cmd[0] == "stats":
                    emit({"event": "stats", "calls": client.stats()})
                elif cmd[0] == "call" and len(cmd) == 2:
                    await client.place(cmd[1])
                elif cmd[0] in ("rtt", "rttdirect", "rttfrom") and len(cmd) >= 3:
                    dest = parse_addr_port(cmd[3]) if cmd[0] == "rttdirect" else None
                    source = cmd[3] if cmd[0] == "rttfrom" else None
                    ms = await client.rtt(int(cmd[1]), int(cmd[2]), dest, source)
                    emit({"event": "rtt", "call": int(cmd[1]), "ms": ms})
                elif cmd[0] == "setup" and len(cmd) == 2:
                    try:
                        emit(await timed_setup(http, cmd[1]))
                    except (OSError, TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
                        emit({"event": "setup", "error": str(exc) or type(exc).__name__})
                elif cmd[0] == "restart" and len(cmd) == 3:
                    emit(await client.restart(int(cmd[1]), cmd[2]))
                elif cmd[0] == "hangup":
                    break
                else:
                    emit({"event": "error", "error": f"unknown command {line.strip()!r}"})
        finally:
            stats = client.stats()
            await client.hangup()
            await client.http.close()  # a session made by a restart (the first closes below)
            emit({"event": "stats", "final": True, "calls": stats})
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    keys_file = os.environ.get("TXR_API_KEYS_FILE")
    if args[:1] == ["--api-keys"] and len(args) >= 2:
        keys_file, args = args[1], args[2:]
    while args[:1] == ["--header"] and len(args) >= 2:
        name, _, value = args[1].partition(":")
        HEADERS[name.strip()] = value.strip()
        args = args[2:]
    API_KEY = read_api_key(keys_file)
    if args[:1] == ["--once"] and len(args) in (2, 3):
        frames = int(args[2]) if len(args) == 3 else 50
        print(json.dumps(asyncio.run(once(args[1], frames))))
        sys.exit(0)
    sys.exit(asyncio.run(main(args)))
