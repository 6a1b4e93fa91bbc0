"""One aiortc call to a transceiver, run as a process (e.g. inside a lab client namespace).

    python tests/transceiver/txr_lab_client.py http://198.18.2.2:8080 [frames]

Prints one JSON line: the call's outcome, what was heard, and the transceiver's metrics.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from txr_peers import call, dominant_hz, rms


async def main(url: str, frames: int) -> dict[str, object]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        client = await call(http, url, want_frames=frames)
        try:
            await client.wait_state("connected", timeout=20)
            await asyncio.wait_for(client.got_frames.wait(), 20)
            result: dict[str, object] = {
                "state": client.pc.connectionState,
                "frames": len(client.received),
                "hz": dominant_hz(client.received[-40:]),
                "rms": rms(client.received[-40:]),
                "remote": list(client.nominated_remote()),
                "local": list(client.nominated_local()),
                "answer": client.answer,
            }
            async with http.get(url + "/metrics") as resp:
                result["metrics"] = await resp.text()
            async with http.delete(url + (client.location or "")) as resp:
                result["delete"] = resp.status
            return result
        finally:
            await client.close()


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50))
    print(json.dumps(out))
