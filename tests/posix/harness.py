"""A pjdfstest-like harness: run permission cases as other users on any directory tree, and
compare what a filesystem answers with what ext4 answers on the same machine in the same run.

The problem: permission semantics are many small rules (owner class wins, sticky directories,
setgid inheritance, EPERM here and EACCES there) that a filesystem served by a daemon must
reproduce exactly. Writing the expected answer by hand for every step invites mistakes in the
expectations themselves; so the reference is a plain ext4 directory, run through the same
steps, and a target passes a case when every step's answer (a value or an errno name) and the
final state of every path the case names (type, mode, owner, group, size, links) are the same.
Steps may also carry the answer the table's author expects (``X("EPERM")``): those are checked
against ext4 once, which keeps the table honest as documentation.

Each step runs in a forked child of the test process: the child changes into the case's
directory, sets its umask, groups, gid and uid (``os.setgroups``, ``os.setresgid``,
``os.setresuid``, so a non-root step has no capabilities), calls one ``os`` function and
reports the result over a pipe. Nothing is exec'd. A case's setup runs the same way as root,
in the case's own fresh directory (mode 0755, root's), and may run in another tree than its
steps (``prepare`` then ``run``: overlayfs with the setup in the lower layer).
"""

from __future__ import annotations

import ctypes
import errno
import grp
import json
import os
import pwd
import select
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# -- the vocabulary of a case table ----------------------------------------------------------


class X(str):
    """What the table's author expects of a step on Linux ("ok", an errno name, or the repr
    of a value): checked against ext4, never against a target (ext4 is the reference)."""

    __slots__ = ()


OK = X("ok")


@dataclass(frozen=True)
class Case:
    """One case: *setup* steps run as root (``(op, *args)``), then *steps* run as their actor
    (``(actor, op, *args)``, optionally ending in an ``X``). Paths are relative to the case's
    own directory; users and groups are names from the ``Users`` map."""

    group: str
    name: str
    setup: tuple[tuple[Any, ...], ...]
    steps: tuple[tuple[Any, ...], ...]
    umask: int = 0

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def dirname(self) -> str:
        return f"{self.group}.{self.name}"

    def all_steps(self) -> list[Step]:
        return [*(Step.parse(("root", *s)) for s in self.setup),
                *(Step.parse(s) for s in self.steps)]

    def paths(self) -> list[str]:
        """Every path the case names, in order of first mention (their final state is compared)."""
        out: list[str] = []
        for step in self.all_steps():
            for kind, a in zip(OPS[step.op][1], step.args, strict=False):
                if kind == "p" and a not in out:
                    out.append(a)
        return out


@dataclass(frozen=True)
class Step:
    actor: str
    op: str
    args: tuple[Any, ...]
    expect: X | None

    @classmethod
    def parse(cls, t: tuple[Any, ...]) -> Step:
        expect = t[-1] if isinstance(t[-1], X) else None
        rest = t[2:-1] if expect is not None else t[2:]
        if t[1] not in OPS:
            raise ValueError(f"unknown operation {t[1]!r} in {t!r}")
        return cls(t[0], t[1], tuple(rest), expect)

    def __str__(self) -> str:
        """The step as a reader writes it: ``bob chmod f 0o777``."""
        kinds = OPS[self.op][1]
        def arg(k: str, a: Any) -> str:
            return "-1" if a is None else oct(a) if k == "m" else str(a)
        words = [arg(kinds[i] if i < len(kinds) else "-", a) for i, a in enumerate(self.args)]
        return " ".join([self.actor, self.op, *words])


# -- users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cred:
    uid: int
    gid: int
    groups: tuple[int, ...]


ROOT = Cred(0, 0, ())


@dataclass
class Users:
    """Actors and groups by the short names cases use ("alice", "g1"), with their Unix names
    (for ``grid share``) and credentials. "root" is always there."""

    creds: dict[str, Cred] = field(default_factory=lambda: {"root": ROOT})
    uids: dict[str, int] = field(default_factory=lambda: {"root": 0})
    gids: dict[str, int] = field(default_factory=lambda: {"root": 0})
    unix: dict[str, str] = field(default_factory=lambda: {"root": "root"})

    def uid(self, name: str | int | None) -> int:
        return -1 if name is None else name if isinstance(name, int) else self.uids[name]

    def gid(self, name: str | int | None) -> int:
        return -1 if name is None else name if isinstance(name, int) else self.gids[name]

    def uname(self, uid: int) -> str:
        return next((k for k, v in self.uids.items() if v == uid), str(uid))

    def gname(self, gid: int) -> str:
        return next((k for k, v in self.gids.items() if v == gid), str(gid))


