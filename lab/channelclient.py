"""Data channel messages on a lab call: what an OpenAI-Realtime-style client sends, and its echo.

An aiortc client (lab.peer.ClientPeer) opens `oai-events` beside its microphone track, sends
JSON text messages of many sizes (1 B .. 64 KB) and binary ones, one at a time, and checks each
comes back identical while the echoed audio keeps arriving. The in-process transceiver tests,
the end-to-end tests (this module run in the lab's client namespace) and bench.datachannel use
it. As a command:

    python -m lab.channelclient [--api-keys FILE] http://198.18.2.2:8080 [--rounds N]

prints one JSON line: {"state", "local", "sent", "echoed", "bad", "rtp_before", "rtp_after",
"rtt_ms": {size: [ms, ...]}, "error"}; exits 1 unless every message came back identical.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
from aiortc import RTCDataChannel

from lab.peer import CallRefused, ClientPeer, add_api_keys_option, client_token, read_api_key

LABEL = "oai-events"  # what clients of the OpenAI Realtime API open
SIZES = (1, 2, 15, 100, 1000, 1199, 1200, 1201, 4096, 16384, 65535, 65536)
ECHO_TIMEOUT = 10.0


def json_of_size(n: int, seq: int = 0) -> str:
    """A JSON text of exactly `n` bytes (a number below 64 bytes, else an event object)."""
    if n < 64:
        return "1" * n
    head = f'{{"type":"test.event","seq":{seq},"pad":"'
    return head + "x" * (n - len(head) - 2) + '"}'


def standard_messages() -> list[str | bytes]:
    """JSON texts and binary messages of every size in SIZES, plus the two empty messages."""
    out: list[str | bytes] = ["", b""]
    for i, n in enumerate(SIZES):
        out.append(json_of_size(n, i))
        out.append(os.urandom(n))
    return out


class ChannelEcho:
    """Sends on an open channel and takes the echoes in order (the channel is reliable, ordered)."""

    def __init__(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        self.received: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.opened = asyncio.Event()
        if channel.readyState == "open":
            self.opened.set()
        channel.on("open", self.opened.set)
        channel.on("message", self.received.put_nowait)

    async def wait_open(self, timeout: float = ECHO_TIMEOUT) -> None:
        await asyncio.wait_for(self.opened.wait(), timeout)

    async def round_trip(self, data: str | bytes, timeout: float = ECHO_TIMEOUT) -> float:
        """Send `data`, await the next message: the round trip in ms; ValueError if it differs."""
        t0 = time.perf_counter()
        self.channel.send(data)
        back = await asyncio.wait_for(self.received.get(), timeout)
        ms = (time.perf_counter() - t0) * 1000
        if back != data or type(back) is not type(data):
            raise ValueError(
                f"sent {type(data).__name__} of {len(data)}, got {type(back).__name__} "
                f"of {len(back)}{' (different bytes)' if len(back) == len(data) else ''}"
            )
        return ms

    async def exchange(
        self, messages: Iterable[str | bytes], timeout: float = ECHO_TIMEOUT
    ) -> dict[int, list[float]]:
        """Round trips of every message, by size in bytes (UTF-8 for text)."""
        rtts: dict[int, list[float]] = {}
        for data in messages:
            size = len(data.encode() if isinstance(data, str) else data)
            rtts.setdefault(size, []).append(await self.round_trip(data, timeout))
        return rtts


async def run_call(url: str, rounds: int = 1, api_key: str | None = None) -> dict[str, Any]:
    """One call with `oai-events` and audio; every standard message `rounds` times. With
    `api_key` the call uses a single-use client token minted with it, as an application
    server would give its client."""
    peer = ClientPeer(audio="pcm", decode=False, data_channels=(LABEL,))
    echo = ChannelEcho(peer.channels[0])
    result: dict[str, Any] = {"state": "new", "sent": 0, "echoed": 0, "bad": 0, "error": None}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            try:
                token = await client_token(http, url, api_key) if api_key else None
                await peer.start(http, url, token=token)
                await echo.wait_open()
                await peer.wait_audio()  # the counts below start with audio flowing
                result["state"] = peer.pc.connectionState
                result["local"] = list(peer.nominated()[0])
                result["rtp_before"] = peer.rtp_in
                rtts: dict[int, list[float]] = {}
                for _ in range(rounds):
                    messages = standard_messages()
                    result["sent"] += len(messages)
                    for size, ms in (await echo.exchange(messages)).items():
                        rtts.setdefault(size, []).extend(ms)
                    result["echoed"] += len(messages)
                result["rtp_after"] = peer.rtp_in
                result["rtt_ms"] = {str(k): [round(v, 3) for v in vs] for k, vs in rtts.items()}
            except (
                ValueError,
                TimeoutError,
                ConnectionError,
                CallRefused,
                aiohttp.ClientError,
            ) as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
                result["bad"] += 1
            finally:
                await peer.hang_up(http)
    finally:
        await peer.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lab.channelclient", description=__doc__.splitlines()[0]
    )
    ap.add_argument("url", help="the transceiver's (or VIP's) HTTP base URL")
    ap.add_argument("--rounds", type=int, default=1, help="times to send every message (default 1)")
    add_api_keys_option(ap)
    args = ap.parse_args(argv)
    try:
        result = asyncio.run(run_call(args.url, args.rounds, read_api_key(args.api_keys)))
    except Exception as exc:  # one line for the caller, no traceback
        result = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    ok = result.get("error") is None and result.get("echoed") == result.get("sent") > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
