"""A bare asyncio UDP echo server: every datagram straight back to its sender.

The floor for bench.calls_scale: what any Python asyncio server on one UDP socket pays per
datagram (asyncio's own read path, one sendto), with no SRTP, no call state and no checks.

    python -m bench.bare_echo --listen 127.0.0.1:0     # prints "READY udp=HOST:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(host, port))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = transport.get_extra_info("sockname")
    print(f"READY udp={bound[0]}:{bound[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.bare_echo", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        ap.error(f"--listen wants HOST:PORT, got {args.listen!r}")
    asyncio.run(serve(host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
