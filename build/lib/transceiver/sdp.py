"""Offer checks (every failure has a reason the HTTP layer returns with 400) and answer edits."""

from __future__ import annotations

from aiortc import sdp as aiosdp

MAX_OFFER_BYTES = 64 * 1024


class OfferError(ValueError):
    """An offer we will not answer; `reason` is a short human-readable sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate_offer(text: str) -> aiosdp.SessionDescription:
    if len(text) > MAX_OFFER_BYTES:
        raise OfferError(f"offer larger than {MAX_OFFER_BYTES} bytes")
    if not text.lstrip().startswith("v=0"):
        raise OfferError("body is not an SDP offer (must start with v=0)")
    try:
        desc = aiosdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises assorted errors on malformed lines
        raise OfferError(f"unparseable SDP: {type(exc).__name__}: {exc}") from None
    if any(m.kind not in ("audio", "application") for m in desc.media):
        raise OfferError("only audio (and a data channel) is supported, offer has video")
    audio = [m for m in desc.media if m.kind == "audio"]
    if not audio:
        raise OfferError("offer has no audio m-line")
    for m in desc.media:
        if m.dtls is None or not m.dtls.fingerprints:
            raise OfferError(f"m-line {m.kind} has no DTLS fingerprint")
        if not m.ice.usernameFragment or not m.ice.password:
            raise OfferError(f"m-line {m.kind} has no ICE ufrag/pwd")
        if m.ice.iceLite:
            raise OfferError("client is ICE-lite; it must be a full agent (we are lite)")
    if not any(c.mimeType.lower() == "audio/opus" for m in audio for c in m.rtp.codecs):
        raise OfferError("offer has no Opus codec")
    return desc


def add_ice_lite(answer: str) -> str:
    """Declare ICE-lite at session level (RFC 8839 §5.3): after the t= line."""
    lines = answer.split("\r\n")
    for i, line in enumerate(lines):
        if line.startswith("t="):
            lines.insert(i + 1, "a=ice-lite")
            break
    return "\r\n".join(lines)
