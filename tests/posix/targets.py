"""The trees the permission cases run on, each a context manager that yields a root directory
(every user may search it) and tears everything down after. See harness.py for the model."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.grid.gridnode import ROOT, Node, new_node
from tests.posix import harness
from tests.posix.harness import Case, Outcome, Users

# A target runs the cases and returns what it answered: cases, users -> outcomes
Runner = Callable[[list[Case], Users], dict[str, Outcome]]

LOCAL = "/var/tmp"  # on this machine's local disk (ext4); /tmp may be a tmpfs elsewhere


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=LOCAL))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fs_type(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def run_ext4(cases: list[Case], users: Users) -> dict[str, Outcome]:
    """A plain directory on the local disk: the reference, and (run again) the sanity target."""
    with scratch("posix-ext4-") as root:
        return harness.run(root, cases, users)


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def overlay(base: Path) -> Iterator[tuple[Path, Path]]:
    """Kernel overlayfs over *base*/lower (upper and work beside it): (lower, merged)."""
    lower, upper, work, merged = (base / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
        os.chmod(d, 0o755)
    try:
        yield lower, merged
    finally:
        _umount(merged)
        if os.path.ismount(merged):  # never let scratch() remove files through a mount
            raise RuntimeError(f"{merged} is still mounted")


# Directories renamed out of the lower layer (redirect_dir) and hard links kept whole on
# copy-up (index): without them overlayfs answers EXDEV and breaks links, by design.
OVERLAY_OPTIONS = "redirect_dir=on,index=on"


def _mount_overlay(base: Path) -> None:
    opts = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work,{OVERLAY_OPTIONS}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "merged")],
                   check=True, capture_output=True)


def run_overlay(cases: list[Case], users: Users) -> dict[str, Outcome]:
    """Everything through the merged tree (setup and steps land in the upper layer)."""
    with scratch("posix-ovl-") as base, overlay(base) as (_, merged):
        _mount_overlay(base)
        return harness.run(merged, cases, users)


def run_overlay_lower(cases: list[Case], users: Users) -> dict[str, Outcome]:
    """Setup in the lower layer before the mount, steps through the merged tree: every change
    is a copy-up, as in a spawn whose files come from its base tree."""
    with scratch("posix-ovl-lower-") as base, overlay(base) as (lower, merged):
        prepared = harness.prepare(lower, cases, users)
        _mount_overlay(base)
        return harness.run(merged, cases, users, prepared)


def overlay_available() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == "overlay" for line in f if line.strip())


# -- grid spawns --------------------------------------------------------------------------------

ISSUE = "needs grid share (issue 14)"


@functools.cache
def share_available() -> bool:
    """Whether this tree's grid has `grid share` (the grid targets need it to let the test
    users into a spawn; without it the daemon refuses every uid but the owner's and root's)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")
    p = subprocess.run([sys.executable, "-m", "grid.cli.main", "share", "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    return p.returncode == 0


def share_all(node: Node, sid: str, users: Users) -> None:
    """Let every actor into spawn *sid*: alice and carol by name, bob through @g1 (alice is in
    g1 as well, so both forms are used). Does nothing before `grid share` exists."""
    if not share_available():
        return
    for who in (users.unix["alice"], "@" + users.unix["g1"], users.unix["carol"]):
        node.grid("share", sid, who)


@contextlib.contextmanager
def grid_node(users: Users, fill: Callable[[Path], object] | None = None) -> Iterator[Node]:
    """A node whose daemon runs, with the test users known by uid and a tree "posix" imported
    from a directory that *fill* fills (by default one README)."""
    node = new_node()
    try:
        node.init()
        src = node.base / "src"
        src.mkdir()
        os.chmod(src, 0o755)
        if fill is None:
            (src / "README").write_text("the posix permission cases run beside this file\n")
        else:
            fill(src)
        node.grid("import", str(src), "posix")
        for actor, uid in users.uids.items():
            if actor != "root":
                node.grid("user", "add", users.unix[actor], "--uid", str(uid))
        node.start()
        yield node
    finally:
        node.close()


def run_grid_fuse(cases: list[Case], users: Users) -> dict[str, Outcome]:
    """A spawn of root's, mounted by root with FUSE (default_permissions, allow_other), shared
    with the test users; setup and steps through the mount."""
    with grid_node(users) as node:
        m = node.base / "m"
        m.mkdir()
        os.chmod(m, 0o755)
        sid = node.grid("spawn", "-q", "posix", "--mount", str(m)).stdout.strip()
        share_all(node, sid, users)
        os.chmod(m, 0o755)  # the spawn's root: every user may search it, as the cases assume
        return harness.run(m, cases, users)


def run_grid_fuse_base(cases: list[Case], users: Users) -> dict[str, Outcome]:
    """Setup in the tree that `grid import` reads, steps through a FUSE mount of a spawn of it:
    every change is a copy-on-write of a file from the base tree (the overlayfs-lower of grid)."""
    prepared: dict[str, Outcome] = {}
    with grid_node(users, lambda src: prepared.update(harness.prepare(src, cases, users))) as node:
        m = node.base / "m"
        m.mkdir()
        os.chmod(m, 0o755)
        sid = node.grid("spawn", "-q", "posix", "--mount", str(m)).stdout.strip()
        share_all(node, sid, users)
        return harness.run(m, cases, users, prepared)


def run_grid_9p_client(cases: list[Case], users: Users) -> dict[str, Outcome]:
    """A spawn of root's, shared with the users, reached through 9P2000.L messages with no
    kernel client: every step is sent by spawn.ninep.client from a child that has become
    the step's user (tests/posix/ninep_exec.py), so the daemon alone answers."""
    from tests.posix.ninep_exec import NinepExecutor

    with grid_node(users) as node:
        sid = node.grid("spawn", "-q", "posix").stdout.strip()
        share_all(node, sid, users)
        return harness.run(NinepExecutor(node.home / "run" / "9p.sock", sid), cases, users)


def ninep_available() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == "9p" for line in f if line.strip())


def run_grid_9p(cases: list[Case], users: Users) -> dict[str, Outcome]:
    """The same spawn through the kernel's 9P client (9P2000.L over the daemon's Unix socket,
    access=user so each user attaches as itself). NOT YET RUN: no test of the project mounts 9P
    with the kernel yet, and the development VM's kernel has no 9p filesystem; the options are
    the kernel's documented ones (Documentation/filesystems/9p.rst)."""
    with grid_node(users) as node:
        m = node.base / "m9"
        m.mkdir()
        os.chmod(m, 0o755)
        sid = node.grid("spawn", "-q", "posix").stdout.strip()
        share_all(node, sid, users)
        sock = node.home / "run" / "9p.sock"
        opts = f"trans=unix,version=9p2000.L,access=user,aname={sid},cache=none"
        subprocess.run(["mount", "-t", "9p", "-o", opts, str(sock), str(m)], check=True,
                       capture_output=True)
        try:
            return harness.run(m, cases, users)
        finally:
            _umount(m)
