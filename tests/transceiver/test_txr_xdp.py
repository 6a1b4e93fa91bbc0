"""The whole path: aiortc client -> XDP relay (real kernel program, relayctl) -> transceiver.

The client runs in the lab's client namespace and only knows the VIP from the SDP answer; the
transceiver runs in its own namespace behind the relay, tunnel mode, one UDP socket.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.peer import lab_key_file
from lab.topology import RelayLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

EXE = Path(sys.executable).parent / "transceiver"
HTTP_PORT = 8080


@pytest.fixture(scope="module")
def lab() -> Iterator[RelayLab]:
    with RelayLab(transceivers=1, load_relay=True) as lab:
        yield lab
    assert not [ns for ns in netns.list_namespaces(lab.prefix)], "lab namespaces left behind"


@pytest.fixture
def served(lab: RelayLab, tmp_path: Path) -> Iterator[str]:
    """`transceiver serve` in the lab's transceiver namespace (stopped by the lab teardown)."""
    t = lab.txrs[0]
    log = tmp_path / "transceiver.log"
    key = tmp_path / "routing-key"
    key.write_text(lab.key.hex())
    key.chmod(0o600)
    with log.open("wb") as err:
        proc = lab.spawn(
            t.ns,
            [
                str(EXE), "serve", f"--listen={t.addr}:{HTTP_PORT}", f"--udp={t.tunnel}",
                f"--vip={lab.vip}:{lab.vip_port}", f"--cluster={t.cluster}", f"--id={t.id}",
                f"--key-id={lab.key_id}", f"--key-file={key}",
                f"--relay-tunnel-port={lab.tunnel_port}", f"--relay={lab.tunnel_addr}",
                f"--api-keys={lab_key_file(lab.tmpdir)}",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
        )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else b""
    assert b"transceiver ready" in line, f"no ready line: {line!r}\n{log.read_text()[-2000:]}"
    try:
        yield f"http://{t.addr}:{HTTP_PORT}"
    finally:
        proc.terminate()
        proc.wait(timeout=40)


def test_call_through_the_xdp_relay(lab: RelayLab, served: str) -> None:
    before = lab.stats()
    out = netns.run(
        lab.client_ns,
        [
            sys.executable,
            "-m",
            "lab.callclient",
            "--api-keys",
            str(lab_key_file(lab.tmpdir)),
            "--once",
            served,
            "100",
        ],
        timeout=90,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    after = lab.stats()

    assert result["state"] == "connected" and result["delete"] == 204
    assert abs(result["hz"] - 440) < 30 and result["rms"] > 1000
    # The client only ever saw the VIP; its packets came from one of the client addresses.
    assert tuple(result["remote"]) == (lab.vip, lab.vip_port)
    assert result["local"][0] in lab.client_addrs
    cands = re.findall(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", result["answer"])
    assert cands == [(lab.vip, str(lab.vip_port))]

    def delta(reason: str) -> int:
        return after.get(reason, 0) - before.get(reason, 0)

    # First packets routed by ufrag, the rest by the flow map; replies decapsulated.
    assert delta("fwd_stun_new") >= 1
    assert delta("fwd_flow") >= 100
    assert delta("fwd_decap") >= 100
    assert delta("drop_bad_tag") == delta("drop_unknown_txr") == 0
    assert delta("drop_tunnel_stranger") == delta("drop_tunnel_foreign_src") == 0
    # The transceiver saw only tunnel datagrams it could route.
    drops = re.findall(r'^txr_drops_total\{reason="(\w+)"\} (\S+)$', result["metrics"], re.M)
    assert {r: float(v) for r, v in drops if float(v)} == {}
