"""The private aiortc attributes a client peer touches (to move into the project's aiortc seam).

- the receiver's RTP arrival hook (`_handle_rtp_packet`): count echoes before the jitter buffer;
- its decoder queue (`_RTCRtpReceiver__decoder_queue`): swap in a sink so nothing is decoded;
- the ICE connection's nominated pair (`_nominated`): which address pair the call uses;
- the sender's packet count (`_RTCRtpSender__packet_count`): what we sent, without getStats.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_PACKET_COUNT = "_RTCRtpSender__packet_count"


def on_rtp_arrival(receiver: RTCRtpReceiver, arrived: Callable[[], None]) -> None:
    """Call `arrived()` for every RTP packet the receiver gets, then let aiortc handle it."""
    inner = receiver._handle_rtp_packet

    async def counted(packet: Any, arrival_time_ms: int) -> None:
        arrived()
        await inner(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = counted  # type: ignore[method-assign]


class _NoDecode:
    """Stands in for the receiver's decoder queue: frames are dropped, not decoded. The
    decoder thread waits on get() until the receiver stops and sends it the None sentinel."""

    def __init__(self) -> None:
        self._sentinel: queue.Queue[None] = queue.Queue()

    def put(self, item: object) -> None:
        if item is None:
            self._sentinel.put(None)

    def get(self) -> None:
        return self._sentinel.get()


def skip_decoding(receiver: RTCRtpReceiver) -> bool:
    """Swap in `_NoDecode` before the receiver starts; False if this aiortc has no such queue."""
    if not isinstance(getattr(receiver, _DECODER_QUEUE, None), queue.Queue):
        return False
    setattr(receiver, _DECODER_QUEUE, _NoDecode())
    return True


def nominated_pair(pc: RTCPeerConnection) -> tuple[tuple[str, int], tuple[str, int]]:
    """(local address, remote address) of the client's nominated ICE pair."""
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    pair = connection._nominated[1]
    return (pair.local_candidate.host, pair.local_candidate.port), tuple(pair.remote_addr)


def sender_packet_count(sender: RTCRtpSender) -> int | None:
    return getattr(sender, _PACKET_COUNT, None)


def host_addresses_only(addr: str) -> None:
    """Make aioice gather host candidates on one address only (a client-side load generator:
    fewer candidate pairs, less client work)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [addr]  # type: ignore[assignment]
