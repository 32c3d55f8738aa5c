"""The FUSE exporter on real mounts: POSIX calls through the kernel, against the engine.

Each test drives a mounted spawn with plain ``os`` calls, as any program would. The exporter
runs in its own process (``python -m spawn.fuse_main``), except in the coherence test, which
needs to reach the engine from outside the mount, as a 9P session would.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.spawn.fusemount import Mount, mounted_on, skip_without_fuse, start_mount
from tests.spawn.treecompare import snapshot

skip_without_fuse()

BIG = os.urandom(300_000)


def make_source(src: Path) -> None:
    """A small tree with one of each kind of thing the archive keeps."""
    (src / "d" / "e").mkdir(parents=True)
    (src / "hello").write_bytes(b"hello, world\n")
    (src / "big").write_bytes(BIG)
    (src / "empty").write_bytes(b"")
    (src / "d" / "f").write_bytes(b"in d\n")
    (src / "d" / "e" / "g").write_bytes(b"deep\n" * 1000)
    os.link(src / "hello", src / "d" / "hello-link")
    os.symlink("big", src / "lnk")
    os.symlink("../nowhere", src / "d" / "dangling")
    os.mkfifo(src / "fifo")
    with open(src / "sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    os.setxattr(src / "hello", "user.color", b"blue")
    os.chmod(src / "d" / "f", 0o640)
    src.chmod(0o755)
    os.utime(src / "hello", ns=(1_000_000_123, 2_000_000_456))


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("fuse") / "src"
    p.mkdir()
    make_source(p)
    return p


@pytest.fixture(scope="module")
def mnt(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    m = start_mount(tmp_path_factory.mktemp("fusemnt"), src)
    try:
        yield m.path
    finally:
        m.stop(remove=True)
    assert "Traceback" not in m.stderr(), m.stderr()  # no request ended in EIO


@pytest.fixture
def work(mnt: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory in the shared mount for one test."""
    d = mnt / request.node.name
    d.mkdir()
    return d


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    return ei.value.errno


# -- the base tree ------------------------------------------------------------------------

def test_base_tree_identical(src: Path, mnt: Path) -> None:
    """Every name, mode, owner, time, xattr, link count, symlink target and byte of the
    source comes through the mount unchanged (work dirs made by other tests left out)."""
    ours = snapshot(src, atime=False)
    theirs = snapshot(mnt, atime=False)
    theirs["meta"] = {k: v for k, v in theirs["meta"].items() if k in ours["meta"]}
    assert theirs == ours


def test_read_base_files(src: Path, mnt: Path) -> None:
    assert (mnt / "big").read_bytes() == BIG
    assert (mnt / "hello").read_bytes() == b"hello, world\n"
    assert (mnt / "d" / "e" / "g").read_bytes() == b"deep\n" * 1000
    with open(mnt / "big", "rb") as f:
        f.seek(123_457)
        assert f.read(70_000) == BIG[123_457:193_457]
    assert os.readlink(mnt / "lnk") == "big"
    assert (mnt / "lnk").read_bytes() == BIG
    sp = (mnt / "sparse").read_bytes()
    assert len(sp) == (5 << 20) + 3 and sp[-3:] == b"end" and not any(sp[: 5 << 20])
    assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
    assert os.stat(mnt / "hello").st_ino == os.stat(mnt / "d" / "hello-link").st_ino
    assert os.stat(mnt / "hello").st_nlink == 2
    st = os.stat(mnt / "hello")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)


def test_copy_on_write_of_base_file(src: Path, mnt: Path) -> None:
    """Changing a base file in the spawn changes the spawn only; the rest of it still comes
    from the base."""
    p = mnt / "d" / "e" / "g"
    with open(p, "r+b") as f:
        f.seek(2007)
        f.write(b"XYZ")
    want = bytearray(b"deep\n" * 1000)
    want[2007:2010] = b"XYZ"
    assert p.read_bytes() == bytes(want)
    assert (src / "d" / "e" / "g").read_bytes() == b"deep\n" * 1000


# -- file contents ---------------------------------------------------------------------

