"""The call's ICE-lite agent (transceiver/ice.py) on its own: what it answers to each Binding
request, what it changes (and does not), return-routability checks, path selection, setup
timeout and consent expiry."""

from __future__ import annotations

import asyncio

import pytest
from aioice import ConnectionClosed, stun

from transceiver import defaults, drops, ice
from transceiver.paths import Path, Route

pytestmark = pytest.mark.timeout(30)
UFRAG = "S" * 24
CLIENT_UFRAG, CLIENT_PWD = "cufr", "c" * 24  # the client's credentials, as the offer gives them


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
        msg.attributes["USERNAME"] = username or f"{agent.local_username}:{CLIENT_UFRAG}"
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


def make_agent(**kwargs: object) -> ice.IceLiteAgent:
    agent = ice.IceLiteAgent(local_username=UFRAG, candidates=[], **kwargs)  # type: ignore[arg-type]
    agent.remote_username, agent.remote_password = CLIENT_UFRAG, CLIENT_PWD  # aiortc sets these
    return agent


@pytest.fixture
def agent() -> ice.IceLiteAgent:
    return make_agent(setup_timeout=5)


def probe_of(route: Recorder) -> stun.Message:
    """Our return-routability check among what went to `route`, taken off it."""
    for data in route.sent:
        msg = stun.parse_message(data)
        if msg.message_class == stun.Class.REQUEST:
            route.sent.remove(data)
            return msg
    raise AssertionError("no check was sent")


def answer(probe: stun.Message, *, password: str = CLIENT_PWD) -> bytes:
    """The client's success response to our check (signed with the client's password)."""
    msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, probe.transaction_id)
    msg.attributes["XOR-MAPPED-ADDRESS"] = ("203.0.113.1", 3478)
    msg.add_message_integrity(password.encode())
    msg.add_fingerprint()
    return bytes(msg)


def verify(agent: ice.IceLiteAgent, route: Recorder, **attrs: object) -> None:
    """A client check on `route`, and the client answering our check: the path is verified."""
    assert agent.stun_received(request(agent, **attrs), route) == ice.PROBING
    probe = probe_of(route)
    assert agent.stun_received(answer(probe), route) == ice.AUTHENTICATED
    route.sent.clear()


def test_authenticated_check_is_answered_checked_back_and_selects(
    agent: ice.IceLiteAgent,
) -> None:
    a = Recorder(agent, ("198.18.0.1", 1000))
    assert agent.stun_received(request(agent), a) == ice.PROBING
    # Our check goes first, then the answer; nothing is selected until the path answers.
    check, response = (stun.parse_message(d) for d in a.sent)
    assert check.message_class == stun.Class.REQUEST
    assert check.attributes["USERNAME"] == f"{CLIENT_UFRAG}:{UFRAG}"
    assert check.check_message_integrity(CLIENT_PWD.encode())
    assert "ICE-CONTROLLED" in check.attributes and "PRIORITY" in check.attributes
    assert response.message_class == stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("198.18.0.1", 1000)
    assert response.check_message_integrity(agent.local_password.encode())
    assert agent.selected_route is None and agent.routes == []
    a.sent.clear()
    assert agent.stun_received(answer(check), a) == ice.AUTHENTICATED
    assert a.sent == []  # a response is not answered
    assert agent.selected_route is a and agent.routes == [a] and agent.checks == 1
    assert not agent.nominated and agent.verified == 1
    # Once verified, checks are answered and nothing more is sent.
    assert agent.stun_received(request(agent), a) == ice.AUTHENTICATED
    assert reply(a).message_class == stun.Class.RESPONSE


def test_a_check_proves_nothing_until_its_path_answers(agent: ice.IceLiteAgent) -> None:
    """Issue 8 item 2 at the agent: a nominating check from a spoofed source (the sender knows
    the password of its own call) gets its answer and one check, and moves nothing."""
    real = Recorder(agent, ("198.18.0.1", 1000))
    verify(agent, real)
    victim = Recorder(agent, ("192.0.2.66", 4444))
    for _ in range(3):
        spoofed = request(agent, **{"USE-CANDIDATE": None})
        assert agent.stun_received(spoofed, victim) == ice.PROBING
    assert agent.selected_route is real and not agent.nominated
    assert len(victim.sent) == 6  # per request: our check, the answer; about its own size
    assert all(len(d) <= len(spoofed) + 8 for d in victim.sent)
    # An answer forged without seeing the check: wrong id (ignored), or our id on another
    # path, or signed with the wrong password, verifies nothing.
    probe = probe_of(victim)
    forged = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
    forged.add_message_integrity(CLIENT_PWD.encode())
    assert agent.stun_received(bytes(forged), victim) == ice.OTHER_CALL
    assert agent.stun_received(answer(probe), real) == ice.IGNORED
    assert agent.stun_received(answer(probe, password="x" * 24), victim) == drops.BAD_INTEGRITY
    assert agent.selected_route is real and agent.routes == [real]
    # The real client answering (it receives there) is what moves it, to its nomination.
    assert agent.stun_received(answer(probe), victim) == ice.AUTHENTICATED
    assert agent.selected_route is victim and agent.nominated


