"""bench/spawn: spawning, reading and saving through the product (the node daemon and a FUSE
mount), beside restic and borg, in one run, on the same data.

    .venv/bin/python bench/spawn.py [--dir /var/tmp] [--quick] [--skip-peers] [--reps 7]
                                    [--keep] [--out bench/out/spawn.json]

Run as root: the cold figures drop the page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``)
and the mounts need FUSE. Peers: Debian's restic (``restic mount``) and borgbackup (``borg
mount`` needs python3-llfuse or python3-pyfuse3); a missing peer gets a row saying why.

Data, made in a fresh work directory under ``--dir`` (bench/gentree.py for the tree):
  * ``small``: a 10 MiB root (ten 1 MiB random files);
  * ``big``: a 10 GiB root (ten 1 GiB files, each 1 MiB of random data then a hole);
  * ``tree``: the import benchmark's big tree (gentree.make_big: 1 GiB of 4 KiB-4 MiB files,
    half random and half zeros, 30 % duplicates), imported into grid, restic and borg;
  * ``data``: one 1 GiB file, half random and half zeros (gentree.half_random), likewise.
  ``--quick`` shrinks the tree and the data file to 64 MiB and the repetitions to 3: a smoke
  run. The small and big roots keep their sizes (the big one is sparse: cheap).

Measures (grid: one ``grid serve`` started here, stopped at the end):
  1. Spawn + first ``ls -l`` of the 10 MiB and the 10 GiB root, median of ``--reps``, daemon
     and page cache warm, three ways: (a) ``grid spawn NAME -q --mount DIR`` then ``ls -l
     DIR``; (b) ``grid spawn NAME -q``, ``grid mount ID DIR``, ``ls -l DIR``; (c) the spawn
     request alone, sent from this process over the daemon's socket (no interpreter start-up),
     then ``grid mount`` and ``ls -l``. Also once each cold (fresh daemon, caches dropped),
     and the start-up of ``python -c pass``, ``grid --version`` and of the mount process's
     interpreter (``python -m spawn.fuse_main --help``), so the reader can subtract them.
  2. Sequential read of the 1 GiB file through the mount: cold (fresh daemon, so its block
     cache is empty; page cache dropped) and warm (the same mount again), with a Python loop
     of 1 MiB ``readinto`` calls and with ``dd bs=1M``; and the source file on local disk.
     Also, warm, ``dd bs=10k`` (tar's record size) of its first 51 MB: the cost of a read(2).
  3. ``tar -cf - -C DIR . | cat > /dev/null`` of the whole tree, cold (GNU tar special-cases
     ``-f /dev/null`` and would read nothing): grid mount (fresh daemon and spawn),
     ``restic mount``, ``borg mount`` (fresh mount process each), and the source on local disk;
     and through grid once more with ``tar -b 2048`` (1 MiB records instead of 10 KiB).
  4. Cold read of every file under 64 KiB in the tree (sorted path order, each opened, read
     whole, closed), files/s, through the same mounts, fresh each time; through grid a second
     time in the same mount, warm, to tell request round trips from block fetches.
  5. Save after changing 1 % of the 1 GiB file in a spawn: 64 writes of 1/6400 of the file
     (164 KiB for 1 GiB), one at a random offset in each 64th of it, through the mount, then
     fsync; then ``grid save ID`` (wall time of the command, and the daemon's own figure),
     and the blocks and bytes it added (``grid store stat --json``). Peers: the same writes
     applied to the source file, then ``restic backup`` (finds its parent snapshot) and
     ``borg create``; their data added (their own count) and repository growth.

MB = 10^6 bytes; MB/s of a tree = its logical bytes / seconds. Every command's output goes to
WORK/logs. The table is printed at the end and the figures written as JSON to ``--out``.
Everything is undone at the end, on error or Ctrl-C too: mounts, the daemon, the work
directory (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The project before bench/, whose spawn.py (this file) would shadow the spawn package.
sys.path[:] = [str(HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from grid.daemon.client import DaemonClient  # noqa: E402

sys.path.append(str(HERE))

import gentree  # noqa: E402
import import_bench as ib  # noqa: E402

sys.path.remove(str(HERE))  # import_bench put bench/ first again; it stays at the end

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
SMALL_FILE = 64 * KIB
DATA_SEED = "spawn-bench-data"
CHANGE_SEED = 505
N_CHANGES = 64
SMALL_READS = 5000  # dd bs=10k count=: 51 MB in tar's record size
TIMEOUT = 600.0  # any one command; a hang becomes an error with the command named


class Failed(Exception):
    """A step failed; the message says which command and why."""


# --------------------------------------------------------------------------------------------
# Running and timing commands


class Runner:
    """Runs commands with a timeout, output to files in WORK/logs, and times them."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.n = 0

    def run(self, cmd: list[str], env: dict[str, str] | None = None, *, check: bool = True,
            timeout: float = TIMEOUT, tag: str = "") -> tuple[float, str, str, int]:
        """(wall seconds, stdout, stderr, exit status) of ``cmd``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.n += 1
        base = self.logs / f"{self.n:04d}-{tag or Path(cmd[0]).name}"
        out_p, err_p = base.with_suffix(".out"), base.with_suffix(".err")
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise Failed(f"{' '.join(cmd)}: no answer after {timeout:.0f} s "
                             f"(killed; output in {base}.*)") from None
            secs = time.perf_counter() - t0
        with open(self.logs / "times.tsv", "a") as f:
            f.write(f"{self.n}\t{secs:.4f}\t{rc}\t{' '.join(cmd)}\n")
        stdout, stderr = (p.read_text(errors="replace") for p in (out_p, err_p))
        if check and rc != 0:
            tail = " | ".join((stderr or stdout).strip().splitlines()[-4:])
            raise Failed(f"{' '.join(cmd)} exited {rc}: {tail}")
        return secs, stdout, stderr, rc


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


_COLD = {"ok": None}


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False if not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        _COLD["ok"] = False
        return False
    _COLD["ok"] = _COLD["ok"] is not False
    return True


def mounted_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mounts."""
    out = []
    prefix = os.fspath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt = line.split()[1].encode().decode("unicode_escape")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                out.append(mnt)
    return sorted(out, key=len, reverse=True)


