"""The call's ICE-lite agent (transceiver/ice.py) on its own: what it answers to each Binding
request, what it changes (and does not), path selection, setup timeout and consent expiry."""

from __future__ import annotations

import asyncio

import pytest
from aioice import ConnectionClosed, stun

from transceiver import drops, ice
from transceiver.paths import Path, Route

pytestmark = pytest.mark.timeout(30)
UFRAG = "S" * 24


class Recorder(Route):
    """A route whose replies are kept for the test instead of leaving a socket."""

    __slots__ = ("sent",)

    def __init__(self, agent: ice.IceLiteAgent, client: tuple[str, int]) -> None:
        super().__init__(Path(client=client), client, agent)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def request(
    agent: ice.IceLiteAgent | None,
    *,
    username: str | None = None,
    password: str | None = None,
    integrity: bool = True,
    **attrs: object,
) -> bytes:
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    if username is not None or agent is not None:
        msg.attributes["USERNAME"] = username or f"{agent.local_username}:client"
    msg.attributes["PRIORITY"] = 1
    msg.attributes["ICE-CONTROLLING"] = 7
    msg.attributes.update(attrs)
    if integrity:
        key = password if password is not None else agent.local_password  # type: ignore[union-attr]
        msg.add_message_integrity(key.encode())
    msg.add_fingerprint()
    return bytes(msg)


def reply(route: Recorder) -> stun.Message:
    (data,) = route.sent
    route.sent.clear()
    return stun.parse_message(data)


@pytest.fixture
def agent() -> ice.IceLiteAgent:
    return ice.IceLiteAgent(local_username=UFRAG, candidates=[], setup_timeout=5)


def test_authenticated_check_is_answered_and_selects(agent: ice.IceLiteAgent) -> None:
    a = Recorder(agent, ("198.18.0.1", 1000))
    assert agent.stun_received(request(agent), a) == ice.AUTHENTICATED
    response = reply(a)
    assert response.message_class == stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("198.18.0.1", 1000)
    assert response.check_message_integrity(agent.local_password.encode())
    assert agent.selected_route is a and agent.checks == 1 and not agent.nominated


@pytest.mark.parametrize(
    ("kwargs", "code", "reason"),
    [
        ({"integrity": False}, 400, drops.NO_USERNAME),
        ({"password": "w" * 24}, 401, drops.BAD_INTEGRITY),
        ({"password": "w" * 24, "USE-CANDIDATE": None}, 401, drops.BAD_INTEGRITY),
        ({"ICE-CONTROLLED": 5}, 487, drops.ROLE_CONFLICT),
    ],
)
def test_refused_checks_get_their_error_and_change_nothing(
    agent: ice.IceLiteAgent, kwargs: dict, code: int, reason: str
) -> None:
    selected = Recorder(agent, ("198.18.0.1", 1000))
    agent.stun_received(request(agent), selected)
    selected.sent.clear()
    checks, last = agent.checks, agent.last_check
    other = Recorder(agent, ("198.18.0.2", 2000))
    assert agent.stun_received(request(agent, **kwargs), other) == reason
    error = reply(other)
    assert error.message_class == stun.Class.ERROR and error.error_code == code
    assert "MESSAGE-INTEGRITY" not in error.attributes  # we cannot sign for an unproven peer
    assert (agent.selected_route, agent.checks, agent.last_check) == (selected, checks, last)
    assert not agent.nominated


def test_no_username_at_all_is_a_400(agent: ice.IceLiteAgent) -> None:
    route = Recorder(agent, ("198.18.0.1", 1000))
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    assert agent.stun_received(bytes(msg), route) == drops.NO_USERNAME
    assert reply(route).error_code == 400


def test_other_calls_and_non_requests_are_not_answered(agent: ice.IceLiteAgent) -> None:
    route = Recorder(agent, ("198.18.0.1", 1000))
    theirs = request(None, username="T" * 24 + ":client", password="p" * 24)
    assert agent.stun_received(theirs, route) == ice.OTHER_CALL
    indication = bytes(stun.Message(stun.Method.BINDING, stun.Class.INDICATION))
    assert agent.stun_received(indication, route) == ice.IGNORED
    good = request(agent)
    wrong_cookie = good[:4] + b"\x00\x00\x00\x00" + good[8:]
    assert agent.stun_received(wrong_cookie, route) == drops.BAD_STUN
    assert agent.stun_received(good[:-3], route) == drops.BAD_STUN  # length disagrees
    allocate = bytes(stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST))
    assert agent.stun_received(allocate, route) == drops.BAD_STUN
    assert route.sent == [] and agent.checks == 0 and agent.selected_route is None