async def test_a_verified_path_takes_over_from_a_silent_one(
    agent: ice.IceLiteAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose address changed (NAT rebinding, new network) moves with its next check."""
    monkeypatch.setattr(defaults, "PATH_SILENCE", 0.2)
    old, new = Recorder(agent, ("198.18.0.1", 1000)), Recorder(agent, ("198.18.0.1", 1001))
    verify(agent, old)
    await asyncio.sleep(0.3)  # the old path says nothing more
    verify(agent, new)
    assert agent.selected_route is new and not agent.nominated


async def test_media_is_bounded_by_what_the_path_sent(
    agent: ice.IceLiteAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "SEND_FLOOR_WINDOW", 0.2)
    route = Recorder(agent, ("198.18.0.1", 1000))
    verify(agent, route)
    frame = bytes(100)
    for _ in range(defaults.SEND_CREDIT_VERIFIED // 100 + 50):
        agent.send_now(frame)
    sent = len(route.sent)
    assert agent.refused > 0 and sent * 100 <= defaults.SEND_CREDIT_VERIFIED + 2000
    await asyncio.sleep(0.3)  # silent past the floor's window: no floor either
    route.sent.clear()
    agent.send_now(frame)
    assert route.sent == []
    route.authenticated(100, None)  # what the path sends refills its credit, x the factor
    for _ in range(defaults.SEND_CREDIT_FACTOR + 3):
        agent.send_now(frame)
    assert len(route.sent) == defaults.SEND_CREDIT_FACTOR


def test_pending_checks_are_bounded(agent: ice.IceLiteAgent) -> None:
    probes: dict[bytes, ice.IceLiteAgent] = {}
    bounded = make_agent(probes=probes)
    for i in range(50):
        route = Recorder(bounded, ("192.0.2.1", 1000 + i))
        for _ in range(10):
            bounded.stun_received(request(bounded), route)
    assert len(probes) <= defaults.PROBE_PATHS * defaults.PROBE_TXIDS
    assert bounded.selected_route is None


def test_answers_and_checks_to_unverified_paths_are_budgeted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The call's own client (it knows the password) spoofing many sources: each authenticated
    # request from an unverified path costs an answer and a check to that address, so a call
    # sends at most PROBE_BURST at once and PROBE_RATE a second after that.
    now = [1000.0]
    monkeypatch.setattr(ice.time, "monotonic", lambda: now[0])
    agent = make_agent()
    routes = [Recorder(agent, ("192.0.2.9", 3000 + i)) for i in range(3 * defaults.PROBE_BURST)]
    results = [agent.stun_received(request(agent), r) for r in routes]
    assert results.count(ice.PROBING) == defaults.PROBE_BURST
    assert results.count(drops.PROBE_LIMITED) == 2 * defaults.PROBE_BURST
    assert agent.probes_sent == defaults.PROBE_BURST
    assert sum(len(r.sent) for r in routes) == 2 * defaults.PROBE_BURST  # answer + check each
    assert all(not r.sent for r in routes[defaults.PROBE_BURST :])  # nothing to the rest
    now[0] += 1.0  # a second later: PROBE_RATE more
    later = [Recorder(agent, ("192.0.2.10", 4000 + i)) for i in range(10)]
    results = [agent.stun_received(request(agent), r) for r in later]
    assert results.count(ice.PROBING) == int(defaults.PROBE_RATE)
    # A real client moving network within its budget still gets verified and selected.
    moved = Recorder(agent, ("198.18.0.7", 5000))
    now[0] += 1.0
    verify(agent, moved)
    assert agent.selected_route is moved


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
    verify(agent, selected)
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
    await asyncio.sleep(0.05)
    assert not connecting.done()  # an unverified path is not selected
    assert agent.stun_received(answer(probe_of(a)), a) == ice.AUTHENTICATED
    await asyncio.wait_for(connecting, 1)  # DTLS may start before the nomination
    assert agent.selected == a.path and not agent.nominated
    verify(agent, b)  # another verified path does not move it while `a` is heard
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
    quick = make_agent(setup_timeout=0.1, on_close=closed.append)
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
    agent = make_agent(consent_timeout=0.6, setup_timeout=5)
    route = Recorder(agent, ("198.18.0.1", 1000))
    verify(agent, route)
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