def test_write_append_truncate(work: Path) -> None:
    p = work / "f"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    try:
        assert os.write(fd, b"0123456789") == 10
        os.pwrite(fd, b"abc", 4)
        os.pwrite(fd, b"tail", 200_000)  # a hole in between
        assert os.pread(fd, 20, 0) == b"0123abc789" + bytes(10)
        assert os.fstat(fd).st_size == 200_004
        os.ftruncate(fd, 5)
        assert os.pread(fd, 100, 0) == b"0123a"
        os.ftruncate(fd, 9)
        assert os.pread(fd, 100, 0) == b"0123a\0\0\0\0"
    finally:
        os.close(fd)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"++")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"--")  # O_APPEND: still at the end
    finally:
        os.close(fd)
    assert p.read_bytes() == b"0123a\0\0\0\0++--"
    os.truncate(p, 0)
    assert p.read_bytes() == b""
    with open(p, "wb") as f:  # O_TRUNC through the kernel's setattr
        f.write(b"x" * 1_000_000)
    assert p.stat().st_size == 1_000_000
    with open(p, "wb") as f:
        f.write(b"short")
    assert p.read_bytes() == b"short"
    assert os.stat(p).st_blocks >= 1


def test_large_file_roundtrip(work: Path) -> None:
    data = os.urandom(3 << 20)
    (work / "big").write_bytes(data)
    assert (work / "big").read_bytes() == data
    shutil.copyfile(work / "big", work / "big2")
    assert (work / "big2").read_bytes() == data


