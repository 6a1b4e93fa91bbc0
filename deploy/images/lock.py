"""Regenerate the images' pinned Python requirements.

    .venv/bin/python deploy/images/lock.py

Writes deploy/images/requirements/{relay,transceiver}.txt: every runtime dependency of the
image's entry point (the closure of its root requirements), pinned with the sha256 of the wheel
pip picks for the image's interpreter (Debian bookworm's CPython 3.11.2, manylinux x86_64).
Versions are the ones installed in the project's venv (what the tests ran with); a dependency
only the image's interpreter needs (environment markers differ: 3.11.2 is older than the venv's
Python) gets the newest matching release. Dependencies are read from each wheel's own metadata,
with markers evaluated for the image. requirements/build.txt pins the build backend (setuptools)
the images build the project with. Images install all of it with --require-hashes --no-deps
from a wheelhouse, so a build never resolves anything. Run this after changing dependencies in
pyproject.toml (and `make install`), then commit the files.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
OUT = HERE / "requirements"
# What each image runs: relayctl needs no WebRTC stack; the transceiver needs the whole project.
ROOTS = {
    "relay": ["click", "pyroute2", "redis", "prometheus-client"],
    "transceiver": None,  # None: every runtime dependency of the project
}
PROJECT = "webrtc-edge"
BUILD_BACKEND = "setuptools>=68"  # as [build-system] in pyproject.toml
IMAGE_PYTHON = "3.11.2"  # Debian bookworm's python3
# glibc 2.36 (bookworm): pip takes --platform tags literally, so every manylinux level is listed.
GLIBC_MINORS = range(36, 4, -1)
PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in GLIBC_MINORS] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
]  # fmt: skip
TARGET = ["--python-version", IMAGE_PYTHON, "--implementation", "cp", "--only-binary=:all:"]
TARGET += [arg for p in PLATFORMS for arg in ("--platform", p)]


def image_environment() -> dict[str, str]:
    env = default_environment()
    env.update(
        python_full_version=IMAGE_PYTHON,
        python_version=".".join(IMAGE_PYTHON.split(".")[:2]),
        implementation_version=IMAGE_PYTHON,
        platform_machine="x86_64",
        sys_platform="linux",
        extra="",
    )
    return env


class Wheels:
    """Downloads (once) the wheel of name==version, or of the newest release matching a spec."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def fetch(self, spec: str) -> Path:
        dest = self.cache / spec.replace("/", "_")
        if not any(dest.glob("*.whl")):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *TARGET,
                 "-d", str(dest), spec],
                check=True,
            )  # fmt: skip
        name = canonicalize_name(Requirement(spec).name)
        found = [w for w in dest.glob("*.whl") if canonicalize_name(w.name.split("-")[0]) == name]
        if len(found) != 1:
            sys.exit(f"lock.py: expected one wheel for {spec}, got {found}")
        return found[0]


def wheel_requires(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    reqs = [Requirement(text) for text in meta.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def installed_version(name: str) -> str | None:
    try:
        return metadata.distribution(name).version
    except metadata.PackageNotFoundError:
        return None


def closure(roots: list[Requirement], wheels: Wheels) -> dict[str, Path]:
    """{canonical name: wheel} for the roots and everything they need in the image."""
    env = image_environment()
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        version = installed_version(name)
        if version is not None and version in req.specifier:
            wheel = wheels.fetch(f"{name}=={version}")
        else:  # not needed by the venv's newer Python: the newest release that fits
            wheel = wheels.fetch(f"{name}{req.specifier}")
        seen[name] = wheel
        todo.extend(wheel_requires(wheel, env))
    return seen


def pin_lines(pins: dict[str, Path]) -> list[str]:
    lines = []
    for name in sorted(pins):
        version = pins[name].name.split("-")[1]
        digest = hashlib.sha256(pins[name].read_bytes()).hexdigest()
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    env = image_environment()
    project = metadata.distribution(PROJECT)
    project_roots = [
        r for t in project.requires or [] if (r := Requirement(t)).marker is None
        or r.marker.evaluate(env)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edge-lock-") as tmp:
        wheels = Wheels(Path(tmp))
        for image, roots in ROOTS.items():
            reqs = project_roots if roots is None else [Requirement(r) for r in roots]
            pins = closure(reqs, wheels)
            head = f"# {image} image: generated by deploy/images/lock.py; do not edit."
            (OUT / f"{image}.txt").write_text("\n".join([head, *pin_lines(pins)]) + "\n")
            print(f"wrote {OUT / f'{image}.txt'}: {len(pins)} packages")
        backend = wheels.fetch(BUILD_BACKEND)
        head = "# the images' build backend: generated by deploy/images/lock.py; do not edit."
        pins = {canonicalize_name(Requirement(BUILD_BACKEND).name): backend}
        (OUT / "build.txt").write_text("\n".join([head, *pin_lines(pins)]) + "\n")
        print(f"wrote {OUT / 'build.txt'}: {backend.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
