"""The socket mux (transceiver/mux.py) on a real UDP socket: it only demultiplexes. The first
packet of a call by the server ufrag, later ones by path; each datagram to its call's agent or
route, what nobody takes counted; tunnel datagrams through the tunnel layer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from aioice import stun

from transceiver import drops
from transceiver.ice import IceLiteAgent
from transceiver.mux import SocketMux
from wire import encap

pytestmark = pytest.mark.timeout(30)
VIP = ("198.18.0.10", 3478)
CLIENT = ("198.18.1.1", 5555)


def check(agent: IceLiteAgent, *, password: str | None = None, **attrs: object) -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{agent.local_username}:client"
    msg.attributes["ICE-CONTROLLING"] = 1
    msg.attributes.update(attrs)
    msg.add_message_integrity((password or agent.local_password).encode())
    msg.add_fingerprint()
    return bytes(msg)


CLIENT_PWD = "c" * 24


def agent(letter: str, mux: SocketMux | None = None) -> IceLiteAgent:
    a = IceLiteAgent(
        local_username=letter * 24,
        candidates=[],
        setup_timeout=5,
        probes=None if mux is None else mux.probes,
    )
    a.remote_username, a.remote_password = "client", CLIENT_PWD
    return a


def answer(probe: stun.Message) -> bytes:
    """The client's success response to the agent's return-routability check."""
    msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, probe.transaction_id)
    msg.attributes["XOR-MAPPED-ADDRESS"] = ("203.0.113.1", 3478)
    msg.add_message_integrity(CLIENT_PWD.encode())
    msg.add_fingerprint()
    return bytes(msg)


async def verified_check(
    peer: Peer,
    mux: SocketMux,
    owner: IceLiteAgent,
    *,
    wrap=lambda b: b,
    unwrap=lambda b: b,
    **attrs: object,
) -> stun.Message:
    """Send a check from `peer`, answer the agent's check back; returns the check's answer."""
    peer.sock.sendto(wrap(check(owner, **attrs)), mux.local_addr)
    probe = stun.parse_message(unwrap(await peer.recv() or b""))
    assert probe.message_class == stun.Class.REQUEST  # our check comes before the answer
    response = stun.parse_message(unwrap(await peer.recv() or b""))
    peer.sock.sendto(wrap(answer(probe)), mux.local_addr)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not any(r.agent is owner for r in mux.bound_routes()):
        assert loop.time() < deadline, "the path was not verified"
        await asyncio.sleep(0.005)
    return response


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_peers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Peer:
    """A client (or relay) socket on loopback, closed after the test."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _OPEN.append(self.sock)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", port))
        self.addr = self.sock.getsockname()

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 2048), timeout)
        except TimeoutError:
            return None


async def settle(mux: SocketMux, count: int) -> None:
    """Wait until the mux has read `count` datagrams (they are local, this is quick)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while mux.stats.received < count:
        assert loop.time() < deadline, f"mux read {mux.stats.received} of {count} datagrams"
        await asyncio.sleep(0.005)


class Counts:
    def __init__(self) -> None:
        self.received = self.sent = 0
        self.dropped: list[str] = []

    def rx(self, nbytes: int) -> None:
        self.received += 1

    def tx(self, nbytes: int) -> None:
        self.sent += 1

    def drop(self, reason: str) -> None:
        self.dropped.append(reason)


async def serve(mux: SocketMux) -> asyncio.BaseTransport:
    """Put `mux` on a fresh 127.0.0.1 socket, as the service does (it drains the socket too)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: mux, sock=sock)
    mux.sock = sock
    return transport


@pytest.fixture
async def started() -> AsyncIterator[tuple[SocketMux, Peer]]:
    """A mux on 127.0.0.1 that knows VIP, and a relay socket on its relay tunnel port."""
    relay = Peer()
    stats = Counts()
    mux = SocketMux(stats, vips=[VIP], relay_tunnel_port=relay.addr[1], relays=["127.0.0.1"])
    mux.stats = stats  # type: ignore[attr-defined]
    transport = await serve(mux)
    try:
        yield mux, relay
    finally:
        transport.close()


