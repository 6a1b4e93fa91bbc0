"""Offer checks (every failure has a reason the HTTP layer returns with 400) and answer edits;
the SDP fragments of ICE restarts (PATCH)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aioice import Candidate
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


# --- ICE restart / trickle: SDP fragments (RFC 8840, WHIP PATCH RFC 9725 §4.3) ---------------

SDPFRAG = "application/trickle-ice-sdpfrag"  # the media type of PATCH bodies and answers
MAX_SDPFRAG_BYTES = 8 * 1024  # credentials and a few dozen candidates; more is not a fragment
_ICE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


@dataclass(frozen=True)
class IceFragment:
    """An ICE fragment's credentials (None in a bare trickle fragment) and its candidates
    (the values of `a=candidate:` lines). The transceiver ignores a client's candidates: a
    lite agent learns client addresses from their checks."""

    ufrag: str | None
    pwd: str | None
    candidates: tuple[str, ...]


def _ice_token(name: str, value: str, shortest: int) -> str:
    # RFC 8839 §5.4: ice-char (ALPHA / DIGIT / "+" / "/"), 4..256 (ufrag) or 22..256 (pwd).
    if not shortest <= len(value) <= 256 or not set(value) <= _ICE_CHARS:
        raise OfferError(f"a={name} must be {shortest}..256 characters of A-Z a-z 0-9 + /")
    return value


def parse_ice_fragment(text: str) -> IceFragment:
    """Parse a trickle-ice-sdpfrag body; raises OfferError (400) with the reason."""
    if len(text) > MAX_SDPFRAG_BYTES:
        raise OfferError(f"fragment larger than {MAX_SDPFRAG_BYTES} bytes")
    found: dict[str, set[str]] = {"ice-ufrag": set(), "ice-pwd": set()}
    candidates: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        line = line.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise OfferError(f"not an SDP line: {line[:40]!r}")
        name, _, value = line[2:].partition(":")
        if line[0] == "a" and name in found:
            found[name].add(value.strip())
        elif line[0] == "a" and name == "candidate":
            candidates.append(value.strip())
    if len(found["ice-ufrag"]) > 1 or len(found["ice-pwd"]) > 1:
        raise OfferError("fragment has more than one a=ice-ufrag or a=ice-pwd (one ICE agent)")
    ufrag = next(iter(found["ice-ufrag"]), None)
    pwd = next(iter(found["ice-pwd"]), None)
    if ufrag is not None and pwd is None:
        raise OfferError("fragment has a=ice-ufrag but no a=ice-pwd")
    if pwd is not None and ufrag is None:
        raise OfferError("fragment has a=ice-pwd but no a=ice-ufrag")
    if ufrag is not None and pwd is not None:
        ufrag, pwd = _ice_token("ice-ufrag", ufrag, 4), _ice_token("ice-pwd", pwd, 22)
    return IceFragment(ufrag, pwd, tuple(candidates))


def ice_fragment(ufrag: str, pwd: str, candidates: Iterable[Candidate], *, lite: bool) -> str:
    """An ICE restart fragment: the client's PATCH body, or (`lite`) our 200 answer to it
    (RFC 9725 §4.3.2): new credentials and candidates."""
    lines = ["a=ice-lite"] if lite else []
    lines += [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
    lines += [f"a=candidate:{c.to_sdp()}" for c in candidates]
    lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
