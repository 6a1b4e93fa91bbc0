"""DualStackLab: RelayLab with IPv6 on the client side and an IPv6 VIP beside the IPv4 one.

    client ns               relay ns                            txr ns (IPv4 only)
    cr 198.18.1.2/24 ------ rc 198.18.1.1/24
       2001:db8:e1::2/64       2001:db8:e1::1/64
                            lo 198.18.100.1/32, 2001:db8:e100::1/128 (the VIPs)
                            rt 198.18.2.1/24 (tunnel address) -- tr 198.18.2.2/24

The backbone stays IPv4 (docs/wire-format.md §3): the transceivers' namespaces have no IPv6.
Addresses are in the documentation range 2001:db8::/32, added `nodad` (usable at once), with
permanent neighbours both ways; the client's IPv6 default route points at the relay inside the
lab, so no lab route leads out of the machine. The relay forwards IPv6
(net.ipv6.conf.all.forwarding=1: bpf_fib_lookup answers an AF_INET6 lookup only then).
`relayctl load` gets both VIPs: dual stack in one load.
"""

from __future__ import annotations

from lab import netns
from lab.topology import RelayLab

VIP6 = "2001:db8:e100::1"
RELAY_CLIENT_SIDE6 = "2001:db8:e1::1"
CLIENT_ADDRS6 = ("2001:db8:e1::2",)
PREFIX_LEN6 = 64
_DUAL = ("client", "relay")  # the namespaces that get IPv6


class DualStackLab(RelayLab):
    """`with DualStackLab() as lab:`; `lab.vip6` beside `lab.vip` (same port)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.vip6 = VIP6
        self.client_addrs6 = CLIENT_ADDRS6

    def namespace(self, suffix: str, *, ipv6: bool = False) -> str:
        return super().namespace(suffix, ipv6=ipv6 or suffix in _DUAL)

    def build(self) -> None:
        super().build()
        self._add_ipv6()

    def _add_ipv6(self) -> None:
        relay, client = self.relay_ns, self.client_ns
        netns.sysctl(relay, "net.ipv6.conf.all.forwarding", "1")
        self.ip(relay, "addr", "add", f"{RELAY_CLIENT_SIDE6}/{PREFIX_LEN6}", "dev", "rc", "nodad")
        self.ip(relay, "addr", "add", f"{self.vip6}/128", "dev", "lo", "nodad")
        for a in self.client_addrs6:
            self.ip(client, "addr", "add", f"{a}/{PREFIX_LEN6}", "dev", "cr", "nodad")
        self.ip(client, "-6", "route", "add", "default", "via", RELAY_CLIENT_SIDE6, "dev", "cr")
        cr, rc = netns.mac(client, "cr"), netns.mac(relay, "rc")
        for a in self.client_addrs6:
            netns.add_neigh(relay, "rc", a, cr)
        netns.add_neigh(client, "cr", RELAY_CLIENT_SIDE6, rc)

    def load(self) -> None:
        """`relayctl load` with both VIPs (IPv4 and IPv6, one port) on every relay link."""
        self.load_relay(
            self.relay_ns,
            self.name,
            ifaces=self.relay_ifaces,
            vips=[(self.vip, self.vip_port), (self.vip6, self.vip_port)],
            tunnel=(self.tunnel_addr, self.tunnel_port),
            mode=self.mode,
        )
        self.sync()
