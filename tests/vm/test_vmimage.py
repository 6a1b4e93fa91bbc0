"""The VM lab's build inputs (lab/vmimage.py): what the cache keys on, what the wheelhouse and
the image get, what is copied into the VMs. Fast: these run under `make test` too."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lab import vmimage

REPO = vmimage.REPO


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the files the keys read, to change one at a time."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "vagrant", root / "vagrant", ignore=shutil.ignore_patterns(".vagrant"))
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    return root


def test_image_key_follows_every_input(repo: Path) -> None:
    base = vmimage.image_key(repo)
    assert base == vmimage.image_key(REPO) and len(base) == 16
    seen = {base}

    def changed(what: str) -> None:
        key = vmimage.image_key(repo)
        assert key not in seen, f"the key ignores {what}"
        seen.add(key)

    pkgs = repo / vmimage.PACKAGE_LIST
    pkgs.write_text(pkgs.read_text() + "strace\n")
    changed("the package list")
    script = repo / vmimage.BUILD_SCRIPT
    script.write_text(script.read_text() + "\n# edit\n")
    changed("the build script")
    seed = repo / vmimage.IMAGE_ROOTFS / "usr/local/sbin/edge-seed"
    seed.chmod(0o644)
    changed("a rootfs file's mode")
    (repo / vmimage.IMAGE_ROOTFS / "etc/new.conf").write_text("x\n")
    changed("a new rootfs file")
    mk = repo / "Makefile"
    mk.write_text(mk.read_text().replace("DEBS := ", "DEBS := strace ", 1))
    changed("the Makefile's DEBS")


def test_the_image_gets_every_package_make_install_checks_for() -> None:
    debs = vmimage.makefile_debs()
    assert {"python3-bpfcc", "python3-venv", "redis-server", "iproute2"} <= set(debs)
    listed = {
        line.split()[0]
        for line in (REPO / vmimage.PACKAGE_LIST).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # What an edge host needs besides: the headers bcc compiles against, bpftool, the kernel.
    assert {"linux-image-amd64", "linux-headers-amd64", "bpftool", "openssh-server"} <= listed


def test_wheelhouse_covers_make_install_and_keys_on_pyproject(repo: Path) -> None:
    reqs = vmimage.requirements(repo)
    names = {r.split(">")[0].split("=")[0].split("[")[0] for r in reqs}
    # pip (make install upgrades it first), the build backend, dependencies and the dev extra
    assert {"pip", "setuptools", "aiortc", "redis", "pytest", "ruff"} <= names
    base = vmimage.wheelhouse_key(repo)
    py = repo / "pyproject.toml"
    py.write_text(py.read_text().replace('"click>=8.1",', '"click>=8.1",\n    "attrs",'))
    assert vmimage.wheelhouse_key(repo) != base


def test_checkout_is_the_working_tree_without_ignored_files(tmp_path: Path) -> None:
    repo = tmp_path / "co"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / ".gitignore").write_text(".venv/\n")
    (repo / "tracked.py").write_text("1\n")
    (repo / "gone.py").write_text("2\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (repo / "gone.py").unlink()  # deleted, not committed yet
    (repo / "new.py").write_text("3\n")  # untracked
    (repo / ".venv").mkdir()
    (repo / ".venv" / "big").write_text("ignored\n")
    assert vmimage.checkout_files(repo) == [".gitignore", "new.py", "tracked.py"]
    tar = vmimage.stage_checkout(tmp_path / "share", repo)
    with tarfile.open(tar) as t:
        assert sorted(t.getnames()) == [".gitignore", "new.py", "tracked.py"]
        assert t.extractfile("new.py").read() == b"3\n"  # type: ignore[union-attr]


def test_a_build_failure_leaves_no_entry_and_is_retried(tmp_path: Path) -> None:
    calls: list[Path] = []

    def fails(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "half").write_text("x")
        raise vmimage.VmImageError("no")

    final = tmp_path / "images" / "k"
    with pytest.raises(vmimage.VmImageError):
        vmimage._build_once(final, fails, "test")
    assert not final.exists() and not calls[0].exists()

    def works(tmp: Path) -> None:
        (tmp / "disk").write_text("ok")

    assert vmimage._build_once(final, works, "test") == final
    assert (final / "disk").read_text() == "ok" and (final / ".complete").exists()
    assert vmimage._build_once(final, fails, "test") == final  # cached: not built again
    assert len(calls) == 1