def make_users(prefix: str, groups: Sequence[str], members: dict[str, Sequence[str]]) -> Users:
    """Real Unix groups ``prefix-G`` and users ``prefix-U`` (each with its own primary group
    and the given supplementary groups): made once with groupadd/useradd, kept for the run
    (userdel fails while a user's processes run). Made again if their groups differ."""
    u = Users()
    for g in groups:
        full = f"{prefix}-{g}"
        try:
            grp.getgrnam(full)
        except KeyError:
            subprocess.run(["groupadd", full], check=True, capture_output=True)
        u.gids[g] = grp.getgrnam(full).gr_gid
        u.unix[g] = full
    for name, sup in members.items():
        full = f"{prefix}-{name}"
        want = ",".join(f"{prefix}-{g}" for g in sup)
        try:
            pwd.getpwnam(full)
            subprocess.run(["usermod", "-G", want, full], check=True, capture_output=True)
        except KeyError:
            cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
            subprocess.run([*cmd, *(["-G", want] if want else []), full], check=True,
                           capture_output=True)
        pw = pwd.getpwnam(full)
        u.uids[name], u.gids[name], u.unix[name] = pw.pw_uid, pw.pw_gid, full
        u.creds[name] = Cred(pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(full, pw.pw_gid)))
        assert set(u.creds[name].groups) == {pw.pw_gid, *(u.gids[g] for g in sup)}, name
    return u


# -- operations (run in the child) ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
AT_FDCWD, AT_SYMLINK_NOFOLLOW = -100, 0x100
RECENT = 600  # a time within this many seconds of now reads as "now"


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _utimensat(path: str, atime: Any = None, mtime: Any = None, nofollow: bool = False) -> None:
    """utimensat(2): both None is times == NULL; each of "now", "omit" or whole seconds."""
    def ts(t: Any) -> _Timespec:
        if t == "now":
            return _Timespec(0, UTIME_NOW)
        if t == "omit":
            return _Timespec(0, UTIME_OMIT)
        return _Timespec(int(t), 0)
    times = None if atime is None and mtime is None else (_Timespec * 2)(ts(atime), ts(mtime))
    flags = AT_SYMLINK_NOFOLLOW if nofollow else 0
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "creat": os.O_CREAT,
         "excl": os.O_EXCL, "trunc": os.O_TRUNC, "append": os.O_APPEND,
         "dir": os.O_DIRECTORY, "nofollow": os.O_NOFOLLOW}
KINDS = {"reg": stat.S_IFREG, "fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK,
         "sock": stat.S_IFSOCK}


def _flags(spec: str) -> int:
    n = 0
    for w in spec.split("|"):
        n |= FLAGS[w]
    return n


def op_file(path: str, mode: int, uid: int, gid: int, size: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"x" * size)
    finally:
        os.close(fd)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def op_dir(path: str, mode: int, uid: int, gid: int) -> None:
    os.mkdir(path, 0o700)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def op_create(path: str, mode: int) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


def op_open(path: str, flags: str, mode: int = 0o644) -> None:
    os.close(os.open(path, _flags(flags), mode))


def op_read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


def op_write(path: str, data: str) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data.encode())
    finally:
        os.close(fd)


def op_ftruncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def op_mknod(path: str, kind: str, mode: int, major: int = 0, minor: int = 0) -> None:
    os.mknod(path, KINDS[kind] | mode, os.makedev(major, minor))


