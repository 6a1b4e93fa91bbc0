"""The VM lab's build inputs, cached by a hash of what they are made from: the Debian image
(vagrant/build-image.sh), the wheelhouse `make install` reads inside the VMs (the VMs have no
route out, so no PyPI), and the checkout copied into every VM.

    python -m lab.vmimage [--cache DIR]          build (or reuse) both, print where they are

The cache lives outside the repository (default /var/cache/webrtc-edge, env EDGE_VM_CACHE):
    images/<key>/     disk.qcow2, vmlinuz, initrd.img, kernel-release, packages.txt
    wheels/<key>/     *.whl for pip (PIP_NO_INDEX=1 PIP_FIND_LINKS=<dir>)
A key changes with any of its inputs, so an edit to the package list rebuilds the image and an
edit to pyproject.toml rebuilds the wheelhouse; parallel runs share one build (a file lock).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("EDGE_VM_CACHE", "/var/cache/webrtc-edge"))
BUILD_SCRIPT = "vagrant/build-image.sh"
PACKAGE_LIST = "vagrant/image-packages.txt"
IMAGE_ROOTFS = "vagrant/image/rootfs"
# The wheels are resolved by the host's Debian Python, the image's own interpreter (bookworm's
# python3.11): environment markers then pick what the VMs need (redis wants async-timeout before
# 3.11.3, for one), which a venv on another Python would get wrong.
WHEEL_PYTHON = os.environ.get("EDGE_VM_WHEEL_PYTHON", "/usr/bin/python3")
IMAGE_PYTHON = (3, 11)
IMAGE_BUILD_TIMEOUT = 1800.0
KEEP_UNUSED_DAYS = 14


class VmImageError(RuntimeError):
    """An input could not be built; the message says which and why (with its log tail)."""


@dataclass(frozen=True)
class Image:
    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def kernel_release(self) -> str:
        return (self.dir / "kernel-release").read_text().strip()


def makefile_debs(repo: Path = REPO) -> list[str]:
    """The Debian packages `make install` checks for (the Makefile's DEBS): the image has them
    all, so `make install` inside a VM never reaches for apt."""
    m = re.search(r"^DEBS\s*:?=\s*(.*)$", (repo / "Makefile").read_text(), re.MULTILINE)
    if m is None:
        raise VmImageError("no DEBS := line in the Makefile")
    return m.group(1).split()


def _digest(parts: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def image_key(repo: Path = REPO) -> str:
    """A hash of everything the image is built from."""
    parts = [
        ("build-image.sh", (repo / BUILD_SCRIPT).read_bytes()),
        ("image-packages.txt", (repo / PACKAGE_LIST).read_bytes()),
        ("debs", " ".join(makefile_debs(repo)).encode()),
        ("mirror", os.environ.get("EDGE_VM_MIRROR", "").encode()),
    ]
    rootfs = repo / IMAGE_ROOTFS
    for p in sorted(rootfs.rglob("*")):
        if p.is_file():
            mode = f"{p.stat().st_mode & 0o777:o}"
            parts.append((f"rootfs/{p.relative_to(rootfs)}:{mode}", p.read_bytes()))
    return _digest(parts)


def requirements(repo: Path = REPO) -> list[str]:
    """Everything `make install` asks pip for: pip itself (it upgrades pip first), the build
    backend of the editable install, the dependencies and the dev extra."""
    doc = tomllib.loads((repo / "pyproject.toml").read_text())
    reqs = ["pip", "wheel", *doc["build-system"]["requires"], *doc["project"]["dependencies"]]
    reqs += doc["project"].get("optional-dependencies", {}).get("dev", [])
    return reqs


def wheel_python_version() -> str:
    """The full version of WHEEL_PYTHON; an error unless it is the image's Python."""
    try:
        out = subprocess.run(
            [WHEEL_PYTHON, "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        raise VmImageError(f"cannot run {WHEEL_PYTHON}: {exc}") from None
    want = ".".join(map(str, IMAGE_PYTHON))
    if not out.startswith(f"{want}."):
        raise VmImageError(f"{WHEEL_PYTHON} is Python {out}; the image's is {want}")
    return out


def wheelhouse_key(repo: Path = REPO) -> str:
    """A hash of everything the wheelhouse is built from."""
    return _digest([
        ("pyproject.toml", (repo / "pyproject.toml").read_bytes()),
        ("requirements", "\n".join(requirements(repo)).encode()),
        ("python", wheel_python_version().encode()),
    ])  # fmt: skip


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per cache entry at a time, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune(parent: Path, keep: str) -> None:
    """Drop cache entries nobody used for KEEP_UNUSED_DAYS (other branches' images stay)."""
    cutoff = time.time() - KEEP_UNUSED_DAYS * 86400
    for entry in parent.iterdir():
        if not entry.is_dir() or entry.name == keep or ".tmp-" in entry.name:
            continue  # (a build in progress is another process's)
        stamp = entry / ".used"
        if (stamp if stamp.exists() else entry).stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            Path(f"{entry}.lock").unlink(missing_ok=True)


def _run_logged(argv: list[str], log: Path, timeout: float, what: str) -> None:
    with log.open("wb") as out:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VmImageError(f"{what} took over {timeout:.0f} s (log: {log})") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise VmImageError(f"{what} failed (exit {proc.returncode}, log: {log}):\n{tail}")


def _build_once(final: Path, build: callable, what: str) -> Path:  # type: ignore[valid-type]
    """final/ if it is complete; else build it into a temp dir and rename it in place."""
    with _locked(final.parent / f"{final.name}.lock"):
        if not (final / ".complete").exists():
            tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                t0 = time.monotonic()
                build(tmp)
                (tmp / ".complete").write_text(f"built in {time.monotonic() - t0:.0f} s\n")
                tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            print(f"vmimage: built {what} {final}", file=sys.stderr)
        (final / ".used").touch()
    return final


def ensure_image(cache: Path = DEFAULT_CACHE, repo: Path = REPO) -> Image:
    """The image for the current inputs, built first when the cache has none (a few minutes)."""
    images = cache / "images"
    key = image_key(repo)

    def build(tmp: Path) -> None:
        log = images / f"{key}.build.log"  # kept when the build fails; else moved inside
        print(f"vmimage: building the VM image {key} (log: {log})", file=sys.stderr)
        argv = ["bash", str(repo / BUILD_SCRIPT), str(tmp), *makefile_debs(repo)]
        _run_logged(argv, log, IMAGE_BUILD_TIMEOUT, "the image build")
        log.rename(tmp / "build.log")

    final = _build_once(images / key, build, "image")
    _prune(images, key)
    return Image(final)


def ensure_wheelhouse(cache: Path = DEFAULT_CACHE, repo: Path = REPO) -> Path:
    """A directory of wheels for every requirement (and their dependencies), for the image's
    Python: pip (in a throwaway venv of WHEEL_PYTHON) downloads wheels and builds any
    sdist-only one on the host."""
    wheels = cache / "wheels"
    key = wheelhouse_key(repo)

    def build(tmp: Path) -> None:
        log = wheels / f"{key}.build.log"
        venv = wheels / f"{key}.venv-{os.getpid()}"
        print(f"vmimage: building the wheelhouse {key} with pip", file=sys.stderr)
        try:
            _run_logged([WHEEL_PYTHON, "-m", "venv", str(venv)], log, 300, "python3 -m venv")
            argv = [str(venv / "bin" / "python"), "-m", "pip", "wheel", "--quiet"]
            argv += ["--wheel-dir", str(tmp), *requirements(repo)]
            _run_logged(argv, log, 900, "pip wheel")
        finally:
            shutil.rmtree(venv, ignore_errors=True)
        log.unlink()  # (not in the wheel directory: pip reads every file there)

    final = _build_once(wheels / key, build, "wheelhouse")
    _prune(wheels, key)
    return final


def checkout_files(repo: Path = REPO) -> list[str]:
    """The working tree as `git` sees it: tracked files and untracked ones not ignored (so a
    run tests uncommitted edits too). Outside git: every file but caches and the venv."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        ).stdout
        names = sorted({n for n in out.decode().split("\0") if n})
        return [n for n in names if (repo / n).is_file()]  # deleted but not yet committed
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".cache"}
        return sorted(
            str(p.relative_to(repo))
            for p in repo.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(repo).parts)
        )


def stage_checkout(dest: Path, repo: Path = REPO) -> Path:
    """dest/checkout.tar: the checkout as an operator would copy it to an edge host."""
    dest.mkdir(parents=True, exist_ok=True)
    tar = dest / "checkout.tar"
    with tarfile.open(tar, "w") as t:
        for name in checkout_files(repo):
            t.add(repo / name, arcname=name, recursive=False)
    return tar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.vmimage",
        description="Build (or reuse from the cache) the VM lab's Debian image and wheelhouse.",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE,
        help=f"cache directory (default {DEFAULT_CACHE}, env EDGE_VM_CACHE)",
    )  # fmt: skip
    parser.add_argument("--wheelhouse-only", action="store_true", help="only the wheelhouse")
    args = parser.parse_args(argv)
    try:
        wheels = ensure_wheelhouse(args.cache)
        print(f"wheelhouse: {wheels}")
        if not args.wheelhouse_only:
            image = ensure_image(args.cache)
            print(f"image: {image.disk} (kernel {image.kernel_release})")
    except VmImageError as exc:
        print(f"vmimage: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
