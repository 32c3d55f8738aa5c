"""Differential testing of grid's 9P2000.L server against diod (issue 17).

A seeded random generator builds a sequence of requests (walk, lopen, lcreate, read, write,
readdir, getattr, setattr, mkdir, symlink, link, rename, renameat, unlinkat, xattrwalk,
xattrcreate, lock, getlock, statfs, fsync, readlink, clunk, remove, flush) and sends each,
with the same fid numbers, to two servers over persistent connections: the *reference*
(diod exporting a directory holding the test tree) and grid (a spawn of the same tree). The
replies are reduced to what must agree (:func:`norm`) and compared one step at a time; at
the end both trees are read whole through 9P (:func:`snapshot`) and compared.

Identity: diod ``-n`` serves as the user it runs as (root), so grid's attach acts as root
too (``Env.uid = gid = 0``). Both sides then make the same permission decisions (root's)
and give created files the same owner, so any difference is one of protocol or filesystem
semantics, never of who asked. (Attaching grid as the tree's owner instead would make every
chown, every create's gid and every EPERM a false alarm.)

What is not compared, because the two differ on purpose (docs/9p.md, "Intended differences
from diod"): qid.path and qid.version (grid's inode numbers and ctime), iounit, blksize,
blocks, a directory's size, times other than those a setattr just set, statfs fields other
than namelen, readdir order and cookies (a full pass is compared as a set), and fids whose
path another request renamed or removed (diod's fids name paths, grid's follow the file):
the generator stops using those except to clunk them. Debian's diod has ways of its own that
the model follows precisely (docs/9p.md, the table of intended differences): a walked ".."
stays in its fid's path text (FidState.via, .dotdot), a partial walk onto the same fid moves
that fid, a getlock through a read-locked fid is not tested, and a failed non-blocking
upgrade of a read lock drops it (flock).

Run by tests/spawn/test_ninep_diff.py; ``GRID_9P_DIFF_STEPS`` and ``GRID_9P_DIFF_SEED``
choose the length and the sequence.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from spawn.ninep import messages as m9
from spawn.ninep.client import Client, ServerError
from spawn.ninep.codec import unpack_dirents

ROOT = 1  # the attach fid on both connections
NAMES = [b"hello.txt", b"big.bin", b"dir", b"a", b"b", b"sub", b"deep", b"link", b"many",
         b"f00", b"f07", b"n1", b"n2", b"d1", b"d2", b"s1"]
XNAMES = [b"user.a", b"user.b", b"user.long.name"]
TARGETS = [b"hello.txt", b"../hello.txt", b"dir/a", b"nowhere", b"x" * 100]
O_FLAGS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_TRUNC, os.O_WRONLY | os.O_APPEND,
           os.O_RDONLY | os.O_DIRECTORY, os.O_RDWR | os.O_EXCL, os.O_RDONLY | os.O_TRUNC]
MODES = [0o644, 0o600, 0o755, 0o4755, 0o2775, 0o1777, 0o000, 0o444]


class Difference(AssertionError):
    """The two servers answered one step differently; *kind* names the sort of difference
    (:func:`kind_of`) so that a long run can count them."""

    def __init__(self, text: str, kind: str = "") -> None:
        super().__init__(text)
        self.kind = kind or text.splitlines()[0]


class ReferenceFailed(RuntimeError):
    """The reference server dropped the connection (a bug of the reference's)."""


async def outcome(aw: Awaitable[Any]) -> Any:
    """A request's reply reduced by :func:`norm`, or ("errno", n) for an error reply."""
    try:
        return norm(await aw)
    except ServerError as e:
        return ("errno", e.errno)


def norm(r: Any) -> Any:
    """The parts of a reply that must agree between diod and grid."""
    if isinstance(r, m9.Rwalk):
        return ("walk", tuple(q.type for q in r.wqids))
    if isinstance(r, (m9.Rlopen, m9.Rlcreate)):
        return ("open", r.qid.type)
    if isinstance(r, (m9.Rmkdir, m9.Rsymlink, m9.Rmknod, m9.Rattach)):
        return ("qid", r.qid.type)
    if isinstance(r, m9.Rread):
        return ("data", r.data)
    if isinstance(r, m9.Rwrite):
        return ("count", r.count)
    if isinstance(r, m9.Rgetattr):
        return attrs(r)
    if isinstance(r, m9.Rstatfs):
        return ("statfs", r.namelen)
    if isinstance(r, m9.Rxattrwalk):
        return ("size", r.size)
    if isinstance(r, m9.Rlock):
        return ("lock", r.status)
    if isinstance(r, m9.Rgetlock):
        # not the holder's proc_id/client_id: grid names the holder as F_GETLK does, Debian's
        # diod echoes the request's (its locks have no owner to name)
        return ("getlock", r.type, r.start, r.length)
    if isinstance(r, m9.Rreadlink):
        return ("target", r.target)
    if isinstance(r, m9.Message):
        return type(r).__name__
    return r


def attrs(r: m9.Rgetattr, times: bool = False) -> tuple[Any, ...]:
    is_dir = stat.S_ISDIR(r.mode)
    out: tuple[Any, ...] = ("attr", r.qid.type, r.mode, r.uid, r.gid, r.nlink, r.rdev,
                            None if is_dir else r.size)
    if times:
        out += (r.atime_sec, r.atime_nsec, r.mtime_sec, r.mtime_nsec)
    return out


@dataclass
class FidState:
    path: tuple[bytes, ...]  # from the attach root
    kind: str = "walked"  # walked | link | file | dir | xread | xlist
    stale: bool = False  # its path was renamed or removed: only clunked from then on
    # Directories the fid's path went through and left by "..": diod keeps a walked ".."
    # in the fid's path text ("many/.."), so renaming or removing one of those makes the
    # fid unusable in diod (ENOENT) while grid's fid names its file; such a fid is stale.
    via: tuple[tuple[bytes, ...], ...] = ()
    # diod's path text ends in "..": renaming or removing it is rename(2)/rmdir(2) of
    # "x/..", EBUSY or ENOTEMPTY there, while grid's fid is its directory. Linux never walks
    # ".." (its VFS keeps the parent), so such fids are not renamed or removed.
    dotdot: bool = False
    locked: int = m9.LockType.UNLCK  # the lock taken through this fid (whole file)


@dataclass
class Model:
    """What the generator believes about the session (from the reference's answers)."""

    fids: dict[int, FidState] = field(default_factory=lambda: {ROOT: FidState(())})
    paths: set[tuple[bytes, ...]] = field(default_factory=set)
    next_fid: int = ROOT + 1

    def new_fid(self) -> int:
        self.next_fid += 1
        return self.next_fid

    def children(self, path: tuple[bytes, ...]) -> list[bytes]:
        return sorted(p[-1] for p in self.paths if len(p) == len(path) + 1 and p[:-1] == path)

    def gone(self, path: tuple[bytes, ...], keep: int | None = None) -> None:
        """*path* was removed or replaced: fids under it go stale, paths under it go."""
        n = len(path)
        for number, f in self.fids.items():
            if number != keep and n and any(p[:n] == path for p in (f.path, *f.via)):
                f.stale = True
        self.paths = {p for p in self.paths if p[:n] != path}

    def moved(self, old: tuple[bytes, ...], new: tuple[bytes, ...]) -> None:
        n = len(old)
        moved = {new + p[n:] for p in self.paths if p[:n] == old}
        self.gone(new)
        self.gone(old)
        self.paths |= moved


def tree_paths(root: str) -> set[tuple[bytes, ...]]:
    out = set()
    for d, dirs, files in os.walk(os.fsencode(root)):
        rel = os.path.relpath(d, os.fsencode(root))
        base = () if rel == b"." else tuple(rel.split(b"/"))
        out |= {(*base, n) for n in dirs + files}
    return out


def _shape(x: Any) -> str:
    """A reply reduced to its sort: the errno's name, or the reply's tag."""
    if isinstance(x, tuple) and len(x) >= 2 and x[0] == "errno":
        return errno.errorcode.get(x[1], str(x[1]))
    if isinstance(x, tuple) and x and isinstance(x[0], str):
        return x[0]
    if isinstance(x, (tuple, list)):
        return "[" + ", ".join(_shape(y) for y in x) + "]"
    return str(x) if isinstance(x, str) else type(x).__name__


def _fields(a: Any, b: Any) -> list[int]:
    """Where two replies of one shape differ (positions in the flattened tuples)."""
    def flat(x: Any) -> list[Any]:
        return [z for y in x for z in flat(y)] if isinstance(x, (tuple, list)) else [x]
    fa, fb = flat(a), flat(b)
    if len(fa) != len(fb):
        return [-1]
    return [i for i, (x, y) in enumerate(zip(fa, fb, strict=True)) if x != y]


def kind_of(what: str, a: Any, b: Any) -> str:
    """The sort of a difference: the request kind and each side's reply shape (and which
    fields differ when the shapes agree), so one cause is counted once however often a
    long run meets it."""
    op = what.split()[0]
    sa, sb = _shape(a), _shape(b)
    if sa == sb:
        return f"{op}: both {sa}, fields {_fields(a, b)} differ"
    return f"{op}: diod {sa}, grid {sb}"


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 300 else r[:300] + f"... ({len(r)} characters)"


Step = Callable[[Client], Awaitable[Any]]


class Harness:
    """Drives two attached clients (reference first) through one random sequence."""

    def __init__(self, ref: Client, grid: Client, seed: int | str, paths: set[tuple[bytes, ...]]):
        self.ref, self.grid = ref, grid
        self.rng = random.Random(seed)
        self.seed = seed
        self.model = Model(paths=set(paths))
        self.log: list[str] = []
        self.counts: dict[str, int] = {}

    async def both(self, what: str, step: Step) -> Any:
        try:
            a = await step(self.ref)
        except ConnectionError as e:
            tail = "\n  ".join(self.log[-25:])
            raise ReferenceFailed(f"seed {self.seed}: diod failed at {what}: {e}\n"
                                  f"last steps:\n  {tail}") from e
        b = await step(self.grid)
        self.log.append(f"{what} -> {_short(a)}")
        if a != b:
            tail = "\n  ".join(self.log[-int(os.environ.get("GRID_9P_DIFF_LOG", "25")):])
            named = {int(w) for w in what.replace("/", " ").split() if w.isdigit()}
            tail += "".join(f"\n  fid {n}: {self.model.fids[n]}" for n in sorted(named)
                            if n in self.model.fids)
            raise Difference(f"seed {self.seed}, step {len(self.log)}: {what}\n"
                             f"  diod: {_short(a)}\n  grid: {_short(b)}\nlast steps:\n  {tail}",
                             kind_of(what, a, b))
        return a

    # -- choosing ---------------------------------------------------------------------------

    def pick_fid(self, *kinds: str, fresh: bool = True, root: bool = True) -> int | None:
        """A fid of one of *kinds* (any kind if none); *fresh*: not stale; *root*: the
        attach fid may be chosen (not for requests that would open or move it)."""
        live = [n for n, f in self.model.fids.items()
                if (not kinds or f.kind in kinds) and not (fresh and f.stale)
                and (root or n != ROOT)]
        return self.rng.choice(live) if live else None

    def pick_name(self, path: tuple[bytes, ...]) -> bytes:
        kids = self.model.children(path)
        if kids and self.rng.random() < 0.7:
            return self.rng.choice(kids)
        return self.rng.choice(NAMES)

    async def ref_is_link(self, dfid: int, name: bytes) -> bool:
        """Whether *name* in *dfid*'s directory is a symlink on the reference (a probe that
        changes nothing there and is not sent to grid)."""
        probe = self.model.new_fid()
        try:
            await self.ref.call(m9.Twalk, fid=dfid, newfid=probe, wnames=(name,))
        except ServerError:
            return False
        try:
            return stat.S_ISLNK((await self.ref.getattr(probe)).mode)
        finally:
            await self.ref.call(m9.Tclunk, fid=probe)

    # -- the run ----------------------------------------------------------------------------

    async def run(self, steps: int) -> dict[str, int]:
        ops = [(self.op_walk, 14), (self.op_lopen, 8), (self.op_lcreate, 6), (self.op_read, 8),
               (self.op_write, 8), (self.op_readdir, 4), (self.op_getattr, 8),
               (self.op_setattr, 6), (self.op_mkdir, 3), (self.op_symlink, 2), (self.op_link, 2),
               (self.op_rename, 2), (self.op_renameat, 3), (self.op_unlinkat, 3),
               (self.op_xattrwalk, 3), (self.op_xattrcreate, 3), (self.op_lock, 3),
               (self.op_getlock, 2), (self.op_statfs, 1), (self.op_fsync, 1),
               (self.op_readlink, 1), (self.op_clunk, 8), (self.op_remove, 1), (self.op_flush, 1)]
        funcs = [f for f, _ in ops]
        weights = [w for _, w in ops]
        done = 0
        while done < steps:
            crowded = len(self.model.fids) > 40
            op = self.op_clunk if crowded else self.rng.choices(funcs, weights)[0]
            if await op() is not False:
                done += 1
                name = op.__name__[3:]
                self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts

    # -- operations (each returns False when it found nothing to act on) ---------------------

    async def op_walk(self) -> Any:
        # not from an xattr fid: diod walks on from its file, grid refuses (EBADF; walk(5)
        # forbids walking an open fid): an intended difference no client meets
        fid = self.pick_fid("walked", "file", "dir")
        if fid is None:
            return False
        f = self.model.fids[fid]
        names: list[bytes] = []
        path = f.path
        for _ in range(self.rng.choice([0, 1, 1, 1, 2, 3])):
            # no ".." at the root: walk(5) keeps it there (grid), diod leaves its export
            n = b".." if path and self.rng.random() < 0.1 else self.pick_name(path)
            names.append(n)
            path = path[:-1] if n == b".." else (*path, n)
        same = f.kind == "walked" and fid != ROOT and self.rng.random() < 0.15
        new = fid if same else self.model.new_fid()
        r = await self.both(f"walk {fid} -> {new} {names}",
                            lambda c: outcome(c.call(m9.Twalk, fid=fid, newfid=new, wnames=tuple(names))))
        if r[0] == "walk" and same and 0 < len(r[1]) < len(names):
            # a partial walk with newfid = fid: walk(5) leaves the fid where it was (grid),
            # Debian's diod moves it to the last name walked (a diod bug; Linux never walks
            # a fid onto itself with names): the fid is only clunked from now on
            f.stale = True
        elif r[0] == "walk" and len(r[1]) == len(names):
            p, via = f.path, f.via
            for n in names:
                if n == b"..":
                    via += (p,)
                p = p[:-1] if n == b".." else (*p, n)
            # a symlink's fid is used only where nothing follows it: diod's requests go by
            # path and follow links on the server (a walk, lopen, chmod through the link),
            # grid's never do (Linux resolves links itself and never sends those)
            kind = "link" if r[1] and r[1][-1] == m9.QTSYMLINK else "walked"
            if not names and f.kind == "link":
                kind = "link"
            dotdot = names[-1] == b".." if names else f.dotdot
            self.model.fids[new] = FidState(p, kind, via=via, dotdot=dotdot)

    async def op_lopen(self) -> Any:
        fid = self.pick_fid("walked", root=False)
        if fid is None:
            return False
        flags = self.rng.choice(O_FLAGS)
        r = await self.both(f"lopen {fid} {flags:#o}",
                            lambda c: outcome(c.call(m9.Tlopen, fid=fid, flags=flags)))
        if r[0] == "open":
            self.model.fids[fid].kind = "dir" if r[1] == m9.QTDIR else "file"

    async def op_lcreate(self) -> Any:
        fid = self.pick_fid("walked", root=False)
        if fid is None:
            return False
        f = self.model.fids[fid]
        name = self.pick_name(f.path)
        flags = self.rng.choice([os.O_RDWR, os.O_RDWR | os.O_EXCL, os.O_WRONLY | os.O_TRUNC,
                                 os.O_RDONLY, os.O_RDWR | os.O_APPEND])
        mode = self.rng.choice(MODES)
        if await self.ref_is_link(fid, name):
            # open(2) with O_CREAT follows a symlink in diod (out of the export, even);
            # grid answers EEXIST: an intended difference (Linux resolves links itself)
            return False
        r = await self.both(f"lcreate {fid} {name!r} {flags:#o} {mode:#o}",
                            lambda c: outcome(c.call(m9.Tlcreate, fid=fid, name=name, flags=flags,
                                                     mode=mode, gid=0)))
        if r[0] == "open":
            f.path = (*f.path, name)
            f.kind = "file"
            self.model.paths.add(f.path)

    async def op_read(self) -> Any:
        # not an open directory: Tread there is EISDIR in grid (.L reads directories with
        # Treaddir), and Debian's diod answers bytes of its own memory (a diod bug)
        fid = self.pick_fid("file", "xread", "xlist", "walked")
        if fid is None:
            return False
        off = self.rng.choice([0, 0, 1, 5, 13, 4096, 300000, 1 << 40])
        count = self.rng.choice([0, 1, 10, 100, 8192])
        kind = self.model.fids[fid].kind
        if kind in ("xread", "xlist"):
            off = 0  # past an xattr's value Debian's diod answers bytes of its memory (a bug)
            count = 8192 if kind == "xlist" else count

        async def read(c: Client) -> Any:
            r = await outcome(c.call(m9.Tread, fid=fid, offset=off, count=count))
            if kind == "xlist" and r[0] == "data":  # names in the filesystem's order
                return ("names", sorted(r[1].split(b"\0")))
            return r
        await self.both(f"read {fid} @{off} {count}", read)

    async def op_write(self) -> Any:
        fid = self.pick_fid("file", "xwrite", "dir", "walked")
        if fid is None:
            return False
        off = self.rng.choice([0, 0, 2, 13, 5000, 70000])
        data = bytes(self.rng.randrange(256) for _ in range(self.rng.choice([0, 1, 7, 100, 3000])))
        await self.both(f"write {fid} @{off} {len(data)}",
                        lambda c: outcome(c.call(m9.Twrite, fid=fid, offset=off, data=data)))

    async def op_readdir(self) -> Any:
        fid = self.pick_fid("dir", "file", "walked")
        if fid is None:
            return False
        count = self.rng.choice([60, 200, 8192])

        async def listing(c: Client) -> Any:
            out: list[tuple[bytes, int]] = []
            offset = 0
            while True:
                try:
                    r = await c.call(m9.Treaddir, fid=fid, offset=offset, count=count)
                except ServerError as e:
                    return ("errno", e.errno, len(out))
                got = unpack_dirents(r.data)
                if not got:
                    return ("names", sorted(out))
                out += [(d.name, d.type) for d in got]
                offset = got[-1].offset
        await self.both(f"readdir {fid} count {count}", listing)

    async def op_getattr(self) -> Any:
        fid = self.pick_fid()
        if fid is None:
            return False
        await self.both(f"getattr {fid}", lambda c: outcome(c.getattr(fid, m9.GetattrMask.ALL)))

    async def op_setattr(self) -> Any:
        fid = self.pick_fid("walked", "file", "dir", "xread")
        if fid is None:
            return False
        S = m9.SetattrMask
        kw: dict[str, int] = dict(mode=0, uid=0, gid=0, size=0, atime_sec=0, atime_nsec=0,
                                  mtime_sec=0, mtime_nsec=0)
        valid = 0
        for _ in range(self.rng.choice([1, 1, 2])):
            what = self.rng.choice(["mode", "size", "times", "atime", "uid", "gid"])
            if valid & S.SIZE or (valid and what == "size"):
                # a size with other fields: diod applies them one by one and stops at the
                # first failure (a chmod stays when a directory's truncate fails), grid's
                # setattr is one change, all or nothing (intended)
                break
            if what == "mode":
                valid |= S.MODE
                kw["mode"] = self.rng.choice(MODES)
            elif what == "size":
                valid |= S.SIZE
                kw["size"] = self.rng.choice([0, 3, 13, 5000, 1 << 20])
            elif what == "times":
                valid |= S.ATIME | S.ATIME_SET | S.MTIME | S.MTIME_SET
                kw.update(atime_sec=self.rng.choice([0, 1_000_000_000, 1_700_000_000]),
                          atime_nsec=self.rng.choice([0, 5, 999_999_999]),
                          mtime_sec=self.rng.choice([1, 1_500_000_000]), mtime_nsec=0)
            elif what == "atime":
                valid |= S.ATIME | S.ATIME_SET
                kw.update(atime_sec=1_234_567_890, atime_nsec=42)
            elif what == "uid":
                valid |= S.UID
                kw["uid"] = self.rng.choice([0, 1000, 1234])
            else:
                valid |= S.GID
                kw["gid"] = self.rng.choice([0, 1000, 2000])
        timed = bool(valid & (S.ATIME_SET | S.MTIME_SET)) and not valid & S.SIZE

        async def setattr_then_getattr(c: Client) -> Any:
            r = await outcome(c.call(m9.Tsetattr, fid=fid, valid=valid, **kw))
            try:
                a = await c.getattr(fid, m9.GetattrMask.ALL)
            except ServerError as e:
                return r, ("errno", e.errno)
            got = attrs(a, times=timed)
            if timed:  # only the times the request set are compared
                keep = [*got[:8]]
                if valid & S.ATIME_SET:
                    keep += got[8:10]
                if valid & S.MTIME_SET:
                    keep += got[10:12]
                got = tuple(keep)
            return r, got
        await self.both(f"setattr {fid} valid {valid:#x} {kw}", setattr_then_getattr)

    async def op_mkdir(self) -> Any:
        fid = self.pick_fid("walked", "dir")
        if fid is None:
            return False
        f = self.model.fids[fid]
        name = self.pick_name(f.path)
        mode = self.rng.choice([0o755, 0o700, 0o2775, 0o1777, 0o4755])
        r = await self.both(f"mkdir {fid} {name!r} {mode:#o}",
                            lambda c: outcome(c.call(m9.Tmkdir, dfid=fid, name=name, mode=mode, gid=0)))
        if r[0] == "qid":
            self.model.paths.add((*f.path, name))

    async def op_symlink(self) -> Any:
        fid = self.pick_fid("walked", "dir")
        if fid is None:
            return False
        f = self.model.fids[fid]
        name = self.pick_name(f.path)
        tgt = self.rng.choice(TARGETS)
        r = await self.both(f"symlink {fid} {name!r} -> {tgt!r}",
                            lambda c: outcome(c.call(m9.Tsymlink, fid=fid, name=name, symtgt=tgt, gid=0)))
        if r[0] == "qid":
            self.model.paths.add((*f.path, name))

    async def op_link(self) -> Any:
        d, t = self.pick_fid("walked", "dir"), self.pick_fid()
        if d is None or t is None:
            return False
        f = self.model.fids[d]
        name = self.pick_name(f.path)
        r = await self.both(f"link {d} {name!r} to {t}",
                            lambda c: outcome(c.call(m9.Tlink, dfid=d, fid=t, name=name)))
        if r == "Rlink":
            self.model.paths.add((*f.path, name))

    async def op_rename(self) -> Any:
        # only fids that are not open: Debian's diod dumps core renaming an open one (Linux
        # renames through a walked fid)
        fid, d = self.pick_fid("walked", root=False), self.pick_fid("walked", "dir")
        if fid is None or d is None or not self.model.fids[fid].path or self.model.fids[fid].dotdot:
            # not the attach root (a mount's root, which Linux never renames): grid answers
            # EBUSY as the VFS does for a mount point, diod EINVAL or EBUSY; not a path
            # ending in ".." (FidState.dotdot)
            return False
        f, df = self.model.fids[fid], self.model.fids[d]
        name = self.pick_name(df.path)
        r = await self.both(f"rename {fid} into {d} as {name!r}",
                            lambda c: outcome(c.call(m9.Trename, fid=fid, dfid=d, name=name)))
        if r == "Rrename":
            new = (*df.path, name)
            old = f.path
            if new != old:
                self.model.moved(old, new)
            # diod's fid takes the new path's text, the ".." parts of dfid's included (even
            # when the path is the same): moving "a" to "a/../b" names a path that no longer
            # exists, and a later rename of a directory on the way breaks it
            f.path, f.via, f.dotdot = new, df.via, False
            f.stale = any(v and v not in self.model.paths for v in f.via)

    async def op_renameat(self) -> Any:
        a, b = self.pick_fid("walked", "dir"), self.pick_fid("walked", "dir")
        if a is None or b is None:
            return False
        fa, fb = self.model.fids[a], self.model.fids[b]
        old, new = self.pick_name(fa.path), self.pick_name(fb.path)
        tmp = self.model.new_fid()

        async def renameat(c: Client) -> Any:
            r = await outcome(c.call(m9.Trenameat, olddirfid=a, oldname=old, newdirfid=b,
                                     newname=new))
            if r != ("errno", errno.EOPNOTSUPP) or c is not self.ref:
                return "Rrenameat" if r == "Rrenameat" else r
            # Debian's diod has no Trenameat: Linux then walks to the file and sends Trename
            w = await outcome(c.call(m9.Twalk, fid=a, newfid=tmp, wnames=(old,)))
            if w[0] == "errno":
                return w
            r = await outcome(c.call(m9.Trename, fid=tmp, dfid=b, name=new))
            await c.call(m9.Tclunk, fid=tmp)
            return "Rrenameat" if r == "Rrename" else r
        r = await self.both(f"renameat {a}/{old!r} -> {b}/{new!r}", renameat)
        if r == "Rrenameat" and (*fa.path, old) != (*fb.path, new):
            self.model.moved((*fa.path, old), (*fb.path, new))

    async def op_unlinkat(self) -> Any:
        fid = self.pick_fid("walked", "dir")
        if fid is None:
            return False
        f = self.model.fids[fid]
        name = self.pick_name(f.path)
        flags = self.rng.choice([0, 0, m9.AT_REMOVEDIR])
        tmp = self.model.new_fid()

        async def unlinkat(c: Client) -> Any:
            r = await outcome(c.call(m9.Tunlinkat, dirfid=fid, name=name, flags=flags))
            if r != ("errno", errno.EOPNOTSUPP) or c is not self.ref:
                return r
            # Debian's diod has no Tunlinkat: Linux's VFS has judged the file's type by then
            # (rmdir of a file is ENOTDIR, unlink of a directory EISDIR), then walks to it
            # and sends Tremove
            w = await outcome(c.call(m9.Twalk, fid=fid, newfid=tmp, wnames=(name,)))
            if w[0] == "errno":
                return w
            is_dir = stat.S_ISDIR((await c.getattr(tmp)).mode)
            if is_dir != bool(flags & m9.AT_REMOVEDIR):
                await c.call(m9.Tclunk, fid=tmp)
                return ("errno", errno.EISDIR if is_dir else errno.ENOTDIR)
            r = await outcome(c.call(m9.Tremove, fid=tmp))
            return "Runlinkat" if r == "Rremove" else r
        r = await self.both(f"unlinkat {fid} {name!r} {flags:#x}", unlinkat)
        if r == "Runlinkat":
            self.model.gone((*f.path, name))

    async def op_xattrwalk(self) -> Any:
        fid = self.pick_fid("walked", "file", "dir")
        if fid is None:
            return False
        name = self.rng.choice([b"", *XNAMES])
        new = self.model.new_fid()

        async def walk_read(c: Client) -> Any:
            r = await outcome(c.call(m9.Txattrwalk, fid=fid, newfid=new, name=name))
            if r[0] != "size":
                return r
            data = await outcome(c.call(m9.Tread, fid=new, offset=0, count=r[1] + 10))
            if name == b"" and data[0] == "data":  # the list: order is the filesystem's
                data = ("names", sorted(data[1].split(b"\0")))
            return r, data
        r = await self.both(f"xattrwalk {fid} -> {new} {name!r}", walk_read)
        if r[0] != "errno":
            f = self.model.fids[fid]
            self.model.fids[new] = FidState(f.path, "xlist" if not name else "xread", via=f.via)

    async def op_xattrcreate(self) -> Any:
        fid = self.pick_fid("walked", "file", "dir")
        if fid is None:
            return False
        name = self.rng.choice(XNAMES)
        value = self.rng.choice([b"", b"v", b"value-" * 10])
        # every byte of the announced size is written (Debian's diod leaves the others as
        # whatever its memory held, grid zeros them); some writes go past the end
        size = max(0, len(value) - self.rng.choice([0, 0, 0, 1]))
        # not XATTR_CREATE with an empty value: grid makes an empty xattr, Debian's diod
        # removes one whatever the flags (an intended difference)
        flags = self.rng.choice([0, 0, 1, 2] if size else [0, 2])
        beyond = self.rng.random() < 0.3
        new = self.model.new_fid()

        async def create_write_clunk(c: Client) -> Any:
            out = [await outcome(c.call(m9.Twalk, fid=fid, newfid=new, wnames=()))]
            if out[0][0] == "errno":
                return out
            out.append(await outcome(c.call(m9.Txattrcreate, fid=new, name=name,
                                            attr_size=size, flags=flags)))
            if value:
                out.append(await outcome(c.call(m9.Twrite, fid=new, offset=0, data=value)))
            if beyond:  # bug-setxattr-offsetcheck: diod keeps what fits (nothing here)
                out.append(await outcome(c.call(m9.Twrite, fid=new, offset=size, data=b"xy")))
            out.append(await outcome(c.call(m9.Tclunk, fid=new)))
            return out
        await self.both(f"xattrcreate {fid} {name!r} size {size} flags {flags} "
                        f"write {len(value)}{' and past the end' if beyond else ''}",
                        create_write_clunk)

    async def op_lock(self) -> Any:
        fid = self.pick_fid()
        if fid is None:
            return False
        kind = self.rng.choice([m9.LockType.RDLCK, m9.LockType.WRLCK, m9.LockType.UNLCK])
        # one lock owner per fid (proc_id = the fid): grid's locks are POSIX record locks
        # owned by (client_id, proc_id), Debian's diod's belong to the fid's open file (as
        # flock's do), so two fids of one owner conflict in diod and not in grid (intended)
        r = await self.both(f"lock {fid} {kind.name}", lambda c: outcome(c.call(
            m9.Tlock, fid=fid, type=kind, flags=0, start=0, length=0, proc_id=fid,
            client_id=b"diff")))
        f = self.model.fids[fid]
        if r == ("lock", m9.LockStatus.SUCCESS):
            f.locked = kind
        elif r == ("lock", m9.LockStatus.BLOCKED) and f.locked == m9.LockType.RDLCK:
            # a failed upgrade: grid keeps the read lock (fcntl's), Debian's diod has lost it
            # (flock converts a lock by dropping the old one first); unlock both to agree
            await self.both(f"lock {fid} UNLCK (after a failed upgrade)", lambda c: outcome(
                c.call(m9.Tlock, fid=fid, type=m9.LockType.UNLCK, flags=0, start=0,
                       length=0, proc_id=fid, client_id=b"diff")))
            f.locked = m9.LockType.UNLCK

    async def op_getlock(self) -> Any:
        fid = self.pick_fid()
        if fid is None:
            return False
        kind = self.rng.choice([m9.LockType.RDLCK, m9.LockType.WRLCK])
        own_read = kind == m9.LockType.WRLCK and self.model.fids[fid].locked == m9.LockType.RDLCK

        async def getlock(c: Client) -> Any:
            r = await outcome(c.call(m9.Tgetlock, fid=fid, type=kind, start=0, length=0,
                                     proc_id=fid, client_id=b"diff"))
            if own_read and r[0] == "getlock":
                # Debian's diod does not test a WRLCK through a fid holding a read lock
                # (its ioctx_testlock says so: it answers UNLCK rather than risk the
                # upgrade), grid reports another owner's lock as F_GETLK does
                return ("getlock", "not tested", *r[2:])
            if r[0] == "getlock" and r[1] != m9.LockType.UNLCK:
                # a conflict: grid names the holder's lock as F_GETLK does (a read lock
                # blocks a WRLCK), Debian's diod echoes the request's type; both say "held"
                return ("getlock", "held", *r[2:])
            return r
        await self.both(f"getlock {fid} {kind.name}", getlock)

    async def op_statfs(self) -> Any:
        fid = self.pick_fid("walked", "file", "dir", "xread")
        if fid is None:
            return False
        await self.both(f"statfs {fid}", lambda c: outcome(c.call(m9.Tstatfs, fid=fid)))

    async def op_fsync(self) -> Any:
        fid = self.pick_fid()
        if fid is None:
            return False
        await self.both(f"fsync {fid}", lambda c: outcome(c.call(m9.Tfsync, fid=fid, datasync=0)))

    async def op_readlink(self) -> Any:
        fid = self.pick_fid()
        if fid is None:
            return False
        await self.both(f"readlink {fid}", lambda c: outcome(c.call(m9.Treadlink, fid=fid)))

    async def op_clunk(self) -> Any:
        fid = self.pick_fid(fresh=False)
        if fid is None or fid == ROOT:
            return False
        await self.both(f"clunk {fid}", lambda c: outcome(c.call(m9.Tclunk, fid=fid)))
        del self.model.fids[fid]

    async def op_remove(self) -> Any:
        # not an xattr fid: grid's EINVAL, diod removes the file it came from
        fid = self.pick_fid("walked", "file", "dir")
        if fid is None or not self.model.fids[fid].path or self.model.fids[fid].dotdot:
            # not the attach root or a clone of it: grid answers EBUSY, diod would rmdir
            # the directory it exports (an intended difference); not a path ending in ".."
            return False
        f = self.model.fids.pop(fid)
        r = await self.both(f"remove {fid}", lambda c: outcome(c.call(m9.Tremove, fid=fid)))
        if r == "Rremove":
            self.model.gone(f.path)

    async def op_flush(self) -> Any:
        old = self.rng.randrange(1, 100)
        await self.both(f"flush {old}", lambda c: outcome(c.call(m9.Tflush, oldtag=old)))


async def snapshot(c: Client, root: int) -> dict[bytes, Any]:
    """Everything about a tree that must agree, read through 9P2000.L: per path its
    attributes, a file's bytes, a link's target and every xattr."""
    out: dict[bytes, Any] = {}

    async def xattrs(fid: int) -> list[tuple[bytes, bytes]]:
        n = c.fid()
        r = await c.call(m9.Txattrwalk, fid=fid, newfid=n, name=b"")
        names = (await c.read(n, 0, r.size) if r.size else b"").split(b"\0")
        await c.clunk(n)
        vals = []
        for name in sorted(x for x in names if x):
            v = c.fid()
            r = await c.call(m9.Txattrwalk, fid=fid, newfid=v, name=name)
            vals.append((name, await c.read(v, 0, r.size) if r.size else b""))
            await c.clunk(v)
        return vals

    async def visit(fid: int, rel: bytes) -> None:
        a = await c.getattr(fid, m9.GetattrMask.ALL)
        entry: dict[str, Any] = {"attr": attrs(a)}
        if stat.S_ISLNK(a.mode):
            entry["target"] = (await c.call(m9.Treadlink, fid=fid)).target
        else:
            try:
                entry["xattrs"] = await xattrs(fid)
            except ServerError as e:
                entry["xattrs"] = ("errno", e.errno)
        out[rel] = entry
        if stat.S_ISREG(a.mode):
            o = c.fid()
            await c.walk(fid, o)
            await c.lopen(o)
            entry["data"] = await c.read_all(o)
            await c.clunk(o)
        if stat.S_ISDIR(a.mode):
            o = c.fid()
            await c.walk(fid, o)
            await c.lopen(o)
            names = sorted(d.name for d in await c.readdir_all(o) if d.name not in (b".", b".."))
            await c.clunk(o)
            for name in names:
                k = c.fid()
                try:
                    await c.walk(fid, k, [name])
                except ServerError as e:
                    out[rel + b"/" + name] = ("walk", e.errno)
                    continue
                await visit(k, rel + b"/" + name)
                await c.clunk(k)
    await visit(root, b"")
    return out