def op_stat(path: str) -> dict[str, Any]:
    """The parts of lstat(2) every filesystem must agree on."""
    st = os.lstat(path)
    out: dict[str, Any] = {"type": stat.filemode(st.st_mode)[0], "mode": oct(stat.S_IMODE(st.st_mode)),
                           "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        out["size"] = st.st_size
    if not stat.S_ISDIR(st.st_mode):
        out["nlink"] = st.st_nlink
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        out["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    return out


def op_times(path: str) -> list[Any]:
    """atime and mtime: whole seconds if set explicitly (long ago), else "now"."""
    st = os.lstat(path)
    now = time.time()
    return [("now" if abs(now - t) < RECENT else int(t)) for t in (st.st_atime, st.st_mtime)]


# op name -> (function, kinds of its arguments: p path, m mode, u user, g group, - anything)
OPS: dict[str, tuple[Callable[..., Any], str]] = {
    "file": (op_file, "pmug-"),
    "dir": (op_dir, "pmug"),
    "create": (op_create, "pm"),
    "open": (op_open, "p-m"),
    "read": (op_read, "p"),
    "write": (op_write, "p-"),
    "truncate": (os.truncate, "p-"),
    "ftruncate": (op_ftruncate, "p-"),
    "chmod": (os.chmod, "pm"),
    "chown": (os.chown, "pug"),
    "lchown": (os.lchown, "pug"),
    "link": (os.link, "pp"),
    "mkdir": (os.mkdir, "pm"),
    "mknod": (op_mknod, "p-m--"),
    "mkfifo": (os.mkfifo, "pm"),
    "rename": (os.rename, "pp"),
    "rmdir": (os.rmdir, "p"),
    "symlink": (lambda path, target: os.symlink(target, path), "p-"),
    "readlink": (os.readlink, "p"),
    "unlink": (os.unlink, "p"),
    "utimes": (_utimensat, "p---"),
    "setxattr": (lambda p, n, v: os.setxattr(p, n, v.encode()), "p--"),
    "lsetxattr": (lambda p, n, v: os.setxattr(p, n, v.encode(), follow_symlinks=False), "p--"),
    "getxattr": (lambda p, n: os.getxattr(p, n).decode(), "p-"),
    "listdir": (lambda p: sorted(os.listdir(p)), "p"),
    "stat": (op_stat, "p"),
    "times": (op_times, "p"),
}

# -- running a step in a child ----------------------------------------------------------------

TIMEOUT = 30.0


def _child(w: int, cred: Cred, umask: int, work: Callable[[], Any]) -> None:
    try:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.umask(umask)
        os.setgroups(list(cred.groups))
        os.setresgid(cred.gid, cred.gid, cred.gid)
        os.setresuid(cred.uid, cred.uid, cred.uid)
        value = work()
        out: dict[str, Any] = {"ok": value}
    except OSError as e:
        out = {"errno": errno.errorcode.get(e.errno or 0, str(e.errno))}
    except BaseException as e:
        out = {"error": repr(e)}
    try:
        os.write(w, json.dumps(out).encode())
    finally:
        os._exit(0)


def in_child(cred: Cred, umask: int, work: Callable[[], Any]) -> str:
    """Run *work* in a forked child that has become *cred* (groups, gid, uid; umask set);
    "ok", the value's JSON, or an errno name (``TIMEOUT`` if the child hangs, ``CRASH: ...``
    if it died or raised something else)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(r)
        _child(w, cred, umask, work)
    os.close(w)
    data = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                data = b'{"errno": "TIMEOUT"}'
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if not data:
        return f"CRASH: child status {status}"
    out = json.loads(data)
    if "errno" in out:
        return str(out["errno"])
    if "error" in out:
        return f"CRASH: {out['error']}"
    return "ok" if out["ok"] is None else json.dumps(out["ok"], sort_keys=True)


def call(cwd: Path, cred: Cred, umask: int, op: str, args: tuple[Any, ...]) -> str:
    """Run one operation as *cred* in a forked child, in directory *cwd* (see ``in_child``)."""
    def work() -> Any:
        os.chdir(cwd)
        return OPS[op][0](*args)
    return in_child(cred, umask, work)


class Executor(Protocol):
    """How the steps reach a tree: ``OsExecutor`` calls ``os`` functions on a directory;
    another executor may speak a protocol to a server (tests/posix/ninep_exec.py)."""

    name: str

    def make_case_dir(self, dirname: str) -> None:
        """The case's directory, root's, mode 0755, at the top of the tree."""

    def call(self, dirname: str, cred: Cred, umask: int, op: str, args: tuple[Any, ...]) -> str:
        """One step, as *cred*, with paths relative to the case's directory."""


@dataclass
class OsExecutor:
    """Steps as ``os`` calls on a directory tree (a local filesystem, or any mount)."""

    root: Path
    name: str = "os"

    def make_case_dir(self, dirname: str) -> None:
        d = self.root / dirname
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)

    def call(self, dirname: str, cred: Cred, umask: int, op: str, args: tuple[Any, ...]) -> str:
        return call(self.root / dirname, cred, umask, op, args)


def _executor(where: Path | Executor) -> Executor:
    return OsExecutor(where) if isinstance(where, Path) else where


# -- running cases ----------------------------------------------------------------------------


def _resolve(users: Users, step: Step) -> tuple[Any, ...]:
    kinds = OPS[step.op][1]
    out = []
    for k, a in zip(kinds, step.args, strict=False):
        out.append(users.uid(a) if k == "u" else users.gid(a) if k == "g" else a)
    return (*out, *step.args[len(kinds):])


@dataclass
class Outcome:
    """What one tree answered for one case: (step, answer) pairs for the setup and the steps,
    and the final state of each path the case names (as root sees it)."""

    setup: list[tuple[str, str]] = field(default_factory=list)
    steps: list[tuple[str, str]] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)