async def test_first_check_selects_until_the_client_nominates(agent: ice.IceLiteAgent) -> None:
    a = Recorder(agent, ("198.18.0.1", 1000))
    b = Recorder(agent, ("198.18.0.2", 2000))
    connecting = asyncio.ensure_future(agent.connect())
    await asyncio.sleep(0)
    assert not connecting.done()
    agent.stun_received(request(agent), a)
    await asyncio.wait_for(connecting, 1)  # DTLS may start before the nomination
    assert agent.selected == a.path and not agent.nominated
    agent.stun_received(request(agent), b)  # another plain check does not move it
    assert agent.selected_route is a
    agent.stun_received(request(agent, **{"USE-CANDIDATE": None}), b)  # the client's choice
    assert agent.selected_route is b and agent.nominated
    a.sent.clear()
    b.sent.clear()
    await agent.send(b"dtls")
    agent.send_now(b"rtp")
    assert (a.sent, b.sent) == ([], [b"dtls", b"rtp"])
    await agent.close()
    agent.send_now(b"late")  # closed: nothing goes out, nothing raises
    assert b.sent == [b"dtls", b"rtp"]
    with pytest.raises(ConnectionError):
        await agent.send(b"late")


async def test_no_check_before_the_setup_timeout_closes(agent: ice.IceLiteAgent) -> None:
    closed: list[ice.IceLiteAgent] = []
    quick = ice.IceLiteAgent(
        local_username=UFRAG, candidates=[], setup_timeout=0.1, on_close=closed.append
    )
    with pytest.raises(ConnectionError):
        await quick.connect()
    assert quick.closed and quick.close_reason == "setup_timeout" and closed == [quick]
    # aiortc's RTCIceTransport._monitor ends on ConnectionClosed; recv() wakes with an error.
    assert isinstance(await asyncio.wait_for(quick.get_event(), 1), ConnectionClosed)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(quick.recv(), 1)
    # A closed agent answers nothing: its ufrag is as good as gone.
    route = Recorder(quick, ("198.18.0.1", 1000))
    assert quick.stun_received(request(quick), route) == drops.UNKNOWN_UFRAG
    assert route.sent == []


async def test_consent_expires_without_checks_and_refreshes_with_them() -> None:
    agent = ice.IceLiteAgent(
        local_username=UFRAG, candidates=[], consent_timeout=0.6, setup_timeout=5
    )
    route = Recorder(agent, ("198.18.0.1", 1000))
    agent.stun_received(request(agent), route)
    await agent.connect()
    for _ in range(4):  # checks every 0.3 s keep it open well past one timeout
        await asyncio.sleep(0.3)
        assert agent.stun_received(request(agent), route) == ice.AUTHENTICATED
        assert not agent.closed
    # A forged check (wrong password) does not refresh consent.
    agent.stun_received(request(agent, password="x" * 24), route)
    await asyncio.wait_for(agent.get_event(), 3)
    assert agent.close_reason == "consent_expired"


async def test_data_for_aiortc_is_queued_in_order(agent: ice.IceLiteAgent) -> None:
    agent.deliver(b"one")
    agent.deliver(b"two")
    assert [await agent.recv(), await agent.recv()] == [b"one", b"two"]
    await agent.close()
    agent.deliver(b"late")
    with pytest.raises(ConnectionError):
        await agent.recv()


async def test_candidates_are_gathered_only_when_asked() -> None:
    cands = ice.host_candidates([("203.0.113.10", 3478), ("203.0.113.11", 443)])
    assert [(c.host, c.port, c.type) for c in cands] == [
        ("203.0.113.10", 3478, "host"),
        ("203.0.113.11", 443, "host"),
    ]
    assert cands[0].priority > cands[1].priority
    lite = ice.IceLiteAgent(local_username=UFRAG, candidates=cands)
    assert lite.local_candidates == []
    await lite.gather_candidates()
    assert lite.local_candidates == cands
    assert len(lite.local_password) == ice.PWD_LEN >= 22
