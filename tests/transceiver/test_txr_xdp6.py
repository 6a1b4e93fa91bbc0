"""IPv6 clients through the XDP relay (issue 11): an aiortc client calls over IPv6 through the
real kernel program to a transceiver behind the IPv4 backbone, while another calls over IPv4
through the same dual-stack relay (lab.dualstack: both VIPs in one `relayctl load`); then
headless Chromium calls over IPv6."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.dualstack import DualStackLab
from lab.peer import lab_key_file
from lab.topology import Transceiver
from wire.addr import format_addr_port

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

EXE = Path(sys.executable).parent / "transceiver"
HTTP_PORT = 8080


@pytest.fixture(scope="module")
def lab() -> Iterator[DualStackLab]:
    with DualStackLab(transceivers=2, load_relay=True) as lab:
        yield lab
    assert not [ns for ns in netns.list_namespaces(lab.prefix)], "lab namespaces left behind"


@pytest.fixture(scope="module")
def served(lab: DualStackLab, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Transceiver 0 offers the IPv4 VIP, transceiver 1 the IPv6 VIP: (url4, url6)."""
    tmp = tmp_path_factory.mktemp("txrs")
    url4 = serve(lab, lab.txrs[0], [format_addr_port(lab.vip, lab.vip_port)], tmp)
    url6 = serve(lab, lab.txrs[1], [format_addr_port(lab.vip6, lab.vip_port)], tmp)
    return url4, url6


def serve(lab: DualStackLab, t: Transceiver, vips: list[str], tmp: Path) -> str:
    """`transceiver serve` in t's namespace offering `vips` (stopped by the lab teardown)."""
    key = tmp / f"routing-key-{t.index}"
    key.write_text(lab.key.hex())
    key.chmod(0o600)
    log = tmp / f"transceiver-{t.index}.log"
    with log.open("wb") as err:
        proc = lab.spawn(
            t.ns,
            [
                str(EXE),
                "serve",
                f"--listen={t.addr}:{HTTP_PORT}",
                f"--udp={t.tunnel}",
                *(f"--vip={v}" for v in vips),
                f"--cluster={t.cluster}",
                f"--id={t.id}",
                f"--key-id={lab.key_id}",
                f"--key-file={key}",
                f"--relay-tunnel-port={lab.tunnel_port}",
                f"--relay={lab.tunnel_addr}",
                f"--api-keys={lab_key_file(lab.tmpdir)}",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else b""
    assert b"transceiver ready" in line, f"no ready line: {line!r}\n{log.read_text()[-2000:]}"
    return f"http://{t.addr}:{HTTP_PORT}"


def start_call(lab: DualStackLab, url: str, frames: int = 100) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "lab.callclient", "--api-keys", str(lab_key_file(lab.tmpdir))]
    return lab.spawn(lab.client_ns, [*argv, "--once", url, str(frames)], stdout=subprocess.PIPE)


def result_of(proc: subprocess.Popen[bytes]) -> dict:
    out, _ = proc.communicate(timeout=90)
    lab_lines = out.decode().strip().splitlines()
    assert lab_lines, "the call client printed nothing"
    return json.loads(lab_lines[-1])


def test_ipv6_and_ipv4_calls_at_once(lab: DualStackLab, served: tuple[str, str]) -> None:
    v4 = format_addr_port(lab.vip, lab.vip_port)
    v6 = format_addr_port(lab.vip6, lab.vip_port)
    url4, url6 = served
    shown = json.loads(lab.relayctl("map", "show", "--json"))
    assert shown["vips"] == [v4, v6]  # dual stack: one load, both families
    before = lab.stats()
    calls = [start_call(lab, url4), start_call(lab, url6)]
    r4, r6 = (result_of(p) for p in calls)
    after = lab.stats()

    for result in (r4, r6):
        assert result["state"] == "connected" and result["delete"] == 204
        assert abs(result["hz"] - 440) < 30 and result["rms"] > 1000
        drops = re.findall(r'^txr_drops_total\{reason="(\w+)"\} (\S+)$', result["metrics"], re.M)
        assert {r: float(v) for r, v in drops if float(v)} == {}
    # each call only ever saw its VIP, from a client address of its family
    assert tuple(r4["remote"]) == (lab.vip, lab.vip_port) and r4["local"][0] in lab.client_addrs
    assert tuple(r6["remote"]) == (lab.vip6, lab.vip_port)
    assert r6["local"][0] in lab.client_addrs6
    cands = re.findall(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", r6["answer"])
    assert cands == [(lab.vip6, str(lab.vip_port))]
    assert "c=IN IP6 " in r6["answer"]

    def delta(reason: str) -> int:
        return after.get(reason, 0) - before.get(reason, 0)

    # both calls' first packets routed by ufrag, the rest by flows / flows6, replies decapsulated
    assert delta("fwd_stun_new") >= 2
    assert delta("fwd_flow") >= 200 and delta("fwd_decap") >= 200
    for reason in (
        "drop_bad_tag",
        "drop_unknown_cluster",
        "drop_unknown_txr",
        "drop_tunnel_stranger",
        "drop_tunnel_foreign_src",
        "drop_tunnel_bad_inner",
        "drop_ipv6_ext_headers",
        "drop_fib",
        "drop_bad_client_addr",
    ):
        assert delta(reason) == 0, reason
    # the IPv6 call's flow is in flows6, listed by relayctl flows as [addr]:port
    flows = {(f["client"].rsplit(":", 1)[0], f["vip"]) for f in lab.flows()}
    assert (f"[{r6['local'][0]}]", v6) in flows
    assert (r4["local"][0], v4) in flows


@pytest.mark.browser
def test_chromium_call_over_ipv6(lab: DualStackLab, served: tuple[str, str]) -> None:
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.fail("/usr/bin/chromium is missing: run `make install` (Debian package chromium)")
    before, flows_before = lab.stats(), {(f["client"], f["vip"]) for f in lab.flows()}
    argv = [sys.executable, "-m", "lab.browsercall", "--api-keys", str(lab_key_file(lab.tmpdir))]
    proc = lab.spawn(
        lab.client_ns, [*argv, served[1], "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=120)
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0 and result["state"] == "connected", (result, err[-2000:])
    assert result["packets"] > 50 and result["energy"] > 0
    after = lab.stats()
    # every echoed packet crossed the XDP program both ways; the only VIP offered was the VIP6
    assert after["fwd_flow"] - before["fwd_flow"] >= 50
    assert after["fwd_decap"] - before["fwd_decap"] >= 50
    assert after["fwd_stun_new"] - before["fwd_stun_new"] >= 1
    new = {(f["client"], f["vip"]) for f in lab.flows()} - flows_before
    v6 = format_addr_port(lab.vip6, lab.vip_port)
    assert {c.rsplit(":", 1)[0] for c, v in new if v == v6} == {f"[{lab.client_addrs6[0]}]"}
