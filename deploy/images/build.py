"""Build the container images without a registry (`make images`).

    .venv/bin/python deploy/images/build.py [--base-image IMAGE] [--only NAME] [--json]

Images (podman/buildah, local storage):
  localhost/webrtc-edge/base:bookworm   Debian bookworm minbase + python3, made with mmdebstrap
                                        and `podman import` (the default BASE_IMAGE)
  localhost/webrtc-edge/relay:KEY       relayctl with bcc and a generic kernel header tree
  localhost/webrtc-edge/transceiver:KEY `transceiver serve`, non-root
  localhost/webrtc-edge/redis:KEY       Debian's redis-server, non-root

KEY is a hash of everything an image is made of (its Containerfile, pinned requirements,
wheels, the project's sources, the base image's id), so a build whose inputs did not change is
skipped and tests can ask for "the images of this tree". Each image is also tagged :latest.

Reproducible: Python dependencies are pinned by hash (requirements/*.txt, from lock.py) and
installed from a wheelhouse filled here from PyPI, never resolved in the build; layers get
SOURCE_DATE_EPOCH (the last commit's time) as timestamp; no caches stay in a layer. Debian
packages come from the mirror at build time (the base image pins what was there when it was
made; rebuild it with --rebuild-base).

The Containerfiles build FROM any Debian bookworm image (--base-image
docker.io/library/debian:bookworm-slim, given a registry); the context they expect is the one
this script assembles in deploy/images/.build/context.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from lock import TARGET  # noqa: E402  (the wheel platform, shared with the lock)

REPO = "localhost/webrtc-edge"
DEFAULT_BASE = f"{REPO}/base:bookworm"
IMAGES = ("relay", "transceiver", "redis")
BUILD = HERE / ".build"
CONTEXT = BUILD / "context"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"


def _shipped_packages() -> tuple[str, ...]:
    """The packages the wheel ships, as pyproject.toml says (lab/ is dev-only and stays out)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        found = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return tuple(p.rstrip("*") for p in found)


# The project's sources that go into an image (the relay and transceiver images install the
# project; bpf/ is what relayctl compiles).
SOURCES = ("pyproject.toml", "README.md", *_shipped_packages(), "bpf")
# Per image: pinned runtime requirements, extra context files.
NEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    "relay": {"requirements": ("relay", "build"), "files": ("relay-load",)},
    "transceiver": {"requirements": ("transceiver", "build"), "files": ()},
    "redis": {"requirements": (), "files": ()},
}
# Slim like debian:bookworm-slim: no manuals, docs (copyright files stay) or translations.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/lintian/*",
)  # fmt: skip


class BuildError(RuntimeError):
    """A step failed; the message says which and where its log is."""


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], logfile: Path | None = None, **kw: object) -> str:
    """Run a command; its output goes to `logfile` (shown on failure) or is returned."""
    if logfile is None:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
        if proc.returncode != 0:
            raise BuildError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
        return str(proc.stdout)
    with logfile.open("w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace")[-3000:]
        cmd = " ".join(argv[:3])
        raise BuildError(f"`{cmd} ...` exited {proc.returncode} (log {logfile}):\n{tail}")
    return ""


