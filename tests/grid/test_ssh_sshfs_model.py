"""The model-based file-operation test of the spawn (tests/spawn/test_fuse_model.py) run through
an sshfs mount of a spawn served by the daemon's SFTP service: the same random `os` calls on
the sshfs mount and on a plain directory, the same outcomes and the same visible tree.

SFTP version 3 (what sshfs speaks) cannot carry some of what the FUSE test compares, so this
machine leaves exactly those out: link counts and inode numbers (sshfs makes up its own), and
renameat2's NOREPLACE and EXCHANGE flags (sshfs refuses them itself), and the errno of most
failures (v3 has codes for ENOENT and EACCES; sshfs reports the rest as EPERM)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from tests.grid.gridnode import free_port, new_node, skip_without_mounts
from tests.spawn.test_fuse_model import (
    COPIES,
    DIRS,
    NAMES,
    FuseVsDisk,
    World,
    _outcome,
    make_template,
    renameat2,
)

skip_without_mounts()
if shutil.which("sshfs") is None or shutil.which("ssh") is None:
    pytest.skip("needs sshfs and ssh (Debian sshfs, openssh-client)", allow_module_level=True)

MIN_STEPS = 300



@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    n = new_node()
    mnt = n.base / "sshfs"
    try:
        n.init()
        template = n.base / "template"
        make_template(template)
        base = n.base / "base"
        base.mkdir()
        for i in range(COPIES):
            shutil.copytree(template, base / f"s{i}", symlinks=True)
        n.grid("import", str(base), "model")
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "k")],
                       check=True, capture_output=True)
        # uid 0, as the plain directory is driven: permission checks pass on both sides
        # (grid init recorded root as a user without a key; there is no `grid user key add`)
        n.grid("user", "rm", "root")
        n.grid("user", "add", "gridtest-root", "--uid", "0", "--ssh-key", str(keys / "k.pub"))
        port = free_port()
        hostkey = (n.home / "certs" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(hostkey)}\n")
        n.start("--ssh", f"127.0.0.1:{port}")
        sid = n.grid("spawn", "-q", "model").stdout.strip()
        mnt.mkdir()
        opts = ",".join([
            f"IdentityFile={keys / 'k'}", "IdentitiesOnly=yes", "BatchMode=yes",
            f"UserKnownHostsFile={keys / 'known_hosts'}", "StrictHostKeyChecking=yes",
            "dir_cache=no", "entry_timeout=0", "attr_timeout=0", "negative_timeout=0",
        ])
        subprocess.run(["sshfs", "-F", "/dev/null", "-p", str(port),
                        f"gridtest-root@127.0.0.1:/{sid}", str(mnt), "-o", opts],
                       check=True, capture_output=True, text=True, timeout=60)
        model = n.base / "model"
        model.mkdir()
        yield World(mnt, model, template)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
        n.close()
    assert "Traceback" not in (n.log.read_text() if n.log.exists() else "")


class SshfsVsDisk(FuseVsDisk):
    """FuseVsDisk less what SFTP v3 cannot say (see the module docstring)."""

    links = False  # no link counts or inode numbers over SFTP v3

    def __init__(self) -> None:
        """As FuseVsDisk's, but a fresh copy is made without copytree: copystat on a symlink
        becomes an SFTP setstat, which follows the link (v3 has no lsetstat), and fails while
        its target is not copied yet."""
        RuleBasedStateMachine.__init__(self)
        w = self.w
        i = w.examples
        w.examples += 1
        self.fuse = os.fsencode(w.mnt / f"s{i}")
        self.model = os.fsencode(w.model / f"s{i}")
        if i >= COPIES:
            _copy(w.template, w.mnt / f"s{i}")
        shutil.copytree(w.template, os.fsdecode(self.model), symlinks=True)

    def both(self, fn: Callable[[bytes], Any]) -> tuple[str, Any]:
        """The same value, or an error on both sides: SFTP v3 has status codes for "no such
        file" and "permission denied" only, and sshfs turns every other failure into EPERM."""
        self.w.steps += 1
        a, b = _outcome(lambda: fn(self.fuse)), _outcome(lambda: fn(self.model))
        if a[0] == b[0] == "err" and a[1] == errno.EPERM:
            return b
        assert a == b, (a, b)
        return a

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES)
    def rename(self, d1: bytes, n1: bytes, d2: bytes, n2: bytes) -> None:  # type: ignore[override]
        self.both(lambda top: renameat2(self.path(top, d1, n1), self.path(top, d2, n2), 0))

    @rule(d=DIRS, n=NAMES, data=st.binary(min_size=1, max_size=5000))
    def unlink_while_open(self, d: bytes, n: bytes, data: bytes) -> None:  # type: ignore[override]
        def op(top: bytes) -> bytes:
            fd = os.open(self.path(top, d, n), os.O_RDWR)
            try:
                os.unlink(self.path(top, d, n))
                os.pwrite(fd, data, 10)
                return os.pread(fd, 20_000, 0)
            finally:
                os.close(fd)

        self.both(op)


def _copy(src: Path, dst: Path) -> None:
    dst.mkdir()
    for e in sorted(src.iterdir()):
        if e.is_symlink():
            os.symlink(os.readlink(e), dst / e.name)
        elif e.is_dir():
            _copy(e, dst / e.name)
        else:
            shutil.copyfile(e, dst / e.name)
            os.chmod(dst / e.name, stat.S_IMODE(e.stat().st_mode))


SETTINGS = settings(
    max_examples=20, stateful_step_count=30, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)


def run_model(world: World, cfg: settings = SETTINGS, min_steps: int = MIN_STEPS) -> None:
    """The model run over *world*'s mount (also through other SSH fronts: test_sftp_openssh_model)."""
    class Machine(SshfsVsDisk):
        w = world

    for _ in range(3):  # a run's step count varies: another round if it fell short
        run_state_machine_as_test(Machine, settings=cfg)
        if world.steps >= min_steps:
            break
    print(f"\nsshfs model: {world.steps} steps in {world.examples} examples")
    assert world.steps >= min_steps, f"only {world.steps} steps ran"


def test_sshfs_vs_disk(world: World) -> None:
    run_model(world)
