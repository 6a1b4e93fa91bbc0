"""lab/vmverify.py: the relay program against the VM image's kernel (Debian 12, 6.1).

The fast tests run under `make test`; the VM test only under `make test-vm` (EDGE_VM_TESTS=1).
The lab (test_vm_lab.py) proves that the program as it is verifies on 6.1 (relayctl load in
relayctl-run.service on both relay VMs); this proves that the tool tells a refusal apart and
shows its cause, on the program as it was before parse.h bounded its lengths.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab import netns, vmverify
from lab.vmimage import REPO


def test_the_compiler_comes_from_the_checkout_beside_the_bpf_dir(tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "control").mkdir(parents=True)
    (other / "control" / "program.py").write_text("# its own\n")
    (other / "bpf").mkdir()
    assert vmverify.source_root(other / "bpf") == other
    lone = tmp_path / "lone" / "bpf"
    lone.mkdir(parents=True)
    assert vmverify.source_root(lone) == REPO


def test_arguments_are_checked_before_any_vm_boots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert vmverify.main(["--bpf-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "relay.c" in err or "needs root" in err
    with pytest.raises(SystemExit):
        vmverify.main([])  # --bpf-dir is required


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_a_length_without_its_bound_is_refused_on_the_image_kernel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bpf = tmp_path / "bpf"
    shutil.copytree(REPO / "bpf", bpf)
    parse = bpf / "parse.h"
    text = parse.read_text()
    assert "edge_ntohs_len(ip->tot_len)" in text
    # The lengths as they were: a plain byte swap, whose bounds 6.1's verifier loses.
    parse.write_text(text.replace("= edge_ntohs_len(", "= edge_ntohs("))
    # Only this process's labs: other runs on the machine may make and remove theirs meanwhile.
    ours = f"{netns.LAB_BASE}{os.getpid()}x"

    def our_namespaces() -> set[str]:
        return {n for n in netns.list_namespaces() if n.startswith(ours)}

    before = our_namespaces()
    status = vmverify.main(["--bpf-dir", str(bpf), "--tail", "5"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "math between pkt pointer and register with unbounded min value" in out
    assert "REFUSED" in out
    assert our_namespaces() <= before, "vmverify left its namespace behind"