def lazy_unmount(path: str | Path) -> None:
    for exe in ("fusermount3", "fusermount"):
        if shutil.which(exe):
            r = subprocess.run([exe, "-u", "-z", os.fspath(path)], capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=60)
            if r.returncode == 0:
                return
    subprocess.run(["umount", "-l", os.fspath(path)], capture_output=True, timeout=60)


# --------------------------------------------------------------------------------------------
# grid: the daemon, spawns, mounts


class GridNode:
    """One grid home with its daemon, run as the product is: the ``grid`` command."""

    def __init__(self, work: Path, exe: str, runner: Runner) -> None:
        self.work = work
        self.exe = exe
        self.home = work / "grid-home"
        self.tool = ib.Grid(work, exe)  # init and import, as bench/import does them
        self.r = runner
        # Mount logs go to $XDG_STATE_HOME/grid/log: keep them in the work directory.
        self.env = {**self.tool.env(self.home), "XDG_STATE_HOME": str(work / "state")}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = work / "logs" / "daemon.log"
        self.mounts: dict[str, str] = {}  # mount point -> spawn id
        self.spawns: set[str] = set()
        self.n_dirs = 0
        self.starts = 0

    @property
    def sock(self) -> str:
        return os.fspath(self.home / "run" / "grid.sock")

    def init(self) -> None:
        self.tool.init(self.home).check()

    def import_tree(self, src: Path, name: str) -> float:
        m, _ = self.tool.backup(self.home, src, name)
        return m.seconds

    def start(self) -> None:
        self.daemon_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.daemon_log, "ab") as log:
            self.daemon = subprocess.Popen([self.exe, "serve"], env=self.env, stdout=log,
                                           stderr=log, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise Failed(f"grid serve exited {self.daemon.returncode} at start: "
                             f"{self.log_tail()}")
            with contextlib.suppress(OSError):
                with DaemonClient(self.sock, timeout=5) as c:
                    c.call("ping")
                return
            time.sleep(0.02)
        raise Failed(f"grid serve did not answer within 60 s: {self.log_tail()}")

    def stop(self) -> None:
        """Unmount what we mounted, then ``grid stop`` (SIGTERM, then SIGKILL, if it hangs)."""
        for mnt in list(self.mounts):
            self.unmount(mnt)
        p = self.daemon
        if p is None or p.poll() is not None:
            self.daemon = None
            return
        # `grid stop` waits until the daemon's pid is gone, and our child stays a zombie
        # until we reap it: so run it beside our wait, not before it.
        stopper = subprocess.Popen([self.exe, "stop"], env=self.env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for sig, wait in ((None, 30), (signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
                print(f"  (grid serve did not stop; sent {sig.name})", flush=True)
            try:
                p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            stopper.wait(30)
        except subprocess.TimeoutExpired:
            stopper.kill()
            stopper.wait()
        self.daemon = None
        self.spawns.clear()  # the daemon forgot their live state; they stay on disk

    def restart_cold(self) -> None:
        """A fresh daemon (empty block cache) and an empty page cache."""
        self.stop()
        drop_caches()
        self.start()

    def log_tail(self, n: int = 4) -> str:
        with contextlib.suppress(OSError):
            lines = self.daemon_log.read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])
        return "(no daemon log)"

    def rss_peak_kib(self) -> int | None:
        if self.daemon is None:
            return None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.daemon.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    def newdir(self) -> Path:
        self.n_dirs += 1
        d = self.work / "mnt" / f"g{self.n_dirs}"
        d.mkdir(parents=True)
        return d

    def grid(self, *args: str, tag: str = "grid", timeout: float = TIMEOUT) -> tuple[float, str]:
        secs, out, _, _ = self.r.run([self.exe, *args], self.env, timeout=timeout, tag=tag)
        return secs, out

    def spawn(self, name: str, mount: Path | None = None) -> tuple[float, str]:
        """``grid spawn NAME -q [--mount DIR]``: (seconds, spawn id)."""
        args = ["spawn", name, "-q", *(["--mount", os.fspath(mount)] if mount else [])]
        secs, out = self.grid(*args, tag="grid-spawn")
        sid = out.strip().splitlines()[-1]
        self.spawns.add(sid)
        if mount:
            self.mounts[os.fspath(mount)] = sid
        return secs, sid

    def spawn_rpc(self, name: str) -> tuple[float, str]:
        """The spawn request alone, from this process: connect, ``spawn``, reply."""
        t0 = time.perf_counter()
        with DaemonClient(self.sock, timeout=TIMEOUT) as c:
            d = c.call("spawn", name)
        secs = time.perf_counter() - t0
        self.spawns.add(str(d["id"]))
        return secs, str(d["id"])

    def mount(self, sid: str, mnt: Path) -> float:
        secs, _ = self.grid("mount", sid, os.fspath(mnt), tag="grid-mount")
        self.mounts[os.fspath(mnt)] = sid
        return secs

    def unmount(self, mnt: str | Path) -> None:
        mnt = os.fspath(mnt)
        self.mounts.pop(mnt, None)
        try:
            self.grid("unmount", mnt, tag="grid-unmount", timeout=60)
        except Failed as e:
            print(f"  (grid unmount {mnt} failed: {e}; detaching lazily)", flush=True)
            lazy_unmount(mnt)

    def kill(self, sid: str) -> None:
        with DaemonClient(self.sock, timeout=TIMEOUT) as c:
            c.call("kill", sid)
        self.spawns.discard(sid)

    def drop(self, mnt: Path) -> None:
        """Unmount ``mnt`` and kill its spawn."""
        sid = self.mounts.get(os.fspath(mnt))
        self.unmount(mnt)
        if sid is not None:
            self.kill(sid)

    def stat(self) -> dict[str, Any]:
        _, out = self.grid("store", "stat", "--json", tag="grid-stat")
        return json.loads(out)


# --------------------------------------------------------------------------------------------
# Peers: restic mount, borg mount


class PeerMount:
    """``restic mount`` or ``borg mount -f`` of one repository, in the background; ``path`` is
    where the backed-up directory appears inside it."""

    def __init__(self, tool: ib.Tool, repo: Path, src: Path, mnt: Path, r: Runner,
                 archive: str = "") -> None:
        self.tool, self.repo, self.mnt = tool, repo, mnt
        rel = os.fspath(src).lstrip("/")
        mnt.mkdir(parents=True, exist_ok=True)
        r.logs.mkdir(parents=True, exist_ok=True)
        r.n += 1
        log = r.logs / f"{r.n:04d}-{tool.name}-mount.log"
        if tool.name == "restic":
            cmd = ["restic", "mount", os.fspath(mnt)]
            self.path = mnt / "snapshots" / "latest" / rel
        else:
            cmd = ["borg", "mount", "-f", f"{repo}::{archive}", os.fspath(mnt)]
            self.path = mnt / rel
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, env=tool.env(repo), stdout=f, stderr=f,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait(cmd, log)
        except BaseException:  # Ctrl-C too: the caller never gets this object to close
            self.close()
            raise

    def _wait(self, cmd: list[str], log: Path) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                raise Failed(f"{' '.join(cmd)} exited {self.proc.returncode}: {tail}")
            with contextlib.suppress(OSError):  # restic answers EIO while it loads
                if self.path.is_dir():
                    return
            time.sleep(0.05)
        raise Failed(f"{' '.join(cmd)}: {self.path} did not appear within 120 s")

    def close(self) -> None:
        if self.proc.poll() is None:
            lazy_unmount(self.mnt)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def peer_unavailable(tool: ib.Tool) -> str | None:
    why = tool.unavailable()
    if why:
        return why
    if tool.name == "borg":  # borg mount needs a FUSE binding in borg's own interpreter
        exe = shutil.which("borg") or "borg"
        with open(exe, "rb") as f:
            first = f.readline()
        interp = first[2:].decode().split() if first.startswith(b"#!") else [sys.executable]
        if all(ib.quick([*interp, "-c", f"import {m}"]).returncode
               for m in ("llfuse", "pyfuse3")):
            return "borg mount needs python3-llfuse or python3-pyfuse3 (apt-get install)"
    return None


# --------------------------------------------------------------------------------------------
# Data


def make_data_file(path: Path, size: int) -> None:
    """``size`` bytes, half random and half zeros, in 64 MiB pieces (gentree.half_random)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    piece = 64 * MIB
    with open(path, "wb") as f:
        for i in range(0, size, piece):
            data, _ = gentree.half_random(f"{DATA_SEED}:{i}", min(piece, size - i))
            f.write(data)


def make_roots(work: Path) -> tuple[Path, Path]:
    small, big = work / "src-small", work / "src-big"
    rng = random.Random(7)
    small.mkdir()
    for i in range(10):
        (small / f"f{i}").write_bytes(rng.randbytes(MIB))
    big.mkdir()
    for i in range(10):
        with open(big / f"g{i}", "wb") as f:
            f.write(rng.randbytes(MIB))
            f.truncate(GIB)
    return small, big


def changes(size: int) -> list[tuple[int, bytes]]:
    """1 % of ``size`` as N_CHANGES random runs, one at a random offset in each Nth."""
    rng = random.Random(CHANGE_SEED)
    run = size // 100 // N_CHANGES
    slot = size // N_CHANGES
    return [(i * slot + rng.randrange(slot - run + 1), rng.randbytes(run))
            for i in range(N_CHANGES)]


def apply_changes(path: Path, todo: list[tuple[int, bytes]]) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    try:
        for off, data in todo:
            if os.pwrite(fd, data, off) != len(data):
                raise Failed(f"{path}: short write at {off}")
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def small_files(tree: Path) -> tuple[list[Path], int]:
    rel, total = [], 0
    for p in gentree.walk_files(tree):
        size = p.stat().st_size
        if size < SMALL_FILE:
            rel.append(p.relative_to(tree))
            total += size
    return rel, total


# --------------------------------------------------------------------------------------------
# Reading


def py_read(path: Path) -> tuple[int, float]:
    """Read ``path`` with 1 MiB ``readinto`` calls: (bytes, seconds)."""
    buf = bytearray(MIB)
    view = memoryview(buf)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(view):
            n += k
    return n, time.perf_counter() - t0


def dd_read(r: Runner, path: Path, bs: str = "1M", count: int = 0) -> tuple[int, float]:
    cmd = ["dd", f"if={path}", "of=/dev/null", f"bs={bs}", *([f"count={count}"] if count else [])]
    secs, _, err, _ = r.run(cmd, tag="dd")
    n = int(err.strip().splitlines()[-1].split()[0])  # "N bytes (...) copied, ..."
    return n, secs


def tar_read(r: Runner, path: Path, opts: str = "") -> tuple[int, float]:
    """Cold ``tar -cf - -C DIR . | cat > /dev/null``: (archive bytes, seconds)."""
    drop_caches()
    secs, _, err, _ = r.run(["bash", "-o", "pipefail", "-c",
                             f'tar --totals {opts} -cf - -C "$1" . | cat > /dev/null', "tar",
                             os.fspath(path)], tag="tar", timeout=3600)
    n = 0
    for line in err.splitlines():
        if line.startswith("Total bytes written:"):
            n = int(line.split(":")[1].split()[0])
    return n, secs


def read_files(base: Path, rel: list[Path], cold: bool = True) -> tuple[int, float]:
    """Cold read of every file in ``rel`` under ``base``: (bytes, seconds)."""
    if cold:
        drop_caches()
    n = 0
    t0 = time.perf_counter()
    for p in rel:
        with open(base / p, "rb", buffering=0) as f:
            while chunk := f.read(SMALL_FILE):
                n += len(chunk)
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.reps = args.reps or (3 if args.quick else 7)
        self.tree_gib = 1 / 16 if args.quick else 1.0
        self.data_size = 64 * MIB if args.quick else GIB
        self.work = Path(tempfile.mkdtemp(prefix="grid-bench-spawn-", dir=args.dir))
        self.r = Runner(self.work / "logs")
        self.g = GridNode(self.work, args.grid, self.r)
        self.peers: list[ib.Tool] = []
        self.unavailable: dict[str, str] = {}
        self.peer_mounts: list[PeerMount] = []
        self.res: dict[str, Any] = {"errors": {}}

    # -- bookkeeping ---------------------------------------------------------------------

    def step(self, key: str, fn: Callable[[], None]) -> None:
        """Run one section; a failure is recorded and the run goes on."""
        t0 = time.perf_counter()
        self.res.setdefault("loadavg_at_start", {})[key] = [round(x, 2) for x in os.getloadavg()]
        try:
            fn()
        except (Failed, ib.StepFailed, OSError, ValueError, KeyError) as e:
            msg = f"{type(e).__name__}: {e}"
            self.res["errors"][key] = msg
            print(f"  {key}: FAILED: {msg}\n    daemon log: {self.g.log_tail()}", flush=True)
            with contextlib.suppress(Failed, OSError):
                self.tidy()
                if self.g.daemon is None:
                    self.g.start()
        print(f"  ({key}: {time.perf_counter() - t0:.1f} s)", flush=True)

    def tidy(self) -> None:
        for m in self.peer_mounts:
            m.close()
        self.peer_mounts.clear()
        for mnt in list(self.g.mounts):
            self.g.drop(Path(mnt))

    @contextlib.contextmanager
    def peer_mount(self, tool: ib.Tool, repo: Path, src: Path,
                   archive: str = "") -> Iterator[PeerMount]:
        self.g.n_dirs += 1
        m = PeerMount(tool, repo, src, self.work / "mnt" / f"{tool.name}{self.g.n_dirs}",
                      self.r, archive)
        self.peer_mounts.append(m)
        try:
            yield m
        finally:
            m.close()
            self.peer_mounts.remove(m)

    def cleanup(self) -> None:
        print("cleaning up", flush=True)
        with contextlib.suppress(Exception):
            self.tidy()
        for m in self.peer_mounts:
            with contextlib.suppress(Exception):
                m.close()
        for mnt in list(self.g.mounts):
            lazy_unmount(mnt)
        self.g.mounts.clear()
        with contextlib.suppress(Exception):
            self.g.stop()
        for mnt in mounted_under(self.work):
            lazy_unmount(mnt)
        if self.args.keep:
            print(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        w = self.work
        t0 = time.perf_counter()
        print(f"bench/spawn: work directory {w}", flush=True)
        self.small_src, self.big_src = make_roots(w)
        self.tree = w / "tree"
        info = gentree.make_big(self.tree, self.tree_gib, 1)
        self.tree_info = info
        self.data_dir = w / "data"
        make_data_file(self.data_dir / "one-file", self.data_size)
        self.small_rel, self.small_bytes = small_files(self.tree)
        os.sync()
        print(f"  generated in {time.perf_counter() - t0:.1f} s: tree {info.files} files, "
              f"{info.logical_bytes:,} bytes ({len(self.small_rel)} under 64 KiB); data file "
              f"{self.data_size:,} bytes", flush=True)
        self.g.init()
        imp = {}
        for src, name in ((self.small_src, "small"), (self.big_src, "big"),
                          (self.tree, "tree"), (self.data_dir, "data")):
            imp[name] = round(self.g.import_tree(src, name), 2)
        print(f"  grid import (seconds): {imp}", flush=True)
        self.res["grid_import_seconds"] = imp
        if not self.args.skip_peers:
            for tool in (ib.Restic(w), ib.Borg(w)):
                why = peer_unavailable(tool)
                if why:
                    self.unavailable[tool.name] = why
                    print(f"  {tool.name}: not measured: {why}", flush=True)
                    continue
                try:
                    secs = []
                    for what, src in (("tree", self.tree), ("data", self.data_dir)):
                        repo = w / f"{tool.name}-{what}"
                        tool.init(repo).check()
                        m, _ = tool.backup(repo, src, what)
                        secs.append(round(m.seconds, 2))
                    self.peers.append(tool)
                    print(f"  {tool.name} backup of tree, data (seconds): {secs}", flush=True)
                except ib.StepFailed as e:
                    self.unavailable[tool.name] = f"backup failed: {e}"
                    print(f"  {tool.name}: not measured: {e}", flush=True)
        if not drop_caches():
            print("  WARNING: cannot drop the page cache (not root?): 'cold' figures are "
                  "NOT cold", flush=True)
        self.g.start()

    # -- 1. spawn + first ls -------------------------------------------------------------

    def ls(self, d: Path) -> float:
        secs, out, _, _ = self.r.run(["ls", "-l", os.fspath(d)], tag="ls")
        if "total" not in out:
            raise Failed(f"ls -l {d}: unexpected output {out[:200]!r}")
        return secs

    def spawn_once(self, name: str, how: str) -> dict[str, float]:
        g = self.g
        d = g.newdir()
        f: dict[str, float] = {}
        if how == "a":
            f["spawn_mount"], _ = g.spawn(name, d)
        elif how == "b":
            f["spawn"], sid = g.spawn(name)
            f["mount"] = g.mount(sid, d)
        else:
            f["rpc"], sid = g.spawn_rpc(name)
            f["mount"] = g.mount(sid, d)
        f["ls"] = self.ls(d)
        g.drop(d)
        return f

    def bench_spawn(self) -> None:
        r, g = self.r, self.g
        py = os.path.join(os.path.dirname(self.args.grid), "python")
        start: dict[str, list[float]] = {"python -c pass": [], "grid --version": [],
                                         "python -m spawn.fuse_main --help": []}
        for _ in range(self.reps):
            start["python -c pass"].append(r.run([py, "-c", "pass"])[0])
            start["grid --version"].append(r.run([self.args.grid, "--version"])[0])
            start["python -m spawn.fuse_main --help"].append(
                r.run([py, "-m", "spawn.fuse_main", "--help"], g.env)[0])
        self.res["startup_ms"] = {k: round(median(v) * 1e3, 1) for k, v in start.items()}
        samples: dict[str, dict[str, list[float]]] = {"small": {}, "big": {}}
        for _ in range(self.reps):
            for how in "abc":
                for name in ("small", "big"):
                    for k, v in self.spawn_once(name, how).items():
                        samples[name].setdefault(f"{how}_{k}", []).append(v)
        out: dict[str, Any] = {}
        for name, s in samples.items():
            for (how, k1, k2) in (("a", "spawn_mount", "ls"), ("b", "spawn", "mount"),
                                  ("c", "rpc", "ls")):
                s[f"{how}_{k1}+{k2}"] = [x + y for x, y in zip(s[f"{how}_{k1}"], s[f"{how}_{k2}"],
                                                               strict=True)]
            s["b_total"] = [x + y + z for x, y, z in zip(s["b_spawn"], s["b_mount"], s["b_ls"],
                                                         strict=True)]
            out[name] = {k: round(median(v) * 1e3, 2) for k, v in s.items()}
            out[name]["samples_ms"] = {k: [round(x * 1e3, 1) for x in v] for k, v in s.items()}
        # Cold: a fresh daemon and an empty page cache before one spawn of each root.
        for name in ("small", "big"):
            g.restart_cold()
            f = self.spawn_once(name, "a")
            out[name]["cold_spawn_mount"] = round(f["spawn_mount"] * 1e3, 2)
            out[name]["cold_ls"] = round(f["ls"] * 1e3, 2)
        self.res["spawn_ms"] = out

    # -- 2. sequential read of the 1 GiB file --------------------------------------------

    def bench_read(self) -> None:
        g, size = self.g, self.data_size
        out: dict[str, float] = {}

        def rate(n: int, secs: float) -> float:
            if n != size:
                raise Failed(f"read {n:,} bytes, expected {size:,}")
            return round(n / secs / 1e6, 1)

        for method, fn in (("py", py_read), ("dd", lambda p: dd_read(self.r, p))):
            g.restart_cold()
            d = g.newdir()
            g.spawn("data", d)
            f = d / "one-file"
            drop_caches()
            out[f"grid_cold_{method}"] = rate(*fn(f))
            out[f"grid_warm_{method}"] = rate(*fn(f))
            if method == "dd":  # tar's record size: one read(2) per 10 KiB, page cache warm
                n, secs = dd_read(self.r, f, "10k", SMALL_READS)
                out["grid_warm_dd10k"] = round(n / secs / 1e6, 1)
            g.drop(d)
        src = self.data_dir / "one-file"
        for method, fn in (("py", py_read), ("dd", lambda p: dd_read(self.r, p))):
            drop_caches()
            out[f"disk_cold_{method}"] = rate(*fn(src))
            out[f"disk_warm_{method}"] = rate(*fn(src))
        n, secs = dd_read(self.r, src, "10k", SMALL_READS)
        out["disk_warm_dd10k"] = round(n / secs / 1e6, 1)
        self.res["read_mb_s"] = out

    # -- 3 and 4. tar of the tree, small files ---------------------------------------------

    def through_each(self, key: str, fn: Callable[[Path], tuple[int, float]],
                     extra: dict[str, Callable[[Path], tuple[int, float]]] | None = None,
                     extra_fresh: bool = False) -> None:
        """``fn`` on the tree through each tool's fresh mount, and on local disk; each of
        ``extra`` (label: function) through grid too, in the same mount just after, or with
        ``extra_fresh`` in a fresh daemon and spawn each."""
        out: dict[str, Any] = {}
        g = self.g
        runs: list[tuple[str, Callable[[Path], tuple[int, float]]]] = [("grid", fn)]
        runs += list((extra or {}).items())
        while runs:
            g.restart_cold()
            d = g.newdir()
            g.spawn("tree", d)
            try:
                while runs:
                    label, f = runs.pop(0)
                    out[label] = f(d)
                    if extra_fresh:
                        break
            finally:
                g.drop(d)
        for tool in self.peers:
            try:
                with self.peer_mount(tool, self.work / f"{tool.name}-tree", self.tree,
                                     "tree") as m:
                    out[tool.name] = fn(m.path)
            except (Failed, OSError) as e:
                out[tool.name] = f"error: {e}"
                print(f"  {key} {tool.name}: FAILED: {e}", flush=True)
        out["local disk"] = fn(self.tree)
        self.res[key] = {k: (v if isinstance(v, str) else {"bytes": v[0],
                                                            "seconds": round(v[1], 3)})
                         for k, v in out.items()}

    def bench_tar(self) -> None:
        self.through_each("tar", lambda d: tar_read(self.r, d),
                          {"grid, tar -b 2048 (1 MiB records)":
                           lambda d: tar_read(self.r, d, "-b 2048")}, extra_fresh=True)
        for tool, v in self.res["tar"].items():
            if isinstance(v, dict):
                v["mb_s"] = round(self.tree_info.logical_bytes / v["seconds"] / 1e6, 1)
                if v["bytes"] < self.tree_info.logical_bytes:  # tar's archive holds every byte
                    self.res["errors"][f"tar {tool}"] = (
                        f"archive of {v['bytes']:,} bytes, less than the tree's "
                        f"{self.tree_info.logical_bytes:,}")

    def bench_small(self) -> None:
        self.through_each("small_files", lambda d: read_files(d, self.small_rel),
                          {"grid, warm (same mount again)":
                           lambda d: read_files(d, self.small_rel, cold=False)})
        for v in self.res["small_files"].values():
            if isinstance(v, dict):
                if v["bytes"] != self.small_bytes:
                    raise Failed(f"small files: read {v['bytes']:,} bytes, expected "
                                 f"{self.small_bytes:,}")
                v["files"] = len(self.small_rel)
                v["files_s"] = round(len(self.small_rel) / v["seconds"], 1)
                v["mb_s"] = round(v["bytes"] / v["seconds"] / 1e6, 2)

    # -- 5. save after a 1 % change ------------------------------------------------------

    def bench_save(self) -> None:
        g = self.g
        todo = changes(self.data_size)
        changed = sum(len(b) for _, b in todo)
        out: dict[str, Any] = {"bytes_changed": changed, "writes": len(todo),
                               "write_bytes": len(todo[0][1])}
        d = g.newdir()
        _, sid = g.spawn("data", d)
        out["grid_write_fsync_s"] = round(apply_changes(d / "one-file", todo), 3)
        before = g.stat()
        os.sync()
        secs, text = g.grid("save", sid, "--json", tag="grid-save", timeout=3600)
        after = g.stat()
        saved = json.loads(text)
        out["grid"] = {"seconds": round(secs, 3), "daemon_seconds": round(saved["seconds"], 3),
                       "new_blocks": after["blocks"] - before["blocks"],
                       "bytes_added": after["stored_bytes"] - before["stored_bytes"]}
        # The spawn saw the change: compare its file with the changed source after the peers.
        g.drop(d)
        apply_changes(self.data_dir / "one-file", todo)
        for tool in self.peers:
            repo = self.work / f"{tool.name}-data"
            store0 = ib.dir_bytes(repo)[0]
            os.sync()
            try:
                m, rep = tool.backup(repo, self.data_dir, "data-changed")
            except ib.StepFailed as e:
                out[tool.name] = f"error: {e}"
                continue
            own = ib.own_added(tool.name, rep, None)
            out[tool.name] = {"seconds": round(m.seconds, 3), "own_added": own,
                              "repo_growth": ib.dir_bytes(repo)[0] - store0}
        # Check: a spawn of the saved root reads back as the changed source.
        d = g.newdir()
        g.spawn("data", d)
        ok = filecmp_fast(d / "one-file", self.data_dir / "one-file")
        g.drop(d)
        out["saved_root_matches_source"] = ok
        if not ok:
            raise Failed("the saved root's file differs from the changed source")
        self.res["save"] = out

    # -- all -------------------------------------------------------------------------------

    def run(self) -> None:
        t0 = time.perf_counter()
        self.setup()
        print("1. spawn + first ls", flush=True)
        self.step("spawn", self.bench_spawn)
        print("2. sequential read", flush=True)
        self.step("read", self.bench_read)
        print("3. tar of the tree, cold", flush=True)
        self.step("tar", self.bench_tar)
        print("4. small files, cold", flush=True)
        self.step("small_files", self.bench_small)
        print("5. save after a 1 % change", flush=True)
        self.step("save", self.bench_save)
        self.res["daemon_peak_rss_kib"] = self.g.rss_peak_kib()
        self.res["daemon_starts"] = self.g.starts
        self.res["total_seconds"] = round(time.perf_counter() - t0, 1)


def filecmp_fast(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


# --------------------------------------------------------------------------------------------
# Output


def _ms(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}"
    return "-"


def print_table(doc: dict[str, Any]) -> None:
    res = doc["results"]
    p = print
    p()
    p(f"bench/spawn  {doc['date']}  {doc['machine']}")
    p(f"command: {doc['command']}")
    p(f"tree: {doc['tree']['files']} files, {doc['tree']['logical_bytes']:,} bytes "
      f"({doc['tree']['small_files']} files < 64 KiB, {doc['tree']['small_bytes']:,} bytes); "
      f"data file {doc['data_bytes']:,} bytes; page cache "
      f"{'dropped for cold figures' if doc['cold_ok'] else 'NOT dropped (not root?)'}")
    p("MB = 10^6 B; ms and s are wall time of the whole command, as a user sees it")
    errs = res.get("errors", {})
    for k, v in errs.items():
        p(f"  ERROR in {k}: {v}")

    s = res.get("spawn_ms")
    if s:
        st = res["startup_ms"]
        p(f"\n1. spawn + first ls (median of {doc['reps']}; daemon and page cache warm), ms")
        rows = [
            ("grid spawn -q --mount DIR", "a_spawn_mount"),
            ("  + ls -l DIR (first)", "a_ls"),
            ("  = spawn --mount + first ls", "a_spawn_mount+ls"),
            ("grid spawn -q", "b_spawn"),
            ("grid mount ID DIR", "b_mount"),
            ("ls -l DIR (first)", "b_ls"),
            ("  = spawn; mount; ls", "b_total"),
            ("spawn request alone (in-process client)", "c_rpc"),
            ("  + ls -l DIR (first), mount not counted", "c_rpc+ls"),
            ("cold: spawn --mount (fresh daemon, 1 run)", "cold_spawn_mount"),
            ("cold: + ls -l DIR (first)", "cold_ls"),
        ]
        w = max(len(a) for a, _ in rows)
        p(f"  {'':<{w}}  {'10 MiB':>8}  {'10 GiB':>8}  {'10G/10M':>7}")
        for label, k in rows:
            a, b = s["small"].get(k), s["big"].get(k)
            p(f"  {label:<{w}}  {_ms(a):>8}  {_ms(b):>8}  {_ratio(b, a):>7}")
        p("  start-up alone: " + ", ".join(f"{k} {v:.1f}" for k, v in st.items()))

    rd = res.get("read_mb_s")
    if rd:
        p(f"\n2. sequential read of a {doc['data_bytes'] / GIB:g} GiB file (half random, half "
          "zeros), MB/s")
        p(f"  {'':<40}  {'cold':>7}  {'warm':>7}")
        for label, src in (("grid mount", "grid"), ("local disk (the source)", "disk")):
            for method, mlabel in (("py", "1 MiB readinto"), ("dd", "dd bs=1M")):
                p(f"  {f'{label}, {mlabel}':<40}  {rd[f'{src}_cold_{method}']:>7.0f}  "
                  f"{rd[f'{src}_warm_{method}']:>7.0f}")
            label10 = f"{label}, dd bs=10k count={SMALL_READS}"
            p(f"  {label10:<40}  {'':>7}  {rd.get(f'{src}_warm_dd10k', 0):>7.0f}")

    def peer_rows(key: str, title: str, head: list[str], cells: Callable[[dict], list[str]]):
        t = res.get(key)
        if not t:
            return
        p(f"\n{title}")
        body = []
        extras = [k for k in t if k.startswith("grid,")]
        for tool in ("grid", *extras, "restic", "borg", "local disk"):
            v = t.get(tool)
            if v is None:
                why = doc["peers_unavailable"].get(tool, "skipped (--skip-peers)")
                if tool != "local disk":
                    body.append([tool, f"not measured: {why}"])
                continue
            body.append([tool, v] if isinstance(v, str) else [tool, *cells(v)])
        widths = [max(len(h), *(len(b[i]) for b in body if len(b) == len(head)))
                  for i, h in enumerate(head)]
        p("  " + "  ".join(h.rjust(wd) if i else h.ljust(wd)
                           for i, (h, wd) in enumerate(zip(head, widths, strict=True))))
        for b in body:
            if len(b) != len(head):
                p(f"  {b[0]:<{widths[0]}}  {b[1]}")
            else:
                p("  " + "  ".join(c.rjust(wd) if i else c.ljust(wd)
                                   for i, (c, wd) in enumerate(zip(b, widths, strict=True))))

    g_tar = res.get("tar", {}).get("grid")
    peer_rows("tar", "3. tar -cf - -C DIR . | cat > /dev/null of the whole tree, cold",
              ["through", "seconds", "MB/s", "grid/this"],
              lambda v: [f"{v['seconds']:.2f}", f"{v['mb_s']:.0f}",
                         _ratio(g_tar["mb_s"], v["mb_s"]) if isinstance(g_tar, dict) else "-"])
    g_sm = res.get("small_files", {}).get("grid")
    peer_rows("small_files", "4. cold read of every file < 64 KiB in the tree",
              ["through", "files", "seconds", "files/s", "MB/s", "grid/this"],
              lambda v: [str(v["files"]), f"{v['seconds']:.2f}", f"{v['files_s']:.0f}",
                         f"{v['mb_s']:.1f}",
                         _ratio(g_sm["files_s"], v["files_s"]) if isinstance(g_sm, dict)
                         else "-"])
    sv = res.get("save")
    if sv:
        p(f"\n5. save after changing 1 % of a {doc['data_bytes'] / GIB:g} GiB file "
          f"({sv['writes']} writes of {sv['write_bytes']:,} B = {sv['bytes_changed']:,} B)")
        p(f"  writes + fsync through the grid mount: {sv['grid_write_fsync_s']:.2f} s")
        gs = sv["grid"]
        p(f"  {'tool':<7}  {'seconds':>7}  {'grid/this':>9}  {'bytes added':>13}  "
          f"{'added/changed':>13}  note")
        p(f"  {'grid':<7}  {gs['seconds']:>7.2f}  {'':>9}  {gs['bytes_added']:>13,}  "
          f"{gs['bytes_added'] / sv['bytes_changed']:>13.2f}  grid save (daemon: "
          f"{gs['daemon_seconds']:.2f} s); {gs['new_blocks']} new blocks")
        for tool in ("restic", "borg"):
            v = sv.get(tool)
            if v is None:
                why = doc["peers_unavailable"].get(tool, "skipped (--skip-peers)")
                p(f"  {tool:<7}  not measured: {why}")
            elif isinstance(v, str):
                p(f"  {tool:<7}  {v}")
            else:
                own = v["own_added"] if v["own_added"] is not None else 0
                p(f"  {tool:<7}  {v['seconds']:>7.2f}  {_ratio(gs['seconds'], v['seconds']):>9}"
                  f"  {own:>13,}  {own / sv['bytes_changed']:>13.2f}  "
                  f"{'restic backup' if tool == 'restic' else 'borg create'}, its own count; "
                  f"repository grew {v['repo_growth']:,} B")
    tg = doc.get("targets")
    if tg:
        p("\ntargets (DESIGN.md):")
        for t in tg:
            verdict = "-" if t["met"] is None else "met" if t["met"] else "MISSED"
            p(f"  {t['target']:<62} {t['measured']:<36} {verdict}")
    load = res.get("loadavg_at_start", {})
    if load:
        p("load average (1 min) at the start of each part: "
          + ", ".join(f"{k} {v[0]:.1f}" for k, v in load.items()))
    p(f"\ndaemon peak RSS {(res.get('daemon_peak_rss_kib') or 0) / 1024:.0f} MiB; "
      f"daemon started {res.get('daemon_starts')} times; total {res.get('total_seconds')} s")


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """DESIGN.md's performance targets against this run's figures (those it has)."""
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        out.append({"target": target, "measured": measured, "met": met})

    s = res.get("spawn_ms")
    if s:
        sm, bg = s["small"], s["big"]
        for k, what in (("c_rpc+ls", "spawn request + first ls"),
                        ("a_spawn_mount+ls", "grid spawn --mount + first ls")):
            worst = max(sm[k], bg[k])
            add(f"{what} < 100 ms", f"{sm[k]:.0f} / {bg[k]:.0f} ms (10 MiB / 10 GiB)",
                worst < 100)
            add(f"{what}: 10 GiB root <= 2 x 10 MiB root", f"{bg[k] / sm[k]:.2f} x",
                bg[k] <= 2 * sm[k])
        for name, d in (("10 MiB", sm), ("10 GiB", bg)):
            extra = d["b_spawn"] - d["c_rpc"]
            add(f"grid spawn adds only start-up < 150 ms ({name})",
                f"{extra:.0f} ms (grid spawn -q - request)", extra < 150)
    tar = res.get("tar", {})
    if isinstance(tar.get("grid"), dict) and isinstance(tar.get("restic"), dict):
        v = tar["grid"]["mb_s"] / tar["restic"]["mb_s"]
        add("cold read of the tree (tar) >= 2 x restic mount",
            f"{v:.2f} x ({tar['grid']['mb_s']:.0f} vs {tar['restic']['mb_s']:.0f} MB/s)", v >= 2)
    rd = res.get("read_mb_s")
    if rd:
        for m, label in (("py", "1 MiB reads"), ("dd", "dd bs=1M")):
            v = rd[f"grid_warm_{m}"]
            add(f"warm sequential read >= 1 GB/s ({label})", f"{v:.0f} MB/s", v >= 1000)
    sf = res.get("small_files", {})
    if isinstance(sf.get("grid"), dict) and isinstance(sf.get("borg"), dict):
        v = sf["grid"]["files_s"] / sf["borg"]["files_s"]
        add("small files cold >= 3 x borg (files < 64 KiB here)",
            f"{v:.2f} x ({sf['grid']['files_s']:.0f} vs {sf['borg']['files_s']:.0f} files/s)",
            v >= 3)
    sv = res.get("save", {})
    if isinstance(sv.get("grid"), dict) and isinstance(sv.get("restic"), dict):
        v = sv["grid"]["seconds"] / sv["restic"]["seconds"]
        add("save after 1 % change <= 1/3 of restic backup time",
            f"{v:.2f} x ({sv['grid']['seconds']:.2f} vs {sv['restic']['seconds']:.2f} s)",
            v <= 1 / 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/var/tmp", help="where the work directory goes")
    ap.add_argument("--quick", action="store_true",
                    help="64 MiB tree and data file, 3 repetitions: a smoke run")
    ap.add_argument("--skip-peers", action="store_true", help="grid only (no restic, borg)")
    ap.add_argument("--reps", type=int, default=0, help="spawn repetitions (default 7; 3 quick)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=str(HERE / "out" / "spawn.json"))
    ap.add_argument("--grid", default=str(HERE.parent / ".venv" / "bin" / "grid"),
                    help="the grid command (default: the project's venv)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/spawn: not root: cold figures will not be cold, mounts may fail",
              file=sys.stderr)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT: even if inherited
        signal.signal(sig, on_signal)                            # as ignored (a & job)
    b = Bench(args)
    try:
        b.run()
    finally:
        b.cleanup()
    info = b.tree_info
    doc = {
        "benchmark": "bench/spawn",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/spawn.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPUs, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB, "
                   f"{platform.platform()}",
        "versions": {"grid": ib.quick([args.grid, "--version"]).stdout.strip(),
                     "restic": ib.quick(["restic", "version"]).stdout.strip()
                     if shutil.which("restic") else None,
                     "borg": ib.quick(["borg", "--version"]).stdout.strip()
                     if shutil.which("borg") else None},
        "reps": b.reps,
        "quick": args.quick,
        "cold_ok": _COLD["ok"] is True,
        "tree": {"files": info.files, "logical_bytes": info.logical_bytes,
                 "small_files": len(b.small_rel), "small_bytes": b.small_bytes},
        "data_bytes": b.data_size,
        "peers_unavailable": b.unavailable,
        "results": b.res,
        "targets": targets(b.res),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