def source_date_epoch() -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    try:
        return int(run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"]).strip())
    except (BuildError, ValueError):
        return 0


def podman_image_id(ref: str) -> str | None:
    proc = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def image_size(ref: str) -> int:
    return int(run(["podman", "image", "inspect", "--format", "{{.Size}}", ref]).strip())


# --- the base image ------------------------------------------------------------------------------


def build_base(ref: str, epoch: int) -> None:
    """Debian bookworm minbase + python3 (and security updates), as one imported layer."""
    log(f"making {ref} with mmdebstrap (about a minute)")
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="base-", dir=BUILD) as tmp:
        tar = Path(tmp) / "base.tar"
        argv = ["mmdebstrap", "--variant=minbase", "--mode=auto", "--include=python3"]
        argv += ["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]  # no usrmerge (perl)
        argv += [f"--dpkgopt={o}" for o in DPKG_EXCLUDES]
        argv += ['--aptopt=Acquire::Languages "none"', "--aptopt=APT::Install-Recommends false"]
        argv += ["--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*"]
        argv += ["bookworm", str(tar)]
        argv += [f"deb {MIRROR} bookworm main", f"deb {MIRROR} bookworm-updates main"]
        argv += [f"deb {SECURITY} bookworm-security main"]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        run(argv, BUILD / "base.log", env=env)
        changes = ["ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        changes += ['CMD=["/bin/bash"]', "LABEL=org.opencontainers.image.title=webrtc-edge-base"]
        argv = ["podman", "import"] + [f"--change={c}" for c in changes] + [str(tar), ref]
        run(argv, BUILD / "base-import.log")


# --- the build context ---------------------------------------------------------------------------


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def assemble_context() -> None:
    """deploy/images/.build/context: Containerfiles, requirements, wheels, sources, scripts."""
    CONTEXT.mkdir(parents=True, exist_ok=True)
    for name in ("requirements", "src"):
        shutil.rmtree(CONTEXT / name, ignore_errors=True)
    shutil.copytree(HERE / "requirements", CONTEXT / "requirements")
    for item in SOURCES:
        src = ROOT / item
        for f in _files(src):
            dest = CONTEXT / "src" / f.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
    for f in HERE.glob("Containerfile.*"):
        shutil.copy2(f, CONTEXT / f.name)
    for extra in ("relay-load",):
        shutil.copy2(HERE / extra, CONTEXT / extra)
    for req in ("relay", "transceiver", "build"):
        fill_wheels(req)


def fill_wheels(req: str) -> None:
    """wheels/<req>/: exactly the wheels requirements/<req>.txt pins (pip checks the hashes)."""
    dest = CONTEXT / "wheels" / req
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes"]
    argv += [*TARGET, "-d", str(dest), "-r", str(HERE / "requirements" / f"{req}.txt")]
    run(argv, BUILD / f"wheels-{req}.log")


def input_key(image: str, base_id: str, base_ref: str) -> str:
    """A hash of everything the image is made of: same inputs, same key, no rebuild."""
    h = hashlib.sha256(f"{image}\0{base_ref}\0{base_id}\0".encode())
    paths = [CONTEXT / f"Containerfile.{image}"]
    paths += [CONTEXT / f for f in NEEDS[image]["files"]]
    for req in NEEDS[image]["requirements"]:
        paths += [CONTEXT / "requirements" / f"{req}.txt", *_files(CONTEXT / "wheels" / req)]
    if NEEDS[image]["requirements"]:
        paths += _files(CONTEXT / "src")
    for p in paths:
        h.update(str(p.relative_to(CONTEXT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_image(image: str, base_ref: str, ref: str, epoch: int) -> None:
    argv = ["podman", "build", "--network=host", f"--timestamp={epoch}", "--pull=never"]
    argv += [f"--build-arg=BASE_IMAGE={base_ref}", f"--build-arg=SOURCE_DATE_EPOCH={epoch}"]
    argv += ["-f", str(CONTEXT / f"Containerfile.{image}"), "-t", ref]
    argv += ["-t", f"{REPO}/{image}:latest", str(CONTEXT)]
    run(argv, BUILD / f"build-{image}.log")


# --- main ----------------------------------------------------------------------------------------


def build(base_ref: str, only: list[str], rebuild_base: bool) -> dict[str, dict[str, object]]:
    epoch = source_date_epoch()
    if base_ref == DEFAULT_BASE and (rebuild_base or podman_image_id(base_ref) is None):
        t0 = time.monotonic()
        build_base(base_ref, epoch)
        log(f"base image made in {time.monotonic() - t0:.0f} s")
    base_id = podman_image_id(base_ref)
    if base_id is None:
        raise BuildError(f"base image {base_ref} is not in local storage (no registry here)")
    assemble_context()
    result: dict[str, dict[str, object]] = {}
    for image in only or IMAGES:
        ref = f"{REPO}/{image}:{input_key(image, base_id, base_ref)}"
        built = False
        if podman_image_id(ref) is None:
            log(f"building {ref}")
            t0 = time.monotonic()
            build_image(image, base_ref, ref, epoch)
            log(f"built {image} in {time.monotonic() - t0:.0f} s")
            built = True
            prune(image, ref)
        result[image] = {"ref": ref, "size": image_size(ref), "built": built}
    return result


def prune(image: str, keep: str) -> None:
    """Remove this image's older builds (tags of other keys) that no container uses."""
    out = run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{REPO}/{image}"])
    for ref in out.split():
        if ref not in (keep, f"{REPO}/{image}:latest"):
            subprocess.run(["podman", "rmi", ref], capture_output=True, check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Build the webrtc-edge container images (no registry needed).",
        epilog="Images already built from the same inputs are not built again.",
    )
    ap.add_argument(
        "--base-image",
        default=os.environ.get("BASE_IMAGE", DEFAULT_BASE),
        help=f"FROM image of every Containerfile (env BASE_IMAGE) [default: {DEFAULT_BASE}, "
        "made here with mmdebstrap]",
    )
    ap.add_argument("--only", action="append", choices=IMAGES, help="build only this image")
    ap.add_argument("--rebuild-base", action="store_true", help="make the base image anew")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            print(f"images: {tool} is not installed: run `make images`", file=sys.stderr)
            return 2
    BUILD.mkdir(parents=True, exist_ok=True)
    with (BUILD / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per tree at a time (parallel test runs)
        try:
            result = build(args.base_image, args.only or [], args.rebuild_base)
        except BuildError as exc:
            print(f"images: error: {exc}", file=sys.stderr)
            return 1
    (BUILD / "images.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in result.values():
            note = "built" if r["built"] else "up to date"
            print(f"{r['ref']:<52} {int(r['size']) / 1e6:7.1f} MB  {note}")  # type: ignore[call-overload]
    return 0


if __name__ == "__main__":
    sys.exit(main())