async def test_first_packet_by_ufrag_then_by_path(started) -> None:
    mux, _ = started
    a, b = agent("A", mux), agent("B", mux)
    mux.register(a)
    mux.register(b)
    client, stranger = Peer(), Peer()
    response = await verified_check(client, mux, a)
    assert response.message_class == stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == client.addr
    (route,) = mux.bound_routes()
    assert route.agent is a and a.routes == [route] and a.selected_route is route
    assert mux.paths_of(a) == [route.path] and mux.paths_of(b) == []

    # Later datagrams follow the path: DTLS and RTCP to aiortc, RTP to the fast path's sink.
    rtp: list[bytes] = []
    a.rtp_sink = rtp.append
    dtls, srtp, srtcp = (
        b"\x16\xfe\xfd" + bytes(20),
        b"\x80\x6f" + bytes(30),
        b"\x80\xc8" + bytes(30),
    )
    for data in (dtls, srtp, srtcp):
        client.sock.sendto(data, mux.local_addr)
    stranger.sock.sendto(dtls, mux.local_addr)  # same bytes, path nobody bound
    await settle(mux, 6)
    assert [await a.recv(), await a.recv()] == [dtls, srtcp]
    assert rtp == [srtp]
    assert mux.drops == {drops.NO_ROUTE: 1}

    # More checks on the path reuse the one route; replies leave through it.
    client.sock.sendto(check(a, **{"USE-CANDIDATE": None}), mux.local_addr)
    assert (await client.recv()) is not None
    assert mux.bound_routes() == [route] and a.routes == [route] and a.nominated
    a.send_now(b"\x80\x6f reply")
    assert await client.recv() == b"\x80\x6f reply"

    # A call that ends takes its routes with it.
    mux.unregister(a)
    client.sock.sendto(dtls, mux.local_addr)
    client.sock.sendto(check(a), mux.local_addr)
    await settle(mux, 9)
    assert mux.bound_routes() == [] and mux.registered() == [b]
    assert mux.drops == {drops.NO_ROUTE: 2, drops.UNKNOWN_UFRAG: 1}


def test_a_restarted_call_has_both_ufrags_until_it_retires_one() -> None:
    """rekey() adds the new ufrag, the agent's on_retire (mux.retire) removes the old one, and
    a call is listed once meanwhile; unregister() removes whichever it still has."""
    mux = SocketMux()
    a = IceLiteAgent(local_username="A" * 24, candidates=[], on_retire=mux.retire)
    a.remote_username, a.remote_password = "client", CLIENT_PWD
    other = agent("B", mux)
    mux.register(a)
    mux.register(other)
    a.restart("C" * 24, "client2", "d" * 24)
    mux.rekey(a)
    assert mux.agent_for("A" * 24) is a and mux.agent_for("C" * 24) is a
    assert mux.registered() == [a, other]
    a.restart("E" * 24, "client3", "e" * 24)  # again, before a nomination: "A"s retire
    mux.rekey(a)
    assert mux.agent_for("A" * 24) is None and mux.agent_for("C" * 24) is a
    mux.unregister(a)
    assert [mux.agent_for(u * 24) for u in "ACE"] == [None, None, None]
    assert mux.registered() == [other]


async def test_what_no_call_takes_is_counted_and_unanswered(started) -> None:
    mux, _ = started
    a = agent("A")
    mux.register(a)
    stranger = Peer()
    no_username = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    no_username.add_message_integrity(b"x" * 24)
    for junk in (
        b"",
        b"\xff" * 30,  # first byte in no RFC 7983 range
        b"\x00\x01\x00\x00" + bytes(16),  # wrong cookie
        bytes(no_username),  # no USERNAME on a path no call owns: nobody to answer for
        check(agent("Z")),  # a ufrag nobody minted
        b"\x17\xfe\xfd" + bytes(20),  # DTLS on a path nobody bound
    ):
        stranger.sock.sendto(junk, mux.local_addr)
    await settle(mux, 6)
    assert await stranger.recv(0.2) is None
    assert mux.drops == {
        drops.NOT_WEBRTC: 2,
        drops.BAD_STUN: 1,
        drops.NO_USERNAME: 1,
        drops.UNKNOWN_UFRAG: 1,
        drops.NO_ROUTE: 1,
    }
    assert mux.stats.dropped.count(drops.NOT_WEBRTC) == 2  # the metric sees the same
    # The call's own refusals (here: a forged check) are counted by the mux too.
    stranger.sock.sendto(check(a, password="w" * 24), mux.local_addr)
    assert stun.parse_message(await stranger.recv() or b"").error_code == 401
    assert mux.drops[drops.BAD_INTEGRITY] == 1 and mux.bound_routes() == []


