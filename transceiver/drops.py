"""Why a datagram was dropped: the `reason` label of `txr_drops_total`, one name per cause.

Each layer counts its own: the tunnel layer (transceiver/tunnel.py) what is not a usable tunnel
datagram, the socket mux (transceiver/mux.py) what no call takes, a call's ICE agent
(transceiver/ice.py) the Binding requests it refuses and the media a path's send credit does not
cover (transceiver/paths.py). A drop never touches another call.
"""

from __future__ import annotations

# tunnel layer
TUNNEL_UNKNOWN_RELAY = "tunnel_unknown_relay"  # 0x45 datagram from a source no relay registered
TUNNEL_BAD_INNER = "tunnel_bad_inner"  # tunnel payload is not a sane IPv4/UDP packet
TUNNEL_FOREIGN_VIP = "tunnel_foreign_vip"  # tunneled to a VIP we are not configured with
# socket mux
NOT_WEBRTC = "not_webrtc"  # first byte in no RFC 7983 range we serve (or an internal error)
BAD_STUN = "bad_stun"  # unparseable STUN, wrong cookie, not a Binding request
UNKNOWN_UFRAG = "unknown_ufrag"  # no live call has the server ufrag in USERNAME
NO_ROUTE = "no_route"  # DTLS/RTP from a path no authenticated check bound
# ICE agent (and the mux, for a request with no USERNAME on a path no call owns)
NO_USERNAME = "no_username"  # Binding request without USERNAME or MESSAGE-INTEGRITY: 400
BAD_INTEGRITY = "bad_integrity"  # MESSAGE-INTEGRITY does not verify: 401, no state change
ROLE_CONFLICT = "role_conflict"  # the client claims to be controlled: we are lite, 487
PROBE_LIMITED = "probe_limited"  # authenticated, from an unverified path, beyond the call's budget
# authenticated, naming a client ufrag with no password yet (a restart before its PATCH): unanswered
UNKNOWN_CLIENT_UFRAG = "unknown_client_ufrag"
# outbound (a call's agent): media the path's send credit did not cover, not sent
SEND_NO_CREDIT = "send_no_credit"

DROP_REASONS = (
    NOT_WEBRTC,
    BAD_STUN,
    NO_USERNAME,
    UNKNOWN_UFRAG,
    BAD_INTEGRITY,
    ROLE_CONFLICT,
    PROBE_LIMITED,
    UNKNOWN_CLIENT_UFRAG,
    NO_ROUTE,
    TUNNEL_UNKNOWN_RELAY,
    TUNNEL_BAD_INNER,
    TUNNEL_FOREIGN_VIP,
    SEND_NO_CREDIT,
)
