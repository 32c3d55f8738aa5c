"""bench/work: everyday work inside a copy-on-write tree: plain ext4, kernel overlayfs,
fuse-overlayfs and a grid spawn, in one run, on the same data.

    sudo .venv/bin/python bench/work.py [--dir /var/tmp] [--lower-files 9000] [--quick]
                                        [--only SETUP[,SETUP]] [--timeout 900] [--keep]
                                        [--out bench/out/work.json]

Run as root: the cold row drops the page cache (``sync; echo 3 > /proc/sys/vm/drop_caches``)
and the kernel overlay needs ``mount``. fuse-overlayfs is installed with apt-get when it is
missing; a setup that cannot run gets cells saying why instead of numbers.

Why: a spawn is meant to be worked in like a checkout, not only read. bench/spawn measures
spawning and bulk reads; this measures the things one does in a tree (untar, git, compile,
du, rm), through the product (``grid spawn NAME --mount DIR``: the daemon and its FUSE mount),
beside the copy-on-write trees people already use (kernel overlayfs, fuse-overlayfs) and beside
no copy-on-write at all (a plain copy on the local disk): what the FUSE round trips cost, and
what grid costs on top of another FUSE overlay.

Data, made in a fresh work directory under ``--dir`` (``work-bench-XXXXXXXX``):
  * the lower tree, WORK/lower: real installed software, ``cp -a`` of /usr/lib/python3 (as
    python3/) and of top-level subdirectories of /usr/share in name order (as share/), added
    until the tree holds about ``--lower-files`` files (default 9000: ~200 MB); a directory
    that would overshoot that by more than 10 % is passed over for the next. /usr/lib/python3
    is added whole when it fits, else entry by entry of dist-packages (``--quick``: ~1,500
    files, python3/ only);
  * the tarball, WORK/src.tar: ``tar cf WORK/src.tar -C /usr include`` (the system headers,
    ~8,000 files; ``--quick``: include/linux only).

Setups, in this order, each over the same lower tree:
  1. ext4: a ``cp -a`` of the lower tree in a directory of ``--dir`` (whatever its filesystem
     is: recorded as ``local_fs``);
  2. kernel overlayfs: ``mount -t overlay overlay -o lowerdir=L,upperdir=U,workdir=W M``;
  3. fuse-overlayfs: ``fuse-overlayfs -o lowerdir=L,upperdir=U,workdir=W M``;
  4. grid: ``grid init`` and ``grid import LOWER lower`` in a fresh home (GRID_HOME=WORK/home),
     then ``grid stop`` and ``grid spawn lower --mount M -q``: a fresh daemon, so its block
     cache is cold; at the end ``grid unmount M``, ``grid kill ID --force``, ``grid stop``.

Rows, run in this order on each setup, each one command (``bash -c``, cwd the mount root),
wall time from ``time.perf_counter`` around the subprocess:
  a. ``tar cf - . | wc -c``, cold: page cache dropped just before (and grid's daemon fresh);
  b. ``grep -rl zzzqqq_not_there .``, warm after a (exit status 1, no match, is expected);
  c. ``mkdir work && tar xf WORK/src.tar -C work``: creating many small files;
  d. ``git init -q && git add -A && git commit -qm x`` inside work/: hashing, many writes;
  e. ``python3 -m compileall -q -f python3``: rewrites every .pyc of the lower python3/,
     so they are copied up into the overlay / spawn (/usr/bin/python3, the system's);
  f. ``du -s .`` of the whole mount: stat of every file, lower and changed;
  g. ``rm -rf work``: the untarred tree and its .git.
Then grid / fuse-overlayfs per row: grid's cost over the other FUSE copy-on-write tree.

Rows run with a small fixed environment (PATH=/usr/sbin:/usr/bin:/sbin:/bin, LC_ALL=C,
HOME=WORK/githome so git reads no user configuration). A row taking more than ``--timeout``
seconds (default 900) is killed and says ``timeout``; a row that exits with an unexpected
status says ``failed (see log)``, and the next row runs. Every command's output goes to
WORK/logs/NAME.log (grid's daemon and mount logs too); the logs are kept when the rest of the
work directory is removed (unless ``--keep``: everything is kept). The table is printed at the
end and the figures written as JSON to ``--out``. Everything this script mounted or started is
undone at the end, on error or Ctrl-C too: mounts (lazily if busy), the grid daemon.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRID = ROOT / ".venv" / "bin" / "grid"

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
PY_SRC = Path("/usr/lib/python3")
SHARE_SRC = Path("/usr/share")
TIMEOUT = 900.0
QUICK_FILES = 1500
DEFAULT_FILES = 9000
NAME = "lower"  # the grid name the lower tree is imported as

Cell = float | str  # seconds, or why there is no figure


class Failed(Exception):
    """A command failed; the message says which and why."""


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    cmd: str  # {tar}: the tarball; {python}: the interpreter
    ok: tuple[int, ...] = (0,)
    needs_python: bool = False


ROWS = (
    Row("a", "a. tar cf - . | wc -c (cold)", "set -o pipefail; tar cf - . | wc -c"),
    Row("b", "b. grep -rl (warm, no match)", "grep -rl zzzqqq_not_there .", ok=(0, 1)),
    Row("c", "c. untar the headers into work/", "mkdir work && tar xf {tar} -C work"),
    Row("d", "d. git init, add -A, commit in work/",
        "cd work && git init -q && git add -A && "
        "git -c user.email=b@e -c user.name=b commit -qm x"),
    Row("e", "e. compileall -f python3/", "{python} -m compileall -q -f python3",
        needs_python=True),
    Row("f", "f. du -s .", "du -s ."),
    Row("g", "g. rm -rf work", "rm -rf work"),
)

SETUPS = ("ext4", "overlay", "fuse-overlayfs", "grid")
LABELS = {"ext4": "ext4", "overlay": "kernel overlayfs", "fuse-overlayfs": "fuse-overlayfs",
          "grid": "grid"}
ALIASES = {"kernel": "overlay", "overlayfs": "overlay", "fuse": "fuse-overlayfs",
           "plain": "ext4", "disk": "ext4"}


# --------------------------------------------------------------------------------------------
# Running commands


@dataclass
class Outcome:
    secs: float | None  # None: killed after the timeout
    rc: int | None
    log: Path
    out: Path | None = None  # stdout, when kept apart from the log

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out else ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 3) -> str:
        lines = [ln for ln in self.text().strip().splitlines()[1:] if ln.strip()]
        return " | ".join(lines[-n:]) or "(no output)"


class Runner:
    """Runs commands with output to WORK/logs/NAME.log, timed, killed after a timeout."""

    def __init__(self, logs: Path, timeout: float) -> None:
        self.logs = logs
        self.timeout = timeout
        self.names: dict[str, int] = {}

    def _log(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        n = self.names.get(name, 0)
        self.names[name] = n + 1
        return self.logs / (f"{name}.log" if n == 0 else f"{name}.{n}.log")

    def run(self, name: str, cmd: str | list[str], *, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None,
            capture: bool = False) -> Outcome:
        """Run ``cmd`` (a string: through bash); its wall time, or None after the timeout.
        Output to the log; with ``capture``, stdout to NAME.out instead."""
        log = self._log(name)
        out = log.with_suffix(".out") if capture else None
        shell = isinstance(cmd, str)
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        with open(log, "wb") as f, open(out or os.devnull, "wb") as o:
            f.write(f"$ {shown}    (cwd {cwd or os.getcwd()})\n".encode())
            f.flush()
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, shell=shell, executable="/bin/bash" if shell else None,
                                    cwd=cwd, env=env, stdout=o if out else f,
                                    stderr=f, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                ended = wait_exit(proc, timeout or self.timeout)
                secs = time.perf_counter() - t0
            except BaseException:  # Ctrl-C: take the command down with us
                kill_group(proc)
                raise
            if not ended:
                kill_group(proc)
                f.write(f"\n# killed after {timeout or self.timeout:g} s\n".encode())
                return Outcome(None, None, log, out)
            rc = proc.wait()
        with open(log, "a") as f:
            f.write(f"\n# exit status {rc}, {secs:.3f} s\n")
        return Outcome(secs, rc, log, out)

    def check(self, name: str, cmd: str | list[str], ok: tuple[int, ...] = (0,),
              **kw: Any) -> Outcome:
        """``run``, raising Failed unless the exit status is in ``ok``."""
        o = self.run(name, cmd, **kw)
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        if o.rc is None:
            raise Failed(f"{shown}: no answer after {kw.get('timeout') or self.timeout:.0f} s "
                         f"(killed; log {o.log})")
        if o.rc not in ok:
            raise Failed(f"{shown} exited {o.rc}: {o.tail()} (log {o.log})")
        return o


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``proc`` ended within ``timeout`` seconds (not reaped yet). Not
    ``proc.wait(timeout)``: that polls every 50 ms, and the figures would be multiples of it."""
    fd = os.pidfd_open(proc.pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)


