"""The FUSE mount against a real directory: random operation sequences, same results.

The engine's own model test (test_engine_model.py) drives the engine by inode number; this
one drives the whole stack the way programs do — path resolution, permission checks and
caching in the kernel, then the adapter, then the engine — with the same ``os`` calls on a
mounted spawn and on a plain directory (the model), and compares each outcome (the value or
the errno) and then the whole visible state: names, types, sizes, contents, link counts,
modes, symlink targets, and which names are hard links of one another.

One mount serves the whole run, to keep it fast. The spawn's base holds many copies of a
small tree; each example works in a fresh copy, so most examples start from base (not yet
copied-on-write) files, and the example's copy is deleted afterwards in both trees.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.spawn.fusemount import skip_without_fuse, start_mount

skip_without_fuse()

COPIES = 80  # fresh base trees; examples past these copy the template in through the mount
MIN_STEPS = 1000

NAMES = st.sampled_from([b"a", b"b", b"c", b"d1", b"d2"])
DIRS = st.sampled_from([b"", b"d1", b"d2", b"d1/d2"])
DATA = st.binary(max_size=3000) | st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 140_000), st.integers(0, 255))
OFFSETS = st.integers(0, 200_000)
# Relative targets without "..": whatever they resolve to stays inside the example's tree.
TARGETS = st.sampled_from([b"a", b"d1/b", b"d1", b"zz", b"c"])
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(a: bytes, b: bytes, flags: int) -> None:
    if _libc.renameat2(-100, a, -100, b, ctypes.c_uint(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def make_template(top: Path) -> None:
    (top / "d1").mkdir(parents=True)
    (top / "a").write_bytes(os.urandom(100_000))
    (top / "d1" / "b").write_bytes(b"base file")
    os.symlink("a", top / "c")


@dataclass
class World:
    """What the whole run shares: the mount, the model, the template, a step count."""

    mnt: Path
    model: Path
    template: Path
    examples: int = 0
    steps: int = 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fusemodel")
    template = tmp / "template"
    make_template(template)
    base = tmp / "base"
    base.mkdir()
    for i in range(COPIES):
        shutil.copytree(template, base / f"s{i}", symlinks=True)
    model = tmp / "model"
    model.mkdir()
    m = start_mount(tmp, base)
    try:
        yield World(m.path, model, template)
    finally:
        m.stop(remove=True)
    assert "Traceback" not in m.stderr(), m.stderr()


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", e.errno)


class FuseVsDisk(RuleBasedStateMachine):
    w: World  # set by the test

    def __init__(self) -> None:
        super().__init__()
        w = self.w
        i = w.examples
        w.examples += 1
        name = f"s{i}"
        self.fuse = os.fsencode(w.mnt / name)
        self.model = os.fsencode(w.model / name)
        if i >= COPIES:
            shutil.copytree(w.template, os.fsdecode(self.fuse), symlinks=True)
        shutil.copytree(w.template, os.fsdecode(self.model), symlinks=True)

    def teardown(self) -> None:
        for top in (self.fuse, self.model):
            os.chmod(top, 0o755)
            shutil.rmtree(top)
        assert not os.path.exists(self.fuse)

    # -- helpers -------------------------------------------------------------------------

    def both(self, fn: Callable[[bytes], Any]) -> tuple[str, Any]:
        """Run ``fn(top)`` on both trees; the same value or the same errno."""
        self.w.steps += 1
        a, b = _outcome(lambda: fn(self.fuse)), _outcome(lambda: fn(self.model))
        assert a == b, (a, b)
        return a

    @staticmethod
    def path(top: bytes, d: bytes, n: bytes = b"") -> bytes:
        return os.path.join(top, d, n) if d else os.path.join(top, n)

    # -- rules ---------------------------------------------------------------------------

    @rule(d=DIRS, n=NAMES, data=DATA)
    def create_write(self, d: bytes, n: bytes, data: bytes) -> None:
        def op(top: bytes) -> None:
            with open(self.path(top, d, n), "wb") as f:
                f.write(data)

        self.both(op)

    @rule(d=DIRS, n=NAMES, off=OFFSETS, data=DATA, append=st.booleans())
    def write_at(self, d: bytes, n: bytes, off: int, data: bytes, append: bool) -> None:
        def op(top: bytes) -> int:
            fd = os.open(self.path(top, d, n), os.O_WRONLY | (os.O_APPEND if append else 0))
            try:
                return os.write(fd, data) if append else os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        self.both(op)

    @rule(d=DIRS, n=NAMES, off=OFFSETS, size=st.integers(0, 70_000))
    def read_at(self, d: bytes, n: bytes, off: int, size: int) -> None:
        def op(top: bytes) -> bytes:
            fd = os.open(self.path(top, d, n), os.O_RDONLY)
            try:
                return os.pread(fd, size, off)
            finally:
                os.close(fd)

        self.both(op)

    @rule(d=DIRS, n=NAMES, size=OFFSETS)
    def truncate(self, d: bytes, n: bytes, size: int) -> None:
        self.both(lambda top: os.truncate(self.path(top, d, n), size))

    @rule(d=DIRS, n=NAMES)
    def mkdir(self, d: bytes, n: bytes) -> None:
        self.both(lambda top: os.mkdir(self.path(top, d, n)))

    @rule(d=DIRS, n=NAMES)
    def rmdir(self, d: bytes, n: bytes) -> None:
        self.both(lambda top: os.rmdir(self.path(top, d, n)))

    @rule(d=DIRS, n=NAMES)
    def unlink(self, d: bytes, n: bytes) -> None:
        self.both(lambda top: os.unlink(self.path(top, d, n)))

    @rule(d=DIRS, n=NAMES, data=st.binary(min_size=1, max_size=5000))
    def unlink_while_open(self, d: bytes, n: bytes, data: bytes) -> None:
        """Open, unlink, write and read through the descriptor: the data stays reachable."""

        def op(top: bytes) -> tuple[bytes, int]:
            fd = os.open(self.path(top, d, n), os.O_RDWR)
            try:
                os.unlink(self.path(top, d, n))
                os.pwrite(fd, data, 10)
                return os.pread(fd, 20_000, 0), os.fstat(fd).st_nlink
            finally:
                os.close(fd)

        self.both(op)

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES, flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, d1: bytes, n1: bytes, d2: bytes, n2: bytes, flags: int) -> None:
        """Also: the inode number moves with the name (invariant 7)."""
        src, dst = self.path(self.fuse, d1, n1), self.path(self.fuse, d2, n2)
        before = [_outcome(lambda p=p: os.lstat(p).st_ino) for p in (src, dst)]
        r = self.both(lambda top: renameat2(self.path(top, d1, n1), self.path(top, d2, n2), flags))
        if r[0] == "ok":
            if flags == RENAME_EXCHANGE:
                assert (os.lstat(src).st_ino, os.lstat(dst).st_ino) == (before[1][1], before[0][1])
            else:
                assert os.lstat(dst).st_ino == before[0][1]

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES)
    def link(self, d1: bytes, n1: bytes, d2: bytes, n2: bytes) -> None:
        self.both(lambda top: os.link(self.path(top, d1, n1), self.path(top, d2, n2), follow_symlinks=False))

    @rule(d=DIRS, n=NAMES, dest=TARGETS)
    def symlink(self, d: bytes, n: bytes, dest: bytes) -> None:
        self.both(lambda top: os.symlink(dest, self.path(top, d, n)))

    @rule(d=DIRS, n=NAMES, mode=st.sampled_from([0o600, 0o755, 0o4711, 0o640, 0o2750, 0o1777]))
    def chmod(self, d: bytes, n: bytes, mode: int) -> None:
        self.both(lambda top: os.chmod(self.path(top, d, n), mode))

    # -- the comparison ------------------------------------------------------------------

    #: Compare link counts and which names share an inode (a protocol without them, such as
    #: SFTP v3 under sshfs, turns this off).
    links = True

    @invariant()
    def same_tree(self) -> None:
        assert self.state(self.fuse, self.links) == self.state(self.model, self.links)

    @staticmethod
    def state(top: bytes, links: bool = True) -> tuple[dict[bytes, dict[str, Any]], list[list[bytes]]]:
        """Everything visible under *top*, and the groups of names sharing an inode."""
        out: dict[bytes, dict[str, Any]] = {}
        inos: dict[int, list[bytes]] = {}
        stack = [b""]
        while stack:
            rel = stack.pop()
            here = os.path.join(top, rel) if rel else top
            for name in sorted(os.listdir(here)):
                r = os.path.join(rel, name) if rel else name
                full = os.path.join(top, r)
                s = os.lstat(full)
                d: dict[str, Any] = {"mode": s.st_mode}
                if links:
                    d["nlink"] = s.st_nlink
                if stat.S_ISREG(s.st_mode):
                    d["size"] = s.st_size
                    with open(full, "rb") as f:
                        d["data"] = f.read()
                elif stat.S_ISLNK(s.st_mode):
                    d["target"] = os.readlink(full)
                elif stat.S_ISDIR(s.st_mode):
                    stack.append(r)
                if links and not stat.S_ISDIR(s.st_mode):
                    inos.setdefault(s.st_ino, []).append(r)
                out[r] = d
        return out, sorted(sorted(g) for g in inos.values() if len(g) > 1)


SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def test_fuse_vs_disk(world: World) -> None:
    class Machine(FuseVsDisk):
        w = world

    run_state_machine_as_test(Machine, settings=SETTINGS)
    print(f"\nFUSE model: {world.steps} steps in {world.examples} examples")
    assert world.steps >= MIN_STEPS, f"only {world.steps} steps ran"
