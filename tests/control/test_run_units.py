"""The control loop's small parts, without kernel or Redis: key formats, the token bucket, the
backoff, the empty-registry guard, ancillary data, URL redaction."""

from __future__ import annotations

import math
import socket

import pytest

from control.sync import EmptyGuard
from datapath.slowpath import TokenBucket, _ancillary
from wire.redisconn import Backoff, redact
from wire.registry import flow_key, flow_value, parse_flow_value


def test_flow_key_and_value_formats() -> None:
    assert flow_key("edge", "198.18.1.2", 40000, "198.18.100.1", 3478) == (
        "edge:flow:198.18.1.2:40000:198.18.100.1:3478"
    )
    assert flow_value(1, 7) == "1:7"
    assert parse_flow_value(b"1:7") == (1, 7)
    assert parse_flow_value("65535:4294967295") == (65535, 4294967295)


@pytest.mark.parametrize("bad", [b"", b"1", b"1:", b":7", b"a:7", b"1:7:8", b"-1:7", b"65536:1"])
def test_bad_flow_values_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError, match="flow value"):
        parse_flow_value(bad)


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1  # one token
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    now = [0.0]
    b = Backoff(first=0.1, cap=0.5, clock=lambda: now[0])
    assert b.ready() and not b.failing
    assert [b.failed() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert not b.ready() and b.remaining() == 0.5
    now[0] += 0.5
    assert b.ready() and b.remaining() == 0
    b.succeeded()
    assert b.ready() and not b.failing and b.failed() == 0.1


def test_empty_guard_believes_an_empty_table_only_after_the_grace() -> None:
    now = [100.0]
    g = EmptyGuard(grace=15, hint="--empty-grace", clock=lambda: now[0])
    assert g.believe("transceivers", empty=False)
    assert not g.believe("transceivers", empty=True)
    now[0] += 14.9
    assert not g.believe("transceivers", empty=True)
    assert g.believe("keys", empty=False), "tables are independent"
    now[0] += 0.2
    assert g.believe("transceivers", empty=True)
    assert g.believe("transceivers", empty=False)
    assert not g.believe("transceivers", empty=True), "a refilled table starts over"


def test_empty_guard_with_infinite_grace_never_believes() -> None:
    g = EmptyGuard(grace=math.inf, hint="--allow-empty", clock=lambda: 1e12)
    assert not g.believe("keys", empty=True)
    assert g.believe("keys", empty=False)


def test_ancillary_ttl_and_tos() -> None:
    anc = [
        (socket.IPPROTO_IP, socket.IP_TTL, (57).to_bytes(4, "little")),
        (socket.IPPROTO_IP, socket.IP_TOS, bytes([0xB8])),
    ]
    assert _ancillary(anc) == (57, 0xB8)
    assert _ancillary([]) == (64, 0)


def test_redis_url_password_is_never_logged() -> None:
    assert redact("redis://user:secret@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert redact("unix:///run/redis.sock") == "unix:///run/redis.sock"