async def test_a_path_moves_to_the_call_that_authenticates_on_it(started) -> None:
    mux, _ = started
    a, b = agent("A", mux), agent("B", mux)
    mux.register(a)
    mux.register(b)
    client = Peer()
    await verified_check(client, mux, a)
    # B's check on A's path: A's agent says it is another call's, the mux routes it by ufrag;
    # the path moves to B once the client there answers B's check.
    response = await verified_check(client, mux, b)
    assert response.check_message_integrity(b.local_password.encode())
    (route,) = mux.bound_routes()
    assert route.agent is b
    mux.unregister(a)  # A ending must not unbind what B owns now
    assert mux.bound_routes() == [route]


async def test_tunneled_path_is_bound_by_its_inner_addresses(started) -> None:
    mux, relay = started
    a = agent("A", mux)
    mux.register(a)
    replies: list[tuple] = []

    def unwrap(packet: bytes) -> bytes:
        reply = encap.parse_ipv4_udp(packet, verify_checksums=True)
        replies.append(((reply.src, reply.sport), (reply.dst, reply.dport)))
        return reply.payload

    response = await verified_check(
        relay, mux, a, wrap=lambda b: encap.ipv4_udp(*CLIENT, *VIP, b), unwrap=unwrap
    )
    assert replies == [(VIP, CLIENT)] * 2
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    (route,) = mux.bound_routes()
    assert route.path.client == CLIENT and route.path.vip == VIP
    assert route.key == encap.path_key(CLIENT, VIP) and route.relay == "127.0.0.1"

    dtls = b"\x16\xfe\xfd" + bytes(20)
    relay.sock.sendto(encap.ipv4_udp(*CLIENT, *VIP, dtls), mux.local_addr)
    assert await asyncio.wait_for(a.recv(), 2) == dtls
    a.send_now(b"\x17\xfe\xfd answer")
    out = encap.parse_ipv4_udp(await relay.recv() or b"", verify_checksums=True)
    assert out.payload == b"\x17\xfe\xfd answer" and (out.dst, out.dport) == CLIENT

    # Same client, VIP we do not serve; garbage claiming to be IPv4; unbound tunneled DTLS.
    relay.sock.sendto(encap.ipv4_udp(*CLIENT, "198.18.0.99", 3478, check(a)), mux.local_addr)
    relay.sock.sendto(b"\x45" + bytes(30), mux.local_addr)
    relay.sock.sendto(encap.ipv4_udp("198.18.1.2", 1, *VIP, dtls), mux.local_addr)
    await settle(mux, 5)
    assert mux.drops == {
        drops.TUNNEL_FOREIGN_VIP: 1,
        drops.TUNNEL_BAD_INNER: 1,
        drops.NO_ROUTE: 1,
    }
    assert await relay.recv(0.2) is None


async def test_without_vips_nothing_tunneled_is_ours() -> None:
    mux = SocketMux(relays=["127.0.0.1"])
    a = agent("A")
    mux.register(a)
    relay = Peer()
    loop = asyncio.get_running_loop()
    transport = await serve(mux)
    try:
        relay.sock.sendto(encap.ipv4_udp(*CLIENT, *VIP, check(a)), mux.local_addr)
        deadline = loop.time() + 5
        while not mux.drops:
            assert loop.time() < deadline
            await asyncio.sleep(0.005)
        assert mux.drops == {drops.TUNNEL_FOREIGN_VIP: 1} and mux.bound_routes() == []
    finally:
        transport.close()