def quick(cmd: list[str], has: str = "") -> str:
    """First line (containing ``has``) of a short command's output, or '' if it cannot run."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and has in ln]
    return lines[0].strip() if lines else ""


# --------------------------------------------------------------------------------------------
# Mounts and processes left behind


def mounts_under(path: Path) -> list[tuple[str, str]]:
    """(mount point, filesystem type) at or below ``path``, deepest first."""
    prefix = os.fspath(path)
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                out.append((mnt, fstype))
    return sorted(out, key=lambda m: len(m[0]), reverse=True)


def is_mounted(path: Path) -> bool:
    """From /proc/self/mounts: a stat of a hung FUSE mount would hang this process too."""
    return any(m == os.fspath(path) for m, _ in mounts_under(path))


def lazy_unmount(mnt: str, fstype: str) -> None:
    cmds = [["fusermount3", "-u", "-z", mnt]] if fstype.startswith("fuse") else []
    for cmd in [*cmds, ["umount", "-l", mnt]]:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            if subprocess.run(cmd, capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL).returncode == 0:
                return


def pids_of(work: Path) -> list[int]:
    """Processes (not this one) with an argument naming a path in the work directory: the
    grid daemon and mount processes, fuse-overlayfs: all started here."""
    mark = os.fspath(work) + "/"
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if any(mark in a + "/" for a in args if a):
                pids.append(int(d.name))
    return pids


def wait_gone(pids: list[int], secs: float) -> list[int]:
    """Those of ``pids`` still running after up to ``secs`` seconds."""
    deadline = time.monotonic() + secs
    while True:
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def kill_pids(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = wait_gone(pids, 5)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class TreeInfo:
    files: int = 0  # everything but directories
    regular: int = 0
    symlinks: int = 0
    dirs: int = 0
    bytes: int = 0  # regular files' sizes

    def add(self, top: Path) -> TreeInfo:
        if top.is_symlink() or not top.is_dir():
            self._entry(top)
            return self
        for d, dirs, files in os.walk(top):
            self.dirs += 1
            for name in files + [x for x in dirs if (Path(d) / x).is_symlink()]:
                self._entry(Path(d) / name)
        return self

    def _entry(self, p: Path) -> None:
        with contextlib.suppress(OSError):
            st = p.lstat()
            self.files += 1
            if p.is_symlink():
                self.symlinks += 1
            elif p.is_file():
                self.regular += 1
                self.bytes += st.st_size


def lower_sources(target: int) -> list[tuple[Path, str]]:
    """(source, destination directory in the lower tree) to copy for about ``target`` files:
    /usr/lib/python3 whole if it fits (else dist-packages entry by entry), then the top-level
    directories of /usr/share by name, until ``target`` is reached. One that would overshoot
    it by more than 10 % is passed over (/usr/share/doc, on a small target) for the next."""
    limit = target * 1.1
    cands: list[tuple[Path, str]] = []
    if PY_SRC.is_dir() and TreeInfo().add(PY_SRC).files <= limit:
        cands.append((PY_SRC, "."))
    elif PY_SRC.is_dir():
        for top in sorted(PY_SRC.iterdir()):
            if top.is_dir() and not top.is_symlink():
                cands += [(s, f"python3/{top.name}") for s in sorted(top.iterdir())]
            else:
                cands.append((top, "python3"))
    if SHARE_SRC.is_dir():
        cands += [(s, "share") for s in sorted(SHARE_SRC.iterdir())
                  if s.is_dir() and not s.is_symlink()]
    out: list[tuple[Path, str]] = []
    n = 0
    for src, dest in cands:
        if n >= target:
            break
        k = TreeInfo().add(src).files
        if out and n + k > limit:
            continue
        out.append((src, dest))
        n += k
    return out


def make_lower(r: Runner, lower: Path, target: int) -> None:
    groups: dict[str, list[str]] = {}
    for src, dest in lower_sources(target):
        groups.setdefault(dest, []).append(os.fspath(src))
    lower.mkdir(parents=True)
    for dest, srcs in groups.items():
        d = lower / dest
        d.mkdir(parents=True, exist_ok=True)
        r.check(f"make-lower-{dest.replace('/', '_').strip('.') or 'root'}",
                ["cp", "-a", *srcs, os.fspath(d)])


# --------------------------------------------------------------------------------------------
# Setups


class Setup:
    """One way of getting a writable tree over the lower one: ``prepare`` returns its root,
    ``teardown`` undoes what ``prepare`` did (safe to call twice, or after a failed prepare)."""

    key = ""

    def __init__(self, work: Path, r: Runner) -> None:
        self.work, self.r = work, r
        self.mnt = work / "mnt" / self.key
        self.prep: dict[str, float] = {}
        self.notes: list[str] = []

    def unavailable(self) -> str | None:
        return None

    def prepare(self) -> Path:
        raise NotImplementedError

    def teardown(self) -> None:
        pass

    def _timed(self, what: str, o: Outcome) -> None:
        if o.secs is not None:
            self.prep[what] = round(o.secs, 4)

    def _ensure_mounted(self) -> None:
        if not is_mounted(self.mnt):
            raise Failed(f"{self.mnt} is not a mount point after mounting")


class Ext4(Setup):
    key = "ext4"

    def prepare(self) -> Path:
        dst = self.work / "ext4"
        self._timed("copy", self.r.check("ext4-copy", ["cp", "-a", os.fspath(self.work / "lower"),
                                                       os.fspath(dst)]))
        return dst


class Overlay(Setup):
    """The kernel's overlayfs; FuseOverlay below differs in the mount and unmount commands."""

    key = "overlay"

    def dirs(self) -> tuple[str, str, str]:
        base = self.work / f"ovl-{self.key}"
        up, wk = base / "upper", base / "work"
        for d in (up, wk, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        return os.fspath(self.work / "lower"), os.fspath(up), os.fspath(wk)

    def mount_cmd(self, opts: str) -> list[str]:
        return ["mount", "-t", "overlay", "overlay", "-o", opts, os.fspath(self.mnt)]

    def unmount_cmds(self) -> list[list[str]]:
        m = os.fspath(self.mnt)
        return [["umount", m], ["umount", "-l", m]]

    def prepare(self) -> Path:
        lo, up, wk = self.dirs()
        opts = f"lowerdir={lo},upperdir={up},workdir={wk}"
        self._timed("mount", self.r.check(f"{self.key}-mount", self.mount_cmd(opts)))
        self._ensure_mounted()
        return self.mnt

    def teardown(self) -> None:
        for cmd in self.unmount_cmds():
            if not is_mounted(self.mnt):
                return
            self.r.run(f"{self.key}-unmount", cmd, timeout=60)


class FuseOverlay(Overlay):
    key = "fuse-overlayfs"

    def unavailable(self) -> str | None:
        if shutil.which("fuse-overlayfs", path=PATH) is None:
            return "fuse-overlayfs not installed (apt-get failed)"
        if not Path("/dev/fuse").exists():
            return "no /dev/fuse"
        return None

    def mount_cmd(self, opts: str) -> list[str]:
        return ["fuse-overlayfs", "-o", opts, os.fspath(self.mnt)]

    def unmount_cmds(self) -> list[list[str]]:
        m = os.fspath(self.mnt)
        return [["fusermount3", "-u", m], ["fusermount3", "-u", "-z", m], ["umount", "-l", m]]


class Grid(Setup):
    key = "grid"

    def __init__(self, work: Path, r: Runner) -> None:
        super().__init__(work, r)
        self.home = work / "home"
        self.sid: str | None = None
        # Mount logs go to $XDG_STATE_HOME/grid/log: into our logs.
        self.env = {**os.environ, "GRID_HOME": os.fspath(self.home),
                    "XDG_STATE_HOME": os.fspath(r.logs / "state")}

    def unavailable(self) -> str | None:
        if not os.access(GRID, os.X_OK):
            return f"no grid command at {GRID}"
        if not Path("/dev/fuse").exists():
            return "no /dev/fuse"
        return None

    def grid(self, name: str, *args: str, ok: tuple[int, ...] = (0,),
             timeout: float | None = None, capture: bool = False) -> Outcome:
        return self.r.check(f"grid-{name}", [os.fspath(GRID), *args], ok=ok, env=self.env,
                            timeout=timeout, capture=capture)

    def prepare(self) -> Path:
        self._timed("init", self.grid("init", "init"))
        # 1: some files were skipped (unreadable); the log says which.
        o = self.grid("import", "import", os.fspath(self.work / "lower"), NAME, ok=(0, 1))
        self._timed("import", o)
        if o.rc == 1:
            self.notes.append(f"grid import skipped some files (exit status 1; log {o.log})")
        self.stop()  # a fresh daemon for the cold row: the next command starts one
        self.mnt.mkdir(parents=True, exist_ok=True)
        o = self.grid("spawn", "spawn", NAME, "--mount", os.fspath(self.mnt), "-q",
                      capture=True)
        self._timed("spawn_mount", o)
        self.sid = (o.stdout().split() or [None])[-1]
        if not self.sid:
            raise Failed(f"grid spawn printed no spawn id (log {o.log})")
        self._ensure_mounted()
        return self.mnt

    def stop(self) -> None:
        """``grid stop``; it fails when no daemon runs, which is fine."""
        self.r.run("grid-stop", [os.fspath(GRID), "stop"], env=self.env, timeout=150)

    def teardown(self) -> None:
        if is_mounted(self.mnt):
            try:
                self.grid("unmount", "unmount", os.fspath(self.mnt), timeout=60)
            except Failed as e:
                print(f"  (grid unmount failed: {e}; detaching lazily)", flush=True)
                lazy_unmount(os.fspath(self.mnt), "fuse")
        if self.sid:
            with contextlib.suppress(Failed):
                self.grid("kill", "kill", self.sid, "--force", timeout=120)
            self.sid = None
        if (self.home / "run").exists():
            self.stop()
        with contextlib.suppress(OSError):
            shutil.copy(self.home / "run" / "daemon.log", self.r.logs / "grid-daemon.log")


def make_setup(key: str, work: Path, r: Runner) -> Setup:
    cls: dict[str, type[Setup]] = {"ext4": Ext4, "overlay": Overlay,
                                   "fuse-overlayfs": FuseOverlay, "grid": Grid}
    return cls[key](work, r)


def ensure_fuse_overlayfs(r: Runner) -> None:
    if shutil.which("fuse-overlayfs", path=PATH):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "fuse-overlayfs"]
    if r.run("apt-get-install", install, env=env).rc != 0:
        r.run("apt-get-update", ["apt-get", "update", "-q"], env=env)
        r.run("apt-get-install", install, env=env)


