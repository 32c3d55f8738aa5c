"""The engine's permission rules (spawn.access) at the engine itself: the same answers every
exporter passes on. tests/posix checks them as real users against ext4 through a mount; these
pin the engine's own calls, including what no exporter can send (a forged uid in a create)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from spawn.cred import ROOT, Cred
from spawn.engine import MAX_FILE_SIZE, Engine
from spawn.importer import Importer
from store.memory import MemoryStore

ALICE = Cred(1001, 1001, frozenset({1001, 3000}))
BOB = Cred(1002, 1002, frozenset({1002}))


@pytest.fixture
def e(tmp_path):
    (tmp_path / "empty").mkdir()
    store = MemoryStore()
    eng = Engine(store, tmp_path / "ov", Importer(store).run(tmp_path / "empty"))
    eng.setattr(ROOT, 1, mode=0o1777)  # the root directory: like /tmp
    yield eng
    eng.close()


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    return ei.value.errno


def test_new_files_belong_to_the_caller_and_inherit_a_setgid_group(e) -> None:
    a = e.create(ALICE, 1, b"f", 0o644)
    assert (a.uid, a.gid) == (1001, 1001)
    d = e.mkdir(ALICE, 1, b"shared", 0o2777)
    assert not d.mode & stat.S_ISGID  # mkdir takes permission bits and sticky only, as Linux
    e.setattr(ALICE, d.ino, gid=3000, mode=0o2777)  # to a group of her own, setgid
    b = e.create(BOB, d.ino, b"g", 0o2755)  # setgid of a group bob is not in: dropped
    assert (b.uid, b.gid, stat.S_IMODE(b.mode)) == (1002, 3000, 0o755)
    sub = e.mkdir(BOB, d.ino, b"sub", 0o755)
    assert sub.gid == 3000 and sub.mode & stat.S_ISGID  # directories stay setgid


def test_permission_bits_owner_class_wins(e) -> None:
    a = e.create(ALICE, 1, b"f", 0o077)
    assert errno_of(e.open, ALICE, a.ino, os.O_RDONLY) == errno.EACCES  # owner has nothing
    e.open(BOB, a.ino, os.O_RDWR)  # others have everything
    e.open(ROOT, a.ino, os.O_RDWR)
    d = e.mkdir(ALICE, 1, b"d", 0o700)
    assert errno_of(e.lookup, BOB, d.ino, b"x") == errno.EACCES  # before ENOENT
    assert errno_of(e.readdir, BOB, d.ino) == errno.EACCES
    assert errno_of(e.create, BOB, d.ino, b"x", 0o644) == errno.EACCES
    assert e.lookup(ALICE, 1, b"d").ino == d.ino


def test_sticky_directory_and_ownership_changes(e) -> None:
    a = e.create(ALICE, 1, b"hers", 0o666)
    assert errno_of(e.unlink, BOB, 1, b"hers") == errno.EPERM
    assert errno_of(e.rename, BOB, 1, b"hers", 1, b"his") == errno.EPERM
    assert errno_of(e.setattr, BOB, a.ino, mode=0o600) == errno.EPERM
    assert errno_of(e.setattr, ALICE, a.ino, uid=1002) == errno.EPERM
    assert errno_of(e.setattr, ALICE, a.ino, gid=1002) == errno.EPERM  # not her group
    assert errno_of(e.setattr, BOB, a.ino, atime_ns=5, mtime_ns=5) == errno.EPERM
    e.setattr(BOB, a.ino, atime_ns=-1, mtime_ns=-1)  # "now" needs write permission only
    e.setattr(ROOT, a.ino, uid=1002)
    e.unlink(BOB, 1, b"hers")  # his now


def test_setuid_is_dropped_by_writes_truncations_and_chowns(e) -> None:
    a = e.create(ALICE, 1, b"tool", 0o6777)
    e.write(BOB, a.ino, 0, b"x")
    assert stat.S_IMODE(e.getattr(ROOT, a.ino).mode) == 0o777
    e.setattr(ALICE, a.ino, mode=0o6777)
    e.write(ROOT, a.ino, 0, b"y")  # root keeps them
    assert stat.S_IMODE(e.getattr(ROOT, a.ino).mode) == 0o6777
    e.setattr(ROOT, a.ino, chown=True)  # chown(f, -1, -1), even by root
    assert stat.S_IMODE(e.getattr(ROOT, a.ino).mode) == 0o777
    e.setattr(ALICE, a.ino, mode=0o4755)
    assert errno_of(e.setattr, BOB, a.ino, chown=True) == errno.EPERM  # a stranger's chown


def test_devices_whiteouts_and_protected_hardlinks(e) -> None:
    blk = stat.S_IFBLK | 0o666
    assert errno_of(e.mknod, ALICE, 1, b"disk", blk, os.makedev(8, 0)) == errno.EPERM
    e.mknod(ALICE, 1, b"fifo", stat.S_IFIFO | 0o600, 0)
    e.mknod(ROOT, 1, b"disk", blk, os.makedev(8, 0))
    assert errno_of(e.rename, ALICE, 1, b"fifo", 1, b"f2", whiteout=True) == errno.EPERM
    secret = e.create(ROOT, 1, b"shadow", 0o600)
    assert errno_of(e.link, ALICE, secret.ino, 1, b"mine") == errno.EPERM
    e.link(ROOT, secret.ino, 1, b"roots")


def test_xattr_namespaces(e) -> None:
    a = e.create(ALICE, 1, b"f", 0o644)
    e.setxattr(ALICE, a.ino, b"user.tag", b"v")
    assert errno_of(e.setxattr, BOB, a.ino, b"user.tag", b"w") == errno.EACCES
    assert e.getxattr(BOB, a.ino, b"user.tag") == b"v"
    assert errno_of(e.setxattr, ALICE, a.ino, b"trusted.x", b"v") == errno.EPERM
    assert errno_of(e.setxattr, ALICE, a.ino, b"security.capability", b"v") == errno.EPERM
    e.setxattr(ROOT, a.ino, b"trusted.x", b"v")
    assert e.listxattr(ALICE, a.ino) == [b"user.tag"]  # trusted.* is root's to see
    assert errno_of(e.getxattr, ALICE, a.ino, b"trusted.x") == errno.ENODATA


def test_sizes_beyond_ext4s_largest_file_are_efbig(e) -> None:
    a = e.create(ALICE, 1, b"f", 0o644)
    assert errno_of(e.setattr, ALICE, a.ino, size=MAX_FILE_SIZE + 1) == errno.EFBIG
    assert errno_of(e.write, ALICE, a.ino, MAX_FILE_SIZE, b"x") == errno.EFBIG
    assert e.getattr(ROOT, a.ino).size == 0
    e.setattr(ALICE, a.ino, size=MAX_FILE_SIZE)  # sparse, and allowed
