"""A real node for tests: a grid home anyone may traverse, its daemon (`grid serve`) as a
process of its own, real Linux users, and the `grid` command run as any of them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def skip_without_mounts() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3", allow_module_level=True)
    if os.geteuid() != 0:
        pytest.skip("runs as root (real users, setpriv)", allow_module_level=True)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def prefix(self) -> tuple[str, ...]:
        """Run a command as this user, with its own HOME."""
        return ("setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "env", f"HOME={self.home}", f"USER={self.name}")

    def run(self, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(), *cmd], capture_output=True, text=True,
                              timeout=timeout, check=check)


def make_user(name: str) -> User:
    """A real Linux user (made once, kept for the run: userdel while its processes run fails)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True,
                       capture_output=True)
        pw = pwd.getpwnam(name)
    return User(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def grid_mounts(under: Path) -> list[Path]:
    """grid's FUSE mounts below *under*, deepest first."""
    out = []
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            dev, mnt = line.split()[:2]
            path = Path(os.fsdecode(mnt.replace(b"\\040", b" ")))
            if dev == b"grid" and (path == under or under in path.parents):
                out.append(path)
    return sorted(out, key=lambda p: len(p.parts), reverse=True)


class Node:
    """A grid home in a fresh directory under /tmp (mode 0711 down to the socket, so other
    users can reach the daemon but read nothing), and its daemon."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "home"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "daemon.log"

    def env(self) -> dict[str, str]:
        return dict(os.environ, GRID_HOME=str(self.home), PYTHONPATH=str(ROOT), GRID_AUTOSTART="0")

    def grid(self, *args: str, user: User | None = None, check: bool = True,
             input: str | None = None, timeout: float = 120,
             autostart: bool = False) -> subprocess.CompletedProcess[str]:
        prefix = user.prefix() if user else ()
        env = self.env()
        if autostart:
            env["GRID_AUTOSTART"] = "1"
        p = subprocess.run([*prefix, sys.executable, "-m", "grid.cli.main", *args], input=input,
                           capture_output=True, text=True, env=env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"grid {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p

    def write_tree(self, files: dict[str, str | bytes], *, owner: User | None = None,
                   roots: tuple[str, ...] = ()) -> Path:
        """Files (relative path -> content, mode 0644, directories made) under base/src, every
        entry given to *owner* if one is named except the paths in *roots* (left root's)."""
        src = self.base / "src"
        for rel, data in files.items():
            f = src / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                f.write_text(data)
            else:
                f.write_bytes(data)
            os.chmod(f, 0o644)
        if owner is not None:
            for p in [src, *src.rglob("*")]:
                if str(p.relative_to(src)) not in roots:
                    os.lchown(p, owner.uid, owner.gid)
        return src

    def import_shared(self, src: Path, name: str) -> None:
        """Import *src* as *name*, readable by every user (a new name is private to its
        owner: docs/ndb.md), so other users may spawn it."""
        self.grid("import", str(src), name)
        self.grid("name", "chmod", "0644", name)

    def init(self) -> None:
        self.grid("init")
        os.chmod(self.home, 0o711)

    def start(self, *options: str) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "grid.cli.main", "serve", *options], env=self.env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        sock = self.home / "run" / "grid.sock"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"grid serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if sock.exists() and self._ping():
                return
            time.sleep(0.05)
        raise AssertionError("grid serve did not come up")

    def _ping(self) -> bool:
        from grid.daemon.client import DaemonClient

        try:
            with DaemonClient(self.home / "run" / "grid.sock", timeout=5) as c:
                c.call("ping")
            return True
        except OSError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def unmount_all(self, under: Path | None = None) -> None:
        for m in grid_mounts(under or self.base):
            subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True, check=False)

    def close(self) -> None:
        self.unmount_all()
        self.stop()
        pidfile = self.home / "run" / "grid.pid"  # one a command started by itself
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        # mount processes exit once their mount is gone
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.base)


def tree_digest(d: Path) -> str:
    """One hash of a tree's paths and file contents, to compare exports."""
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        h.update(str(p.relative_to(d)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def new_node() -> Node:
    base = Path(tempfile.mkdtemp(prefix="grid-node-", dir="/tmp"))
    os.chmod(base, 0o711)
    return Node(base)


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on (for a listener option)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond, timeout: float = 15.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())