# --------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path = field(init=False)
    r: Runner = field(init=False)
    setups: list[str] = field(init=False)
    res: dict[str, dict[str, Cell]] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    active: list[Setup] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def __post_init__(self) -> None:
        parent = Path(self.args.dir)
        parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="work-bench-", dir=parent)).resolve()
        # Rows get --timeout; the rest (copies, import, mounts) at least the default.
        self.r = Runner(self.work / "logs", max(TIMEOUT, self.args.timeout))
        self.setups = self.args.only
        self.tar = self.work / "src.tar"
        self.lower = self.work / "lower"
        self.row_env = {"PATH": PATH, "LC_ALL": "C", "LANG": "C",
                        "HOME": os.fspath(self.work / "githome"), "GIT_CONFIG_NOSYSTEM": "1",
                        "TMPDIR": os.fspath(self.work / "tmp")}

    # data

    def make_data(self) -> dict[str, Any]:
        target = self.args.lower_files
        print(f"work directory {self.work}; lower tree (~{target} files) and tarball ...",
              flush=True)
        make_lower(self.r, self.lower, target)
        inc = "include/linux" if self.args.quick else "include"
        self.r.check("make-tarball", ["tar", "cf", os.fspath(self.tar), "-C", "/usr", inc])
        for d in ("githome", "tmp"):
            (self.work / d).mkdir()
        lower, src = TreeInfo().add(self.lower), TreeInfo().add(Path("/usr") / inc)
        return {"lower": {**vars(lower), "python3": (self.lower / "python3").is_dir()},
                "tarball": {"source": f"/usr/{inc}", "files": src.files, "dirs": src.dirs,
                            "source_bytes": src.bytes, "tar_bytes": self.tar.stat().st_size}}

    # rows

    def row(self, s: Setup, root: Path, row: Row) -> Cell:
        # Nothing here touches the mount but the commands, which a timeout ends: a hung FUSE
        # mount would hang this process too (in an uninterruptible wait: Ctrl-C does not help).
        if row.needs_python and not (self.lower / "python3").is_dir():
            return "no python3/"
        if row.key == "a":
            o = self.r.run(f"{s.key}-drop-caches", "sync; echo 3 > /proc/sys/vm/drop_caches",
                           env=self.row_env)
            if o.rc != 0:
                self.notes.append(f"{s.key}: dropping the page cache failed (log {o.log})")
                return "failed (see log)"
        cmd = row.cmd.format(tar=self.tar, python=PYTHON)
        o = self.r.run(f"{s.key}-{row.key}", cmd, cwd=root, env=self.row_env,
                       timeout=self.args.timeout)
        if o.secs is None:
            self.notes.append(f"{s.key} row {row.key}: timeout after {self.args.timeout:g} s "
                              f"(log {o.log})")
            return "timeout"
        if o.rc not in row.ok:
            self.notes.append(f"{s.key} row {row.key}: exit status {o.rc}: {o.tail()} "
                              f"(log {o.log})")
            return "failed (see log)"
        self._record_output(s, row, o)
        return round(o.secs, 4)

    def _record_output(self, s: Setup, row: Row, o: Outcome) -> None:
        """The bytes tar wrote and du's figure: the setups should agree."""
        if row.key not in ("a", "f"):
            return
        for ln in reversed(o.text().splitlines()):
            first = ln.split()[0] if ln.split() else ""
            if first.isdigit():
                self.extra[s.key]["tar_bytes" if row.key == "a" else "du_kib"] = int(first)
                return

    def run_setup(self, key: str) -> None:
        s = make_setup(key, self.work, self.r)
        self.extra[key] = {}
        cells = self.res.setdefault(key, {})
        why = s.unavailable()
        if why:
            self.notes.append(f"{key}: {why}")
            cells.update({row.key: why for row in ROWS})
            return
        print(f"{LABELS[key]} ...", flush=True)
        self.active.append(s)
        try:
            root = s.prepare()
        except Failed as e:
            self.notes.append(f"{key}: setup failed: {e}")
            cells.update({row.key: "setup failed (see log)" for row in ROWS})
            self.finish(s)
            return
        try:
            for row in ROWS:
                cells[row.key] = self.row(s, root, row)
                print(f"  {row.label:<40} {fmt(cells[row.key])}", flush=True)
        finally:
            self.extra[key]["prepare_seconds"] = s.prep
            self.finish(s)

    def finish(self, s: Setup) -> None:
        s.teardown()
        self.notes += [f"{s.key}: {n}" for n in s.notes]
        if s in self.active:
            self.active.remove(s)

    def run(self) -> None:
        if "fuse-overlayfs" in self.setups:
            ensure_fuse_overlayfs(self.r)
        self.data = self.make_data()
        for key in SETUPS:
            if key in self.setups:
                self.run_setup(key)

    # cleanup

    def cleanup(self) -> None:
        """Undo everything, once: setups, stray mounts and processes, the work directory."""
        if self.done:
            return
        self.done = True
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for s in reversed(self.active):
                with contextlib.suppress(Exception):
                    s.teardown()
            for mnt, fstype in mounts_under(self.work):
                print(f"  (still mounted: {mnt}; detaching lazily)", flush=True)
                lazy_unmount(mnt, fstype)
            stray = wait_gone(pids_of(self.work), 20)  # grid stop returns before its exit
            if stray:
                print(f"  (stopping processes left behind: {stray})", flush=True)
                kill_pids(stray)
            self.remove_work()
        finally:
            signal.signal(signal.SIGINT, old)

    def remove_work(self) -> None:
        if self.args.keep:
            print(f"kept {self.work}", flush=True)
            return
        left = mounts_under(self.work)
        if left:
            print(f"NOT removing {self.work}: still mounted: {left}", flush=True)
            return
        for p in self.work.iterdir():
            if p.name != "logs":
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Output


