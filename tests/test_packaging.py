"""What the wheel ships: the relay's controller and data plane, the transceiver, the wire
formats and the XDP program's sources; never the dev kit (lab/), the tests or the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_product_and_not_the_dev_kit(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: setuptools writes build/ next to pyproject.toml.
    src = tmp_path / "src"
    tracked = (
        subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"wire", "datapath", "control", "transceiver"}, tops
    for must in ("control/cli.py", "datapath/bpfsys.py", "transceiver/cli.py", "wire/ufrag.py"):
        assert must in names