def prepare(where: Path | Executor, cases: Iterable[Case], users: Users) -> dict[str, Outcome]:
    """Make each case's directory in the tree (a directory, or an executor's) (0755, root's)
    and run its setup there as root."""
    ex = _executor(where)
    out = {}
    for case in cases:
        ex.make_case_dir(case.dirname)
        oc = out[case.id] = Outcome()
        for step in case.all_steps()[:len(case.setup)]:
            res = ex.call(case.dirname, ROOT, case.umask, step.op, _resolve(users, step))
            oc.setup.append((str(step), res))
    return out


def run(where: Path | Executor, cases: Iterable[Case], users: Users,
        prepared: dict[str, Outcome] | None = None) -> dict[str, Outcome]:
    """Run each case's steps in the tree (a directory, or an executor's; the setup already
    done there, or in the tree whose outcomes *prepared* holds), then stat every path it
    names as root."""
    ex = _executor(where)
    cases = list(cases)
    out = prepared if prepared is not None else prepare(ex, cases, users)
    for case in cases:
        d = case.dirname
        oc = out[case.id]
        for step in case.all_steps()[len(case.setup):]:
            res = ex.call(d, users.creds[step.actor], case.umask, step.op, _resolve(users, step))
            oc.steps.append((str(step), res))
        for p in case.paths():
            oc.final[p] = ex.call(d, ROOT, 0, "stat", (p,))
    return out


def _readable(answer: str, users: Users) -> str:
    """A stat answer with names for ids (``alice:g1``) instead of numbers."""
    if not answer.startswith("{"):
        return answer
    st = json.loads(answer)
    owner = f"{users.uname(st.pop('uid'))}:{users.gname(st.pop('gid'))}"
    rest = " ".join(f"{k}={v}" for k, v in st.items() if k not in ("type", "mode"))
    return f"{st['type']} {st['mode']} {owner} {rest}".rstrip()


def compare(case: Case, ref: Outcome, got: Outcome, users: Users, target: str,
            reference: str = "ext4") -> str | None:
    """None when *got* is *ref*; else a message naming the case, each differing step or path
    with both answers, and the whole transcript."""
    diffs = []
    for kind, a, b in (("setup", ref.setup, got.setup), ("step", ref.steps, got.steps)):
        for i, ((text, want), (_, have)) in enumerate(zip(a, b, strict=True), 1):
            if want != have:
                diffs.append(f"  {kind} {i} `{text}`: {reference} {_readable(want, users)}, "
                             f"{target} {_readable(have, users)}")
    for p, want in ref.final.items():
        have = got.final.get(p, "missing")
        if want != have:
            diffs.append(f"  final {p}: {reference} {_readable(want, users)}, "
                         f"{target} {_readable(have, users)}")
    if not diffs:
        return None
    lines = [f"case {case.id}: {target} differs from {reference}", *diffs, "  transcript:"]
    for (text, want), (_, have) in zip(ref.setup + ref.steps, got.setup + got.steps, strict=True):
        mark = " " if want == have else "!"
        lines.append(f"   {mark} {text:40} {reference}: {_readable(want, users)}"
                     + ("" if want == have else f"   {target}: {_readable(have, users)}"))
    return "\n".join(lines)


def check_expectations(case: Case, ref: Outcome) -> list[str]:
    """Steps whose answer on the reference is not what the table says Linux answers."""
    bad = []
    for i, (text, have) in enumerate(ref.setup, 1):
        if have != "ok":
            bad.append(f"setup {i} `{text}` failed on the reference: {have}")
    steps = case.all_steps()[len(case.setup):]
    for i, (step, (text, have)) in enumerate(zip(steps, ref.steps, strict=True), 1):
        want = step.expect
        if want is not None and want != have:
            bad.append(f"step {i} `{text}`: the table says {want}, the reference gave {have}")
    return bad
