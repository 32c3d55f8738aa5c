"""Real FUSE mounts of a spawn for tests: import a tree, run ``python -m spawn.fuse_main``.

The exporter runs in its own process, as the daemon would, so a test can kill it, and so a
hung request can never hang the test process's own event loop.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from spawn.importer import Importer
from store.local import LocalStore
from store.score import format_score

ROOT = Path(__file__).resolve().parents[2]


def skip_without_fuse() -> None:
    """Skip the calling test module unless real mounts can be made here: /dev/fuse, the
    fusermount3 helper, and root (allow_other, setpriv and drop_caches need it)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse", allow_module_level=True)
    if os.geteuid() != 0:
        pytest.skip("FUSE mount tests run as root (allow_other, setpriv)", allow_module_level=True)


def import_tree(src: Path, store_dir: Path) -> str:
    """Import *src* into a new LocalStore at *store_dir*; the root score, printed."""
    LocalStore.create(store_dir, exist_ok=True)
    store = LocalStore.open(store_dir)
    try:
        root = Importer(store).run(src)
        store.sync()
    finally:
        store.close()
    return format_score(root)


def mounted_on(path: Path) -> bool:
    target = os.fsencode(os.path.abspath(path))
    with open("/proc/self/mounts", "rb") as f:
        return any(line.split()[1] == target for line in f)


@dataclass
class Mount:
    """One exporter process serving one spawn at ``path``."""

    path: Path
    store: Path
    overlay: Path
    base: str | None
    owner: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, timeout: float = 20.0) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "spawn.fuse_main", str(self.store), str(self.overlay),
               str(self.path), "--owner", str(self.owner)]
        if self.base:
            cmd += ["--base", self.base]
        self.log = self.overlay.with_name(self.overlay.name + ".log")
        err = open(self.log, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err)
        err.close()
        sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            if sel.select(deadline - time.monotonic()):
                chunk = os.read(self.proc.stdout.fileno(), 64)
                if not chunk:
                    break
                line += chunk
        sel.close()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"fuse_main did not get ready: {line!r}\n{self.stderr()}")
        return self

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0, *, remove: bool = False) -> int | None:
        """Stop the exporter; whatever happens, leave nothing mounted (and with *remove*, no
        mountpoint either). Its exit status."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if mounted_on(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        if remove:
            with contextlib.suppress(OSError):
                self.path.rmdir()
        return rc


def mountpoint() -> Path:
    """A new empty directory that every user can reach (pytest's own temporary directories
    are root's, mode 0700): a refusal seen by another user must come from the mount."""
    p = Path(tempfile.mkdtemp(prefix="grid-fuse-"))
    p.chmod(0o755)
    return p


def start_mount(tmp: Path, src: Path, *, owner: int = 0, name: str = "m") -> Mount:
    """Import *src* into a store under *tmp*, spawn it, and mount it (see ``mountpoint``)."""
    store = tmp / f"{name}-store"
    base = import_tree(src, store)
    return Mount(mountpoint(), store, tmp / f"{name}-overlay", base, owner).start()