def fmt(v: Cell | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def ratio(a: Cell | None, b: Cell | None) -> float | None:
    if isinstance(a, float) and isinstance(b, float) and b > 0:
        return round(a / b, 3)
    return None


def table_rows(res: dict[str, dict[str, Cell]]) -> list[dict[str, Any]]:
    out = []
    for row in ROWS:
        cells = {k: res.get(k, {}).get(row.key) for k in SETUPS}
        out.append({"key": row.key, "work": row.label, "cmd": row.cmd, "seconds": cells,
                    "grid_over_fuse_overlayfs": ratio(cells["grid"], cells["fuse-overlayfs"])})
    return out


def print_table(doc: dict[str, Any]) -> None:
    p = print
    m, lo, tb = doc["machine"], doc["lower"], doc["tarball"]
    p()
    p(f"bench/work  {doc['date']}  grid {doc['versions']['grid_commit']}  "
      f"kernel {m['kernel']}, {m['nproc']} CPUs, {m['mem_gib']} GiB, {m['local_fs']} under "
      f"{doc['work_dir']}")
    p(f"lower tree: {lo['files']:,} files ({lo['regular']:,} regular), {lo['dirs']:,} dirs, "
      f"{lo['bytes'] / 1e6:.0f} MB; tarball {tb['source']}: {tb['files']:,} files, "
      f"{tb['tar_bytes'] / 1e6:.0f} MB")
    p("seconds, wall time of each command; - = not run")
    p()
    head = ["work", *(LABELS[k] for k in SETUPS), "grid ÷ fuse-overlayfs"]
    p("| " + " | ".join(head) + " |")
    p("|" + "|".join(["---", *["---:"] * (len(head) - 1)]) + "|")
    for row in doc["rows"]:
        q = row["grid_over_fuse_overlayfs"]
        cells = [row["work"].replace("|", "\\|"), *(fmt(row["seconds"][k]) for k in SETUPS),
                 "-" if q is None else f"{q:.2f}"]
        p("| " + " | ".join(cells) + " |")
    extra = doc["setups"]
    sizes = [f"{k}: " + ", ".join([*([f"tar {v['tar_bytes']:,} B"] if "tar_bytes" in v else []),
                                   *([f"du {v['du_kib']:,} KiB"] if "du_kib" in v else [])])
             for k, v in extra.items() if "tar_bytes" in v or "du_kib" in v]
    if sizes:
        p("\nsizes seen: " + "; ".join(sizes))
    for n in doc["notes"]:
        p(f"  note: {n}")


def fs_type(path: Path) -> str:
    best = ("", "?")
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mnt, fstype = line.split()[:3]
            p = os.fspath(path)
            if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
                best = (mnt, fstype)
    return best[1]


def machine(work: Path) -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return {"kernel": platform.release(), "nproc": os.cpu_count(), "mem_gib": round(mem),
            "platform": platform.platform(), "local_fs": fs_type(work)}


def versions() -> dict[str, str]:
    return {"grid_commit": quick(["git", "-C", os.fspath(ROOT), "rev-parse", "--short", "HEAD"]),
            "grid": quick([os.fspath(GRID), "--version"]),
            "fuse-overlayfs": quick(["fuse-overlayfs", "--version"], "fuse-overlayfs"),
            "fusermount3": quick(["fusermount3", "--version"]),
            "git": quick(["git", "--version"]), "tar": quick(["tar", "--version"]),
            "python3": quick([PYTHON, "--version"])}


def document(b: Bench) -> dict[str, Any]:
    return {
        "benchmark": "bench/work",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/work.py", *sys.argv[1:]]),
        "machine": machine(b.work),
        "versions": versions(),
        "quick": b.args.quick,
        "timeout": b.args.timeout,
        "work_dir": os.fspath(b.work),
        "logs": os.fspath(b.r.logs),
        **b.data,
        "setups": b.extra,
        "rows": table_rows(b.res),
        "notes": b.notes,
    }


# --------------------------------------------------------------------------------------------


def parse_only(text: str) -> list[str]:
    keys = []
    for part in filter(None, (x.strip().lower() for x in text.split(","))):
        key = ALIASES.get(part, part)
        if key not in SETUPS:
            raise argparse.ArgumentTypeError(f"unknown setup {part!r} (one of {', '.join(SETUPS)})")
        keys.append(key)
    return keys


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/var/tmp", help="where the work directory goes")
    ap.add_argument("--lower-files", type=int, default=None,
                    help=f"files in the lower tree (default {DEFAULT_FILES}; {QUICK_FILES} quick)")
    ap.add_argument("--quick", action="store_true",
                    help=f"~{QUICK_FILES} files, tarball of /usr/include/linux: a smoke run")
    ap.add_argument("--only", type=parse_only, default=list(SETUPS),
                    help=f"comma-separated subset of {','.join(SETUPS)}")
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per command")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=str(HERE / "out" / "work.json"))
    args = ap.parse_args()
    if args.lower_files is None:
        args.lower_files = QUICK_FILES if args.quick else DEFAULT_FILES
    return args


def interrupts_raise() -> None:
    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT: even if inherited
        signal.signal(sig, on_signal)                            # as ignored (a & job)


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("bench/work must run as root: it drops the page cache, mounts overlayfs and "
              "FUSE file systems.\n  sudo .venv/bin/python bench/work.py ...", file=sys.stderr)
        return 2
    interrupts_raise()
    b = Bench(args)
    atexit.register(b.cleanup)
    try:
        b.run()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    except Failed as e:
        print(f"bench/work: {e}", file=sys.stderr)
        return 1
    finally:
        b.cleanup()
    doc = document(b)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"\nresults: {out}\nlogs: {b.r.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
