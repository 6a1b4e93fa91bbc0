"""The VM lab's tests: QEMU VMs (TCG) built from the cached image, one lab for the module.

They take minutes and run only under `make test-vm` (EDGE_VM_TESTS=1); `make test` skips them.
The VMs boot from the installed image (lab/vmbake.py) unless EDGE_VM_FRESH_INSTALL=1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.vmbake import ensure_installed
from lab.vmimage import Image, ensure_image, ensure_wheelhouse
from lab.vmlab import VmCallDriver, VmLab

ENABLE = "EDGE_VM_TESTS"
_INPUTS = pytest.StashKey[tuple[Image, Path]]()  # what pytest_collection_finish built


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots QEMU VMs (slow); run by `make test-vm`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ENABLE) == "1":
        return
    skip = pytest.mark.skip(reason=f"VM lab: run with `make test-vm` ({ENABLE}=1)")
    for item in items:
        if item.get_closest_marker("vm") is not None:
            item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or find in the cache) what the lab boots before any test starts, so that a cold
    cache's 15 to 25 minutes of building count against no test's timeout."""
    if os.environ.get(ENABLE) != "1":
        return
    if not any(item.get_closest_marker("vm") for item in session.items):
        return
    try:
        image, wheels = ensure_image(), ensure_wheelhouse()
        if os.environ.get("EDGE_VM_FRESH_INSTALL") != "1":
            image = ensure_installed(image, wheels)  # the VMs' make install finds the venv built
    except (RuntimeError, OSError) as exc:
        pytest.exit(f"the VM lab's image could not be built: {exc}", returncode=1)
    session.config.stash[_INPUTS] = (image, wheels)


@pytest.fixture(scope="module")
def vmlab(request: pytest.FixtureRequest) -> Iterator[VmLab]:
    image, wheels = request.config.stash[_INPUTS]
    with VmLab(image, wheels) as lab:
        print(f"\n[vm] lab up: {', '.join(f'{k}={v:.0f}' for k, v in lab.timings.items())}")
        yield lab
    assert not netns.list_namespaces(lab.prefix), "VM lab namespace left behind"
    assert not lab.tmpdir.exists(), "VM lab files left behind"
    assert all(not vm.running() for vm in lab.vms.values()), "a QEMU process left behind"


@pytest.fixture
def place(vmlab: VmLab) -> Iterator[Callable[..., VmCallDriver]]:
    """place(url, ...) -> a VmCallDriver whose calls are connected; hung up at teardown."""
    drivers: list[VmCallDriver] = []

    def start(*urls: str) -> VmCallDriver:
        d = VmCallDriver(vmlab, list(urls))
        drivers.append(d)
        for _ in urls:
            d.wait_call(timeout=600)  # the first call imports aiortc: minutes under TCG
        return d

    yield start
    for d in drivers:
        d.close()
    vmlab.steer_client(None)
