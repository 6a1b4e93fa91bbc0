"""Network-namespace labs for the relay: used by tests/lab, `make demo` and `make bench`.

- lab.netns: namespaces, veths, addresses, sysctls, commands (nsenter) and sockets in a namespace,
  XDP_PASS on veth peers, sweeping leftovers.
- lab.topology: RelayLab, client / relay / transceiver namespaces with the relay loaded by relayctl.
- lab.standin: a stand-in transceiver that echoes tunneled packets.
- lab.pyrelay: the relay in userspace Python, the benchmark's baseline.
- lab.blaster: a bounded sendmmsg UDP sender.
- lab.edge: EdgeLab, two XDP relays behind one VIP (client ECMP), two `transceiver serve --redis`,
  `relayctl run` on each relay, a private redis-server (lab.redis_server): tests/e2e and
  `make demo`.
- lab.callclient / lab.calldriver: aiortc calls in the client namespace, echoed RTP counted and
  gaps measured; lab.browsercall: one headless Chromium call.
- lab.turn: TurnLab, RelayLab plus coturn (TURN over TLS on 443) and a client whose nftables
  drops all UDP; a tiny TURN-over-TLS client (tests/e2e/test_turn.py, bench/turn.py).

`python -m lab sweep --stale` removes labs whose process is gone (`--prefix P` removes one lab).
"""
