"""The spawn engine against a real directory: random operation sequences, same results.

A hypothesis state machine applies each operation to the engine and to a plain temporary
directory (the model: the kernel's own filesystem), and compares outcomes (success or the
errno) and then the whole visible state: names, types, sizes, contents, link counts, modes,
symlink targets. Closing and reopening the engine (a daemon restart) is one of the steps.

Saves are steps too, and so are the three phases of a concurrent save (spawn.save.SaveJob:
snapshot, write, finish, or abort), with other operations between them: at the finish the
saved root, spawned afresh, must show exactly the model as it was at the snapshot, and the
live spawn the model as it is now. A variant runs with a small ``overlay_limit``, so that
spilling file contents into the store is exercised against the same model.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spawn.cred import ROOT
from spawn.engine import Engine
from spawn.importer import Importer
from spawn.save import SaveBusy, SaveJob, save
from store.memory import MemoryStore

NAMES = st.sampled_from([b"a", b"b", b"c", b"d1", b"d2"])
DIRS = st.sampled_from([b"", b"d1", b"d2", b"d1/d2"])
DATA = st.binary(max_size=3000) | st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 140_000), st.integers(0, 255))
OFFSETS = st.integers(0, 200_000)


def _outcome(fn):
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", e.errno)


class EngineVsDisk(RuleBasedStateMachine):
    overlay_limit: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="grid-model-")
        self.model = os.path.join(self.tmp, "model")
        base = os.path.join(self.tmp, "base")
        os.makedirs(os.path.join(base, "d1"))
        with open(os.path.join(base, "a"), "wb") as f:
            f.write(os.urandom(100_000))
        with open(os.path.join(base, "d1", "b"), "wb") as f:
            f.write(b"base file")
        os.symlink("a", os.path.join(base, "c"))
        shutil.copytree(base, self.model, symlinks=True)
        self.store = MemoryStore()
        root = Importer(self.store).run(base)
        self.spawns = 0
        self.ovdir = os.path.join(self.tmp, "overlay")
        self.e = Engine(self.store, self.ovdir, root, overlay_limit=self.overlay_limit)
        self.job: SaveJob | None = None
        self.job_model: dict | None = None  # the model's tree at the job's snapshot
        self.job_inos: dict | None = None

    def teardown(self) -> None:
        self.e.close()
        shutil.rmtree(self.tmp)

    def engine(self, base=None, ovdir=None) -> Engine:
        return Engine(self.store, ovdir or self.ovdir, base, overlay_limit=self.overlay_limit)

    # -- helpers ---------------------------------------------------------------------------

    def ino(self, rel: bytes) -> int:
        ino = 1
        for part in [p for p in rel.split(b"/") if p]:
            ino = self.e.lookup(ROOT, ino, part).ino
        return ino

    def mpath(self, rel: bytes) -> bytes:
        return os.path.join(os.fsencode(self.model), rel) if rel else os.fsencode(self.model)

    def real_dirs(self, *ds: bytes) -> bool:
        """Only act under parents that are real directories: the kernel would follow a
        symlink in the middle of a path, which the engine (walked by inode) never sees."""
        for d in ds:
            p = self.mpath(d)
            if os.path.islink(p) or not os.path.isdir(p):
                return False
            for i in range(1, d.count(b"/") + 1):
                if os.path.islink(self.mpath(b"/".join(d.split(b"/")[:i]))):
                    return False
        return True

    def both(self, engine_fn, model_fn):
        a, b = _outcome(engine_fn), _outcome(model_fn)
        assert a[0] == b[0], (a, b)
        if a[0] == "err":
            assert a[1] == b[1], (a, b)
        return a

    def parent_ino(self, d: bytes):
        return self.ino(d)

    # -- rules -----------------------------------------------------------------------------

    @rule(d=DIRS, n=NAMES, data=DATA)
    def create_write(self, d, n, data):
        if not self.real_dirs(d):
            return
        def eng():
            p = self.ino(d)
            try:
                i = self.e.lookup(ROOT, p, n).ino
                a = self.e.getattr(ROOT, i)
                if stat.S_ISDIR(a.mode):
                    raise OSError(errno.EISDIR, "dir")
                if not stat.S_ISREG(a.mode):
                    raise OSError(errno.EEXIST, "not a file")
                self.e.setattr(ROOT, i, size=0)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                i = self.e.create(ROOT, p, n, 0o644).ino
            self.e.write(ROOT, i, 0, data)

        def mod():
            p = os.path.join(self.mpath(d), n)
            if os.path.islink(p):  # the engine side does not follow symlinks either
                raise OSError(errno.EEXIST, "not a file")
            with open(p, "wb") as f:
                f.write(data)

        self.both(eng, mod)

    @rule(d=DIRS, n=NAMES, off=OFFSETS, data=DATA, append=st.booleans())
    def write_at(self, d, n, off, data, append):
        if not self.real_dirs(d):
            return
        def eng():
            i = self.ino(d + b"/" + n if d else n)
            a = self.e.getattr(ROOT, i)
            if not stat.S_ISREG(a.mode):
                raise OSError(errno.EISDIR if stat.S_ISDIR(a.mode) else errno.EINVAL, "")
            self.e.write(ROOT, i, off, data, append=append)

        def mod():
            p = os.path.join(self.mpath(d), n)
            if os.path.islink(p):
                raise OSError(errno.EINVAL, "")
            fd = os.open(p, os.O_WRONLY | (os.O_APPEND if append else 0))
            try:
                if append:
                    os.write(fd, data)
                else:
                    os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        self.both(eng, mod)

    @rule(d=DIRS, n=NAMES, size=OFFSETS)
    def truncate(self, d, n, size):
        if not self.real_dirs(d):
            return
        def eng():
            i = self.ino(d + b"/" + n if d else n)
            if stat.S_ISLNK(self.e.getattr(ROOT, i).mode):
                raise OSError(errno.EINVAL, "")
            self.e.setattr(ROOT, i, size=size)

        def mod():
            p = os.path.join(self.mpath(d), n)
            if os.path.islink(p):
                raise OSError(errno.EINVAL, "")
            os.truncate(p, size)

        self.both(eng, mod)

    @rule(d=DIRS, n=NAMES)
    def mkdir(self, d, n):
        if not self.real_dirs(d):
            return
        self.both(lambda: self.e.mkdir(ROOT, self.ino(d), n, 0o755), lambda: os.mkdir(os.path.join(self.mpath(d), n)))

    @rule(d=DIRS, n=NAMES)
    def unlink(self, d, n):
        if not self.real_dirs(d):
            return
        self.both(lambda: self.e.unlink(ROOT, self.ino(d), n), lambda: os.unlink(os.path.join(self.mpath(d), n)))

    @rule(d=DIRS, n=NAMES)
    def rmdir(self, d, n):
        if not self.real_dirs(d):
            return
        self.both(lambda: self.e.rmdir(ROOT, self.ino(d), n), lambda: os.rmdir(os.path.join(self.mpath(d), n)))

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES)
    def rename(self, d1, n1, d2, n2):
        if not self.real_dirs(d1, d2):
            return
        self.both(
            lambda: self.e.rename(ROOT, self.ino(d1), n1, self.ino(d2), n2),
            lambda: os.rename(os.path.join(self.mpath(d1), n1), os.path.join(self.mpath(d2), n2)),
        )

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES)
    def link(self, d1, n1, d2, n2):
        if not self.real_dirs(d1, d2):
            return
        def eng():
            src = self.ino(d1 + b"/" + n1 if d1 else n1)
            self.e.link(ROOT, src, self.ino(d2), n2)

        self.both(eng, lambda: os.link(os.path.join(self.mpath(d1), n1), os.path.join(self.mpath(d2), n2), follow_symlinks=False))

    @rule(d=DIRS, n=NAMES, dest=st.sampled_from([b"a", b"../x", b"d1/b"]))
    def symlink(self, d, n, dest):
        if not self.real_dirs(d):
            return
        self.both(lambda: self.e.symlink(ROOT, self.ino(d), n, dest), lambda: os.symlink(dest, os.path.join(self.mpath(d), n)))

    @rule(d=DIRS, n=NAMES, mode=st.sampled_from([0o600, 0o755, 0o4711, 0o640]))
    def chmod(self, d, n, mode):
        if not self.real_dirs(d):
            return
        def eng():
            i = self.ino(d + b"/" + n if d else n)
            if stat.S_ISLNK(self.e.getattr(ROOT, i).mode):
                return
            self.e.setattr(ROOT, i, mode=mode)

        def mod():
            p = os.path.join(self.mpath(d), n)
            if os.path.islink(p):
                os.lstat(p)
                return
            os.chmod(p, mode)

        self.both(eng, mod)

    @rule()
    def save_snapshot(self):
        """Save: the spawn goes on over the new root; nothing visible changes."""
        inos = self.inos()
        if self.job is not None:  # one save at a time
            try:
                save(self.e, name="model", user="root")
            except SaveBusy:
                return
            raise AssertionError("a second save was not refused")
        self.root = save(self.e, name="model", user="root")
        assert self.inos() == inos

    @rule()
    @precondition(lambda self: self.job is None)
    def save_and_respawn(self):
        """Save, then spawn the saved root afresh: the same tree, the same inode numbers."""
        inos = self.inos()
        root = save(self.e, name="model", user="root")
        self.e.close()
        self.spawns += 1
        self.ovdir = os.path.join(self.tmp, f"overlay{self.spawns}")
        self.e = self.engine(root)
        assert self.inos() == inos

    @rule()
    @precondition(lambda self: self.job is None)
    def save_begin(self):
        """A concurrent save's snapshot: what the saved root must show, whatever comes next."""
        self.job = SaveJob(self.e, name="model", user="root")
        self.job.snapshot()
        self.job_model = self.walk_model(self.mpath(b""), b"")
        self.job_inos = self.inos()

    @rule()
    @precondition(lambda self: self.job is not None and self.job.state == "snapshot")
    def save_write(self):
        assert self.job is not None
        self.job.write()

    @rule()
    @precondition(lambda self: self.job is not None and self.job.state == "written")
    def save_finish(self):
        """Rebase: the live tree is checked by the invariant; the saved root, spawned
        afresh, must be the model at the snapshot, with the same inode numbers."""
        assert self.job is not None
        root = self.job.finish()
        self.job = None
        self.spawns += 1
        fresh = self.engine(root, os.path.join(self.tmp, f"overlay{self.spawns}"))
        try:
            assert self.walk_engine(fresh, 1, b"") == self.job_model
            assert self.inos(fresh) == self.job_inos
        finally:
            fresh.close()

    @rule()
    @precondition(lambda self: self.job is not None)
    def save_abort(self):
        assert self.job is not None
        self.job.abort()
        self.job = None

    def inos(self, e: Engine | None = None) -> dict[bytes, int]:
        e = e or self.e
        out = {}

        def walk(ino, rel):
            for name, a in e.readdir(ROOT, ino):
                p = rel + b"/" + name if rel else name
                out[p] = a.ino
                if stat.S_ISDIR(a.mode):
                    walk(a.ino, p)

        walk(1, b"")
        return out

    @rule()
    def spill_all(self):
        """Move every file's pages into the store (what a full overlay does to the largest)."""
        self.e.spill(0)
        assert self.e.overlay_bytes == 0

    @rule()
    def restart(self):
        """The daemon dies and comes back: the overlay is all there is (a save that was
        running is lost with the process; the spawn is as if it had never started)."""
        self.e.close()
        self.job = None
        self.e = self.engine()

    # -- the comparison --------------------------------------------------------------------

    @invariant()
    def same_tree(self):
        assert self.walk_engine(self.e, 1, b"") == self.walk_model(self.mpath(b""), b"")

    @invariant()
    def overlay_bounded(self):
        """The page-byte count is exact, and within the limit after every step (a write that
        passes the limit spills before it returns)."""
        assert self.e.overlay_bytes == self.e.ov.count_page_bytes(self.e.ov.txn())
        if self.overlay_limit is not None:
            assert self.e.overlay_bytes <= self.overlay_limit

    def walk_engine(self, e: Engine, ino: int, rel: bytes) -> dict:
        out = {}
        for name, a in e.readdir(ROOT, ino):
            p = rel + b"/" + name if rel else name
            out[p] = self._desc_engine(e, a)
            if stat.S_ISDIR(a.mode):
                out.update(self.walk_engine(e, a.ino, p))
        return out

    def walk_model(self, path: bytes, rel: bytes) -> dict:
        out = {}
        for name in sorted(os.listdir(path)):
            p = rel + b"/" + name if rel else name
            full = os.path.join(path, name)
            st_ = os.lstat(full)
            out[p] = self._desc_model(full, st_)
            if stat.S_ISDIR(st_.st_mode):
                out.update(self.walk_model(full, p))
        return out

    def _desc_engine(self, e: Engine, a):
        d = {"mode": a.mode, "nlink": a.nlink}
        if stat.S_ISREG(a.mode):
            d["size"] = a.size
            d["data"] = e.read(ROOT, a.ino, 0, a.size + 10)
        elif stat.S_ISLNK(a.mode):
            d["target"] = e.readlink(ROOT, a.ino)
        return d

    def _desc_model(self, full, st_):
        d = {"mode": st_.st_mode, "nlink": st_.st_nlink}
        if stat.S_ISREG(st_.st_mode):
            d["size"] = st_.st_size
            with open(full, "rb") as f:
                d["data"] = f.read()
        elif stat.S_ISLNK(st_.st_mode):
            d["target"] = os.readlink(full)
        return d


EngineVsDisk.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineVsDisk = EngineVsDisk.TestCase


class EngineVsDiskSpilling(EngineVsDisk):
    """The same, with an overlay of at most 4 KiB of pages, so that nearly every write spills
    a file to the store, during concurrent saves too."""

    overlay_limit = 4 << 10


EngineVsDiskSpilling.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineVsDiskSpilling = EngineVsDiskSpilling.TestCase
