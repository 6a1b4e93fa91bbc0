"""The Opus media fast path: SRTP in and out of the socket mux, no aiortc per-packet code.

Once a call's DTLS is connected, aiortc's per-packet Python (RTCDtlsTransport._recv_next ->
RtpPacket.parse -> RtpRouter -> RTCRtpReceiver jitter buffer and stats, and on the way out
track.recv -> encoder.pack -> RtpPacket.serialize -> protect, each hop an awaited coroutine
and a queue) costs far more than the media itself. For apps that take Opus none of it is
needed, so for those calls:

- inbound SRTP (not SRTCP) is taken by the mux straight from the datagram, unprotected,
  its RTP header parsed here and the payload handed to the app (`Call._deliver`);
- what the app sends goes out at once as RTP built here from a header template (aiortc's own
  serializer made it once: SSRC, payload type and the negotiated mid extension), protected,
  and written to the call's selected path;
- aiortc keeps ICE-lite, DTLS, SDP and RTCP: DTLS records and SRTCP still reach it, and its
  sender's RTCP loop keeps sending SR/SDES about once a second, with the counters fed from
  here (`_publish_sender_stats`).

Keys: aiortc derives them in `RTCDtlsTransport._setup_srtp()` (RFC 5764 exporter ->
`pylibsrtp.Policy` -> `Session`) right before it reports "connected"; they are reached, like
every aiortc internal, through transceiver/aiortc_seam.py. We use those very Session objects
rather than building a second pair from the same key material: libsrtp keeps per-SSRC replay
windows and rollover counters in the session, and aiortc still protects its RTCP (same SSRC)
with the transmit session, so one session per direction is the only arrangement in which both
users see one consistent crypto context.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable

import pylibsrtp
from aiortc import RTCDtlsTransport, RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.rtp import RtpPacket

from transceiver import aiortc_seam
from transceiver.app import OPUS_FRAME_TICKS, Call, OpusFrame

_HEAD = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
STATS_EVERY = 16  # packets between updates of the SR counters aiortc's sender reports


def is_rtp(data: bytes) -> bool:
    """RTP, not RTCP: first byte 128..191 (version 2, RFC 7983), and not where RTCP's packet
    types 192..223 sit in the second byte (RFC 5761 §4). (paths.Route.received inlines the
    second half: the mux has checked the first byte by then.)"""
    return len(data) > 1 and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> tuple[int, int, int, bytes] | None:
    """(payload type, sequence, timestamp, payload) of a plain RTP packet; None if malformed."""
    if len(data) < 12:
        return None
    b0, b1, seq, ts, _ssrc = _HEAD.unpack_from(data)
    if b0 >> 6 != 2:
        return None
    start = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 4-byte header + length words (RFC 3550 §5.3.1)
        if len(data) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data)
    if b0 & 0x20:  # padding: the last byte counts the padding bytes
        end -= data[-1]
    if end < start:
        return None
    return b1 & 0x7F, seq, ts, data[start:end]


class OpusFastPath:
    """One call's RTP in both directions, between its SRTP sessions and its app `Call`."""

    def __init__(
        self,
        *,
        dtls: RTCDtlsTransport,
        sender: RTCRtpSender,
        call: Call,
        payload_types: set[int],
        send_payload_type: int,
        write: Callable[[bytes], None],
    ) -> None:
        rx, tx = aiortc_seam.srtp_sessions(dtls)
        self._rx = aiortc_seam.FastSrtp(rx)
        self._tx = aiortc_seam.FastSrtp(tx)
        self._call = call
        self._sender = sender
        self._payload_types = frozenset(payload_types)
        self._write = write
        self._pt = send_payload_type
        self._ssrc = aiortc_seam.sender_ssrc(sender)
        template = self._header_template(dtls, sender)
        self._b0 = template[0]  # version, and the X bit when an extension is negotiated
        self._extension = template[12:]  # the header extension block (mid), constant
        self._seq = secrets.randbelow(1 << 16)
        self._ts_origin = secrets.randbelow(1 << 32)
        self._next_ts = 0
        self._first = True
        self.rtp_in = 0  # packets delivered to the app by the fast path
        self.rtp_out = 0  # packets the fast path built and sent
        self.octets_out = 0
        self.rx_errors = 0  # SRTP authentication/replay failures and malformed RTP
        self.tx_errors = 0  # frames that could not be protected (too big), not sent

    def _header_template(self, dtls: RTCDtlsTransport, sender: RTCRtpSender) -> bytes:
        # aiortc's serializer lays out the header extensions exactly as negotiated (mid only
        # for audio); send() reuses its first byte and extension block, which never change.
        packet = RtpPacket(payload_type=self._pt, sequence_number=0, timestamp=0)
        packet.ssrc = self._ssrc
        packet.extensions.mid = aiortc_seam.sender_mid(sender)
        return packet.serialize(aiortc_seam.header_extensions_map(dtls))

    # --- inbound, called by the mux for SRTP (not SRTCP) on the call's path -----------------

    def rtp_received(self, data: bytes) -> bool:
        """Deliver one SRTP packet; True if it authenticated (the path may then move to it)."""
        try:
            plain = self._rx.unprotect(data)
        except (pylibsrtp.Error, ValueError):  # forged, replayed, oversized: drop it
            self.rx_errors += 1
            return False
        parsed = parse_rtp(plain)
        if parsed is None:
            self.rx_errors += 1
            return True  # authentic, if useless
        pt, seq, ts, payload = parsed
        if pt in self._payload_types and payload:
            self.rtp_in += 1
            self._call._deliver(OpusFrame(payload, ts, sequence=seq))
        return True

    # --- outbound, installed as the call's sink: runs inside the app's call.send() -----------

    def send(self, frame: OpusFrame) -> None:
        if frame.timestamp is None:
            ts = self._next_ts
        else:
            ts = frame.timestamp
        self._next_ts = ts + OPUS_FRAME_TICKS
        # RFC 3551 §4.1: the marker flags the first packet of a talkspurt.
        marker_pt = (0x80 if self._first else 0) | self._pt
        self._first = False
        rtp_ts = (self._ts_origin + ts) & 0xFFFFFFFF
        packet = _HEAD.pack(self._b0, marker_pt, self._seq, rtp_ts, self._ssrc)
        try:
            protected = self._tx.protect(packet + self._extension + frame.payload)
        except (pylibsrtp.Error, ValueError):  # e.g. a payload too big for one packet
            self.tx_errors += 1
            return
        self._write(protected)
        self._seq = (self._seq + 1) & 0xFFFF
        self.rtp_out += 1
        self.octets_out += len(frame.payload)
        if self.rtp_out % STATS_EVERY == 1:
            self._publish_sender_stats(rtp_ts)

    def _publish_sender_stats(self, rtp_timestamp: int) -> None:
        # aiortc's sender writes its RTCP SR from these; its own RTP loop never sends here.
        aiortc_seam.publish_sender_stats(
            self._sender,
            aiortc_seam.SenderCounters(
                ntp_timestamp=current_ntp_time(),
                rtp_timestamp=rtp_timestamp,
                packet_count=self.rtp_out,
                octet_count=self.octets_out,
            ),
        )