def test_fsync(work: Path) -> None:
    fd = os.open(work / "s", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- names -------------------------------------------------------------------------------

def test_mkdir_rmdir_unlink_errors(work: Path) -> None:
    os.mkdir(work / "d", 0o750)
    assert stat.S_IMODE(os.stat(work / "d").st_mode) == 0o750
    assert os.stat(work).st_nlink == 3
    (work / "d" / "f").write_bytes(b"1")
    assert errno_of(os.mkdir, work / "d") == errno.EEXIST
    assert errno_of(os.rmdir, work / "d") == errno.ENOTEMPTY
    assert errno_of(os.rmdir, work / "d" / "f") == errno.ENOTDIR
    assert errno_of(os.unlink, work / "d") == errno.EISDIR
    assert errno_of(os.unlink, work / "nope") == errno.ENOENT
    assert errno_of(os.open, work / "d" / "f" / "x", os.O_RDONLY) == errno.ENOTDIR
    assert errno_of(os.open, work / ("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert errno_of(os.stat, work / ("n" * 256)) == errno.ENAMETOOLONG
    os.unlink(work / "d" / "f")
    os.rmdir(work / "d")
    assert os.listdir(work) == []
    assert os.stat(work).st_nlink == 2


def test_unlink_base_names(mnt: Path, src: Path) -> None:
    """Removing names that come from the base (whiteouts in the overlay)."""
    os.mkdir(mnt / "gone")
    os.rename(mnt / "empty", mnt / "gone" / "empty")
    assert not (mnt / "empty").exists()
    assert (src / "empty").exists()
    os.unlink(mnt / "gone" / "empty")
    os.rmdir(mnt / "gone")
    assert errno_of(os.stat, mnt / "empty") == errno.ENOENT


def test_rename_keeps_inode(work: Path) -> None:
    (work / "a").write_bytes(b"A")
    os.mkdir(work / "sub")
    ino = os.stat(work / "a").st_ino
    os.rename(work / "a", work / "b")
    assert os.stat(work / "b").st_ino == ino
    os.rename(work / "b", work / "sub" / "c")
    assert os.stat(work / "sub" / "c").st_ino == ino
    (work / "victim").write_bytes(b"V")
    os.rename(work / "sub" / "c", work / "victim")  # replaces
    assert os.stat(work / "victim").st_ino == ino
    assert (work / "victim").read_bytes() == b"A"
    dino = os.stat(work / "sub").st_ino
    os.rename(work / "sub", work / "sub2")
    assert os.stat(work / "sub2").st_ino == dino
    os.mkdir(work / "sub2" / "inner")
    assert errno_of(os.rename, work / "sub2", work / "sub2" / "inner" / "x") == errno.EINVAL
    os.mkdir(work / "full")
    (work / "full" / "x").write_bytes(b"")
    assert errno_of(os.rename, work / "sub2", work / "full") == errno.ENOTEMPTY
    assert errno_of(os.rename, work / "sub2", work / "victim") == errno.ENOTDIR
    assert errno_of(os.rename, work / "victim", work / "sub2") == errno.EISDIR
    os.unlink(work / "victim")
    (work / "victim").write_bytes(b"again")
    assert os.stat(work / "victim").st_ino != ino  # never reused


def test_rename_base_file_keeps_inode(mnt: Path) -> None:
    ino = os.stat(mnt / "d" / "f").st_ino
    os.rename(mnt / "d" / "f", mnt / "d" / "f2")
    assert os.stat(mnt / "d" / "f2").st_ino == ino
    assert (mnt / "d" / "f2").read_bytes() == b"in d\n"
    os.rename(mnt / "d" / "f2", mnt / "d" / "f")


_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(a: Path, b: Path, flags: int) -> None:
    AT_FDCWD = -100
    r = _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_rename_noreplace_and_exchange(work: Path) -> None:
    RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
    (work / "a").write_bytes(b"A")
    (work / "b").write_bytes(b"B")
    ia, ib = os.stat(work / "a").st_ino, os.stat(work / "b").st_ino
    assert errno_of(renameat2, work / "a", work / "b", RENAME_NOREPLACE) == errno.EEXIST
    renameat2(work / "a", work / "b", RENAME_EXCHANGE)
    assert (work / "a").read_bytes() == b"B" and (work / "b").read_bytes() == b"A"
    assert (os.stat(work / "a").st_ino, os.stat(work / "b").st_ino) == (ib, ia)
    assert errno_of(renameat2, work / "a", work / "zz", RENAME_EXCHANGE) == errno.ENOENT
    renameat2(work / "a", work / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(work)) == ["b", "c"]
    os.mkdir(work / "dir")
    renameat2(work / "c", work / "dir", RENAME_EXCHANGE)  # a file and a directory swap
    assert stat.S_ISDIR(os.stat(work / "c").st_mode)
    assert (work / "dir").read_bytes() == b"B"


def test_link_and_symlink(work: Path) -> None:
    (work / "f").write_bytes(b"data")
    os.link(work / "f", work / "g")
    sf, sg = os.stat(work / "f"), os.stat(work / "g")
    assert sf.st_ino == sg.st_ino and sf.st_nlink == sg.st_nlink == 2
    with open(work / "g", "ab") as f:
        f.write(b"+")
    assert (work / "f").read_bytes() == b"data+"
    os.unlink(work / "f")
    assert os.stat(work / "g").st_nlink == 1
    assert errno_of(os.link, work / "g", work / "g") == errno.EEXIST
    os.mkdir(work / "d")
    assert errno_of(os.link, work / "d", work / "d2") == errno.EPERM
    os.symlink("g", work / "s")
    os.symlink("d/../g", work / "s2")
    os.symlink("missing", work / "s3")
    assert os.readlink(work / "s") == "g"
    assert (work / "s2").read_bytes() == b"data+"
    assert stat.S_ISLNK(os.lstat(work / "s").st_mode)
    assert errno_of(os.stat, work / "s3") == errno.ENOENT
    os.symlink("loop", work / "loop")
    assert errno_of(os.stat, work / "loop") == errno.ELOOP
    os.link(work / "s", work / "s-hard", follow_symlinks=False)
    assert os.lstat(work / "s-hard").st_ino == os.lstat(work / "s").st_ino


def test_mkfifo_and_mknod(work: Path) -> None:
    os.mkfifo(work / "p", 0o600)
    assert stat.S_ISFIFO(os.lstat(work / "p").st_mode)
    os.mknod(work / "r", 0o644 | stat.S_IFREG)
    assert stat.S_ISREG(os.lstat(work / "r").st_mode)
    os.mknod(work / "c", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(work / "c")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_readdir_many_and_while_changing(work: Path) -> None:
    names = {f"n{i:04d}" for i in range(1500)}
    for n in names:
        (work / n).write_bytes(b"")
    assert set(os.listdir(work)) == names
    seen = []
    with os.scandir(work) as it:  # unlinking during a listing neither skips nor repeats
        for i, e in enumerate(it):
            seen.append(e.name)
            if i % 3 == 0:
                os.unlink(work / e.name)
    assert len(seen) == len(set(seen)) == len(names)
    assert len(os.listdir(work)) == len(names) - len(range(0, len(names), 3))


# -- attributes ---------------------------------------------------------------------------

def test_chmod_chown_utime(work: Path) -> None:
    p = work / "f"
    p.write_bytes(b"x")
    for mode in (0o600, 0o4755, 0o2711, 0o1777, 0o000):
        os.chmod(p, mode)
        assert stat.S_IMODE(os.stat(p).st_mode) == mode
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(p, ns=(111_222_333_444, 555_666_777_888))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (111_222_333_444, 555_666_777_888)
    before = time.time_ns()
    os.utime(p)  # UTIME_NOW for both
    st = os.stat(p)
    assert st.st_mtime_ns >= before - 10_000_000 and st.st_atime_ns >= before - 10_000_000
    ctime = st.st_ctime_ns
    time.sleep(0.01)
    os.chmod(p, 0o644)
    assert os.stat(p).st_ctime_ns > ctime
    mtime = os.stat(p).st_mtime_ns
    time.sleep(0.01)
    with open(p, "ab") as f:
        f.write(b"y")
    assert os.stat(p).st_mtime_ns > mtime


def test_setgid_directory_inheritance(work: Path) -> None:
    d = work / "shared"
    os.mkdir(d)
    os.chown(d, 0, 4321)
    os.chmod(d, 0o2775)
    (d / "f").write_bytes(b"")
    os.mkdir(d / "sub")
    assert os.stat(d / "f").st_gid == 4321
    assert os.stat(d / "sub").st_gid == 4321
    assert os.stat(d / "sub").st_mode & stat.S_ISGID


def test_xattrs(work: Path, mnt: Path) -> None:
    p = work / "f"
    p.write_bytes(b"")
    assert os.listxattr(p) == []
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.b", b"\0binary\xff")
    assert sorted(os.listxattr(p)) == ["user.a", "user.b"]
    assert os.getxattr(p, "user.b") == b"\0binary\xff"
    assert errno_of(os.setxattr, p, "user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, p, "user.c", b"2", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.a", b"2", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.a") == b"2"
    os.removexattr(p, "user.a")
    assert errno_of(os.getxattr, p, "user.a") == errno.ENODATA
    assert errno_of(os.removexattr, p, "user.a") == errno.ENODATA
    assert os.getxattr(mnt / "hello", "user.color") == b"blue"  # from the base
    os.setxattr(work, "user.dir", b"ok")
    assert os.getxattr(work, "user.dir") == b"ok"


def test_statfs(mnt: Path) -> None:
    v = os.statvfs(mnt)
    assert v.f_bsize == 4096 and v.f_namemax == 255
    assert 0 < v.f_bavail <= v.f_bfree <= v.f_blocks
    assert v.f_files > v.f_ffree > 0


# -- open files ----------------------------------------------------------------------------

def test_unlink_while_open(work: Path, mnt: Path) -> None:
    p = work / "f"
    p.write_bytes(b"still here" * 1000)
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.pread(fd, 10, 0) == b"still here"
        os.pwrite(fd, b"STILL", 0)
        assert os.pread(fd, 10, 0) == b"STILL here"
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 10_000
    finally:
        os.close(fd)
    assert os.listdir(work) == []
    # a base file, replaced by a rename while open
    with open(mnt / "big", "rb") as f:
        (work / "new").write_bytes(b"new")
        os.rename(work / "new", mnt / "big")
        assert f.read() == BIG
    assert (mnt / "big").read_bytes() == b"new"


APPENDER = """
import os, sys
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(n):
    line = ("%s %05d " % (tag, i)).encode()
    os.write(fd, line + b"." * (99 - len(line)) + b"\\n")
os.close(fd)
"""


def test_o_append_two_processes(work: Path) -> None:
    """Two writers appending 100-byte records: every record whole, none lost, each writer's
    in its own order."""
    p = work / "log"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(p), tag, "200"]) for tag in ("A", "B")]
    for pr in procs:
        assert pr.wait(60) == 0
    data = p.read_bytes()
    assert len(data) == 400 * 100
    lines = [data[i : i + 100] for i in range(0, len(data), 100)]
    for tag in (b"A", b"B"):
        mine = [ln for ln in lines if ln.startswith(tag + b" ")]
        assert [int(ln.split()[1]) for ln in mine] == list(range(200))
        assert all(ln.endswith(b"\n") and ln.count(b"\n") == 1 for ln in mine)


# -- privacy -------------------------------------------------------------------------------

def as_user(uid: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=30)


def test_every_request_with_a_caller_is_checked() -> None:
    """The uid check is one test in the channel's dispatch: every request that names a
    file by inode and name, or asks for one, is checked; only requests on a handle that a
    checked open returned (and the kernel's own housekeeping) pass without it."""
    from spawn import fuseproto as fp
    from spawn.fusechan import _HANDLERS, CHECKED

    on_handles = {fp.READ, fp.WRITE, fp.FLUSH, fp.RELEASE, fp.FSYNC, fp.READDIR,
                  fp.READDIRPLUS, fp.RELEASEDIR, fp.FSYNCDIR, fp.FALLOCATE}
    housekeeping = {fp.INIT, fp.DESTROY}
    for code in _HANDLERS:
        assert code in CHECKED or code in on_handles | housekeeping, fp.NAMES[code]
    assert {fp.LOOKUP, fp.GETATTR, fp.OPEN, fp.OPENDIR, fp.CREATE, fp.SETXATTR} <= CHECKED


def test_other_user_refused(mnt: Path) -> None:
    """Modes would let anyone read (0755 / 0644): the mount refuses all the same."""
    assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o755
    r = as_user(65534, "ls", "-d", str(mnt.parent))  # the path is no obstacle
    assert r.returncode == 0, r
    assert stat.S_IMODE(os.stat(mnt / "hello").st_mode) & 0o004
    for cmd in (["ls", str(mnt)], ["cat", str(mnt / "hello")], ["stat", str(mnt / "hello")],
                ["touch", str(mnt / "intruder")], ["mkdir", str(mnt / "intruder")],
                ["getfattr", "-n", "user.color", str(mnt / "hello")], ["stat", "-f", str(mnt)]):
        if shutil.which(cmd[0]) is None:
            continue
        r = as_user(65534, *cmd)
        assert r.returncode != 0, (cmd, r)
        assert "Permission denied" in r.stderr, (cmd, r.stderr)
    assert not (mnt / "intruder").exists()


def test_owner_not_root(src: Path, tmp_path: Path) -> None:
    """A mount owned by uid 1000: that user gets in (as the modes allow), nobody else does,
    root still does."""
    m = start_mount(tmp_path, src, owner=1000)
    try:
        r = as_user(1000, "ls", str(m.path))
        assert r.returncode == 0 and "hello" in r.stdout.split(), r
        r = as_user(1000, "cat", str(m.path / "hello"))
        assert r.returncode == 0 and r.stdout == "hello, world\n", r
        r = as_user(1000, "touch", str(m.path / "x"))  # modes: the root is root's, 0755
        assert r.returncode != 0 and "Permission denied" in r.stderr
        r = as_user(65534, "cat", str(m.path / "hello"))
        assert r.returncode != 0 and "Permission denied" in r.stderr
        assert (m.path / "hello").read_bytes() == b"hello, world\n"
    finally:
        assert m.stop(remove=True) == 0


# -- the exporter's life --------------------------------------------------------------------

def test_sigterm_unmounts_and_restart_keeps_fsynced_data(src: Path, tmp_path: Path) -> None:
    m = start_mount(tmp_path, src)
    (m.path / "kept").write_bytes(b"synced")
    fd = os.open(m.path / "kept", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    ino = os.stat(m.path / "kept").st_ino
    assert m.stop() == 0
    assert not mounted_on(m.path)
    m2 = Mount(m.path, m.store, m.overlay, None, 0).start()  # the overlay knows its base
    try:
        assert (m2.path / "kept").read_bytes() == b"synced"
        assert os.stat(m2.path / "kept").st_ino == ino
    finally:
        m2.stop(remove=True)


def test_sigkill_and_restart(src: Path, tmp_path: Path) -> None:
    """A killed exporter leaves a dead mount; after cleaning it up, a new exporter serves the
    spawn with everything committed (fsync makes it survive a machine crash too)."""
    m = start_mount(tmp_path, src)
    (m.path / "f").write_bytes(b"committed")
    m.stop(signal.SIGKILL)
    assert not mounted_on(m.path)
    m2 = Mount(m.path, m.store, m.overlay, None, 0).start()
    try:
        assert (m2.path / "f").read_bytes() == b"committed"
    finally:
        m2.stop(remove=True)


# -- coherence with other clients of the engine -------------------------------------------

def test_changes_by_other_clients_seen_at_once(tmp_path: Path) -> None:
    """Another client (as a 9P session does) changes the spawn through its host, not
    through the kernel: the mount, which caches names and attributes for 10 s, shows each
    change at once, cached pages included (the host invalidates before the change returns)."""
    from spawn.cred import ROOT
    from spawn.engine import Engine
    from spawn.fuse_main import MOUNT_OPTIONS
    from spawn.fusedev import mount, unmount
    from spawn.host import SpawnHost
    from spawn.importer import Importer
    from store.memory import MemoryStore

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"a" * 100_000)
    store = MemoryStore()
    engine = Engine(store, tmp_path / "ov", Importer(store).run(src))
    host = SpawnHost(engine, "t")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = host.serve_fuse(mount(str(mnt), MOUNT_OPTIONS), mountpoint=str(mnt))

    def other(op, *args, **kw):
        return host.call_future(op, ROOT, args, kw).result(10)

    try:
        ino = os.stat(mnt / "f").st_ino
        fd = os.open(mnt / "f", os.O_RDONLY)
        try:
            assert os.pread(fd, 10, 5000) == b"a" * 10  # now in the page cache
            other("write", ino, 5000, b"B" * 10)
            assert os.pread(fd, 10, 5000) == b"B" * 10  # same open file
            assert (mnt / "f").read_bytes()[4995:5015] == b"a" * 5 + b"B" * 10 + b"a" * 5
            other("write", ino, 0, b"tail", append=True)
            assert os.fstat(fd).st_size == 100_004
            assert os.stat(mnt / "f").st_size == 100_004
        finally:
            os.close(fd)
        assert not (mnt / "new").exists()  # a cached negative entry, next
        a = other("create", 1, b"new", 0o644)
        other("write", a.ino, 0, b"hi")
        assert (mnt / "new").read_bytes() == b"hi"
        assert "new" in os.listdir(mnt)
        other("unlink", 1, b"new")
        assert not (mnt / "new").exists()
        other("setattr", ino, mode=0o600)
        assert stat.S_IMODE(os.stat(mnt / "f").st_mode) == 0o600
    finally:
        unmount(str(mnt), lazy=True)
        done.result(15)
        host.close()
    assert not mounted_on(mnt)


# -- POSIX details checked against ext4 --------------------------------------------------------

def test_fallocate_extends_and_keep_size_does_not(work: Path, tmp_path: Path) -> None:
    for base in (work, tmp_path):  # the mount, then the local disk: the same answers
        fd = os.open(base / "fa", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"abc")
            os.posix_fallocate(fd, 0, 100_000)
            assert os.fstat(fd).st_size == 100_000
            libc = ctypes.CDLL(None, use_errno=True)
            libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
            assert libc.fallocate(fd, 1, 0, 500_000) == 0, os.strerror(ctypes.get_errno())  # KEEP_SIZE
            assert os.fstat(fd).st_size == 100_000
            assert libc.fallocate(fd, 3, 1, 1) == 0  # PUNCH_HOLE | KEEP_SIZE
            assert os.pread(fd, 4, 0) == b"a\0c\0"
        finally:
            os.close(fd)


def rename_errno(old: Path, new: Path, flags: int) -> int:
    try:
        renameat2(old, new, flags)
    except OSError as e:
        return e.errno
    return 0


def test_rename_whiteout_leaves_a_whiteout(work: Path) -> None:
    (work / "a").write_text("x")
    assert rename_errno(work / "a", work / "b", 4) == 0  # RENAME_WHITEOUT
    st = os.lstat(work / "a")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (work / "b").read_text() == "x"
    assert rename_errno(work / "b", work / "c", 4 | 2) == errno.EINVAL  # with EXCHANGE


def test_st_blocks_counts_data_not_holes(mnt: Path, work: Path) -> None:
    st = os.stat(mnt / "sparse")  # 5 MiB + 3 bytes, one leaf of data at the end
    assert st.st_size == (5 << 20) + 3
    assert st.st_blocks * 512 < 1 << 20, st.st_blocks
    (work / "dense").write_bytes(os.urandom(300_000))
    assert os.stat(work / "dense").st_blocks * 512 >= 300_000
    os.truncate(work / "t", 0) if (work / "t").exists() else (work / "t").touch()
    os.truncate(work / "t", 1 << 30)  # a 1 GiB hole
    assert os.stat(work / "t").st_blocks == 0
    with open(work / "t", "r+b") as f:
        f.seek(1 << 29)
        f.write(b"x" * 4096)
    blocks = os.stat(work / "t").st_blocks * 512
    assert 4096 <= blocks <= 64 << 10, blocks
    assert st.st_blksize == 4096


def test_readdir_lists_dot_and_dotdot(mnt: Path, work: Path) -> None:
    (work / "sub").mkdir()
    (work / "sub" / "x").write_text("1")
    out = subprocess.run(["ls", "-fai", str(work / "sub")], capture_output=True, text=True, check=True)
    entries = {line.split()[1]: int(line.split()[0]) for line in out.stdout.split("\n") if line.strip()}
    assert set(entries) == {".", "..", "x"}
    assert entries["."] == os.stat(work / "sub").st_ino
    assert entries[".."] == os.stat(work).st_ino
    out = subprocess.run(["ls", "-fa", str(mnt)], capture_output=True, text=True, check=True)
    assert {".", ".."} <= set(out.stdout.split())
