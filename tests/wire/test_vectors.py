"""tests/vectors/wire.json is exactly the generator's output, and every vector holds in Python."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vectors import generate as vectors
from wire import encap, stun, ufrag
from wire.siphash import siphash24

PATH = Path(__file__).resolve().parents[1] / "vectors" / "wire.json"
DATA = json.loads(PATH.read_text())


def test_file_equals_generator_output() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.vectors.generate"], capture_output=True, text=True, check=True
    ).stdout
    regenerate = "regenerate: python -m tests.vectors.generate > tests/vectors/wire.json"
    assert out == PATH.read_text(), regenerate
    assert out == vectors.render()


def test_every_section_is_populated() -> None:
    reasons = {v["reason"] for v in DATA["ufrag_invalid"]}
    assert reasons == {"bad_ufrag", "unknown_key", "bad_tag"}
    stun_reasons = {v.get("reason") for v in DATA["stun"]} - {None}
    assert stun_reasons == set(stun.REASONS)
    assert len(DATA["siphash"]) >= 17 and len(DATA["encap"]) >= 3 and len(DATA["ufrag"]) >= 4
    assert len(DATA["encap6"]) >= 3
    assert {encap.ip_version(bytes.fromhex(v["forwarded"])) for v in DATA["decap"]} == {4, 6}
    assert {v["fresh"] for v in DATA["ufrag_epoch"]} == {True, False}


@pytest.mark.parametrize("v", DATA["siphash"])
def test_siphash(v: dict) -> None:
    assert f"{siphash24(bytes.fromhex(v['key']), bytes.fromhex(v['msg'])):016x}" == v["out"]


@pytest.mark.parametrize("v", DATA["ufrag"])
def test_ufrag(v: dict) -> None:
    key = bytes.fromhex(v["key"])
    assert (
        ufrag.mint(
            v["key_id"], key, v["cluster"], v["transceiver"], bytes.fromhex(v["nonce"]), v["epoch"]
        )
        == v["ufrag"]
    )
    hint = ufrag.verify(v["ufrag"], {v["key_id"]: key})
    assert (hint.cluster, hint.transceiver, hint.epoch) == (
        v["cluster"],
        v["transceiver"],
        v["epoch"],
    )
    assert hint.nonce.hex() == v["nonce"] and hint.version == 2


@pytest.mark.parametrize("v", DATA["ufrag_epoch"])
def test_ufrag_epoch(v: dict) -> None:
    assert ufrag.epoch_fresh(v["epoch"], v["now"], v["max_age"]) is v["fresh"]


@pytest.mark.parametrize("v", DATA["ufrag_invalid"])
def test_ufrag_invalid(v: dict) -> None:
    keys = {int(k): bytes.fromhex(h) for k, h in v["keys"].items()}
    with pytest.raises(ufrag.UfragError) as err:
        ufrag.verify(v["ufrag"], keys)
    assert err.value.reason == v["reason"]


@pytest.mark.parametrize("v", DATA["encap"])
def test_encap(v: dict) -> None:
    inner, outer = bytes.fromhex(v["inner"]), bytes.fromhex(v["outer"])
    d = encap.parse_ipv4_udp(inner, verify_checksums=True)
    assert (d.src, d.sport, d.dport) == (v["client_addr"], v["client_port"], v["vip_port"])
    assert encap.flow_entropy(d.src, d.sport, d.dport) == v["entropy"]
    forwarded = bytes.fromhex(v["forwarded"])
    assert encap.forward_hop(inner) == forwarded  # one hop: TTL - 1, checksum updated
    assert encap.parse_ipv4_udp(forwarded, verify_checksums=True).ttl == d.ttl - 1
    assert encap.encapsulate(forwarded, v["relay_addr"], v["txr_addr"], v["txr_port"]) == outer
    assert encap.decapsulate(outer) == forwarded


@pytest.mark.parametrize("v", DATA["stun"])
def test_stun(v: dict) -> None:
    pkt = bytes.fromhex(v["packet"])
    if "ufrag" in v:
        assert stun.routing_ufrag(pkt) == v["ufrag"]
    else:
        with pytest.raises(stun.StunError) as err:
            stun.routing_ufrag(pkt)
        assert err.value.reason == v["reason"]


@pytest.mark.parametrize("v", DATA["encap6"])
def test_encap6(v: dict) -> None:
    inner, outer = bytes.fromhex(v["inner"]), bytes.fromhex(v["outer"])
    d = encap.parse_ipv6_udp(inner, verify_checksums=True)
    assert (d.src, d.sport, d.dst, d.dport) == (
        v["client_addr"],
        v["client_port"],
        v["vip_addr"],
        v["vip_port"],
    )
    assert encap.flow_entropy(d.src, d.sport, d.dport) == v["entropy"]
    forwarded = bytes.fromhex(v["forwarded"])
    assert encap.forward_hop(inner) == forwarded  # hop limit - 1, nothing else
    assert forwarded[:7] + forwarded[8:] == inner[:7] + inner[8:]
    assert encap.parse_ipv6_udp(forwarded, verify_checksums=True).ttl == d.ttl - 1
    assert encap.encapsulate(forwarded, v["relay_addr"], v["txr_addr"], v["txr_port"]) == outer
    assert outer[1] == d.tos  # the outer TOS is the inner traffic class
    assert encap.decapsulate(outer) == forwarded


@pytest.mark.parametrize("v", DATA["decap"])
def test_decap(v: dict) -> None:
    tunnel, forwarded = bytes.fromhex(v["tunnel"]), bytes.fromhex(v["forwarded"])
    o = encap.parse_ipv4_udp(tunnel, verify_checksums=True)
    assert (o.src, o.sport, o.dst, o.dport) == (
        v["txr_addr"],
        v["txr_port"],
        v["relay_addr"],
        v["relay_port"],
    )
    inner = encap.decapsulate(tunnel)
    d = encap.parse_udp(inner, verify_checksums=True)
    assert (d.src, d.sport, d.dst, d.dport) == (
        v["vip_addr"],
        v["vip_port"],
        v["client_addr"],
        v["client_port"],
    )
    assert encap.forward_hop(inner) == forwarded
    assert encap.PathHeader((d.src, d.sport), (d.dst, d.dport)).wrap(d.payload) == inner
