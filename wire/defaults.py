"""Fleet-wide defaults: values relays, transceivers and the controller must agree on.

Each package keeps its own defaults table (e.g. transceiver/defaults.py) for what only it uses;
what crosses a process boundary lives here, once.
"""

from __future__ import annotations

RELAY_TUNNEL_PORT = 6080  # UDP port every relay receives transceivers' tunnel datagrams on
REGISTRY_TTL = 10.0  # seconds a transceiver's registry entry lives without a refresh
REGISTRY_REFRESH = 3.0  # seconds between a transceiver's registry refreshes
RELAY_TTL = 600.0  # seconds a relay's registry entry lives: its XDP program forwards while its
#                    controller restarts, so transceivers must not forget it quickly
RELAY_REFRESH = 10.0  # seconds between a relay controller's refreshes of its entry
REACH_REFRESH = 2.0  # seconds between a relay's reports that its region reaches a registry
REACH_FRESH = 10.0  # seconds a reach report is believed (the front places calls by it): a
#                     cut backbone stops new calls across it within this, plus clock skew
REDIS_PREFIX = "edge"  # prefix of every registry key in Redis
IP_TTL = 64  # TTL of the IPv4 packets we build (tunnel headers, replies inside them)
