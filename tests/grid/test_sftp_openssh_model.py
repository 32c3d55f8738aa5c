"""The sshfs model test (tests/grid/test_ssh_sshfs_model.py: random `os` calls on an sshfs
mount of a spawn and on a plain directory, the same outcomes and the same tree) with OpenSSH's
sshd in front and grid.sftp_bridge behind it (docs/ssh.md, "OpenSSH in front"), instead of
the daemon's asyncssh listener."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.grid.gridnode import new_node, skip_without_mounts
from tests.grid.test_sftp_openssh import openssh
from tests.grid.test_ssh_sshfs_model import SETTINGS, run_model
from tests.spawn.test_fuse_model import COPIES, World, make_template

skip_without_mounts()
def test_sshfs_vs_disk(world: World) -> None:
    """A shorter run than test_ssh_sshfs_model's: only the SSH transport differs, and the
    SFTP server behind it is the one that test drives for 600 steps."""
    run_model(world, SETTINGS.__class__(SETTINGS, max_examples=8), min_steps=120)


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
        n.start()
        sid = n.grid("spawn", "-q", "model").stdout.strip()
        mnt.mkdir()
        # root, as the plain directory is driven: permission checks pass on both sides
        with openssh(n, keys, {"root": "k"}) as port:
            opts = ",".join([
                f"IdentityFile={keys / 'k'}", "IdentitiesOnly=yes", "BatchMode=yes",
                f"UserKnownHostsFile={keys / 'known_hosts'}", "StrictHostKeyChecking=yes",
                "dir_cache=no", "entry_timeout=0", "attr_timeout=0", "negative_timeout=0",
            ])
            subprocess.run(["sshfs", "-F", "/dev/null", "-p", str(port), f"root@127.0.0.1:/{sid}",
                            str(mnt), "-o", opts], check=True, capture_output=True, text=True,
                           timeout=60)
            try:
                model = n.base / "model"
                model.mkdir()
                yield World(mnt, model, template)
            finally:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True,
                               check=False)
    finally:
        n.close()
    assert "Traceback" not in (n.log.read_text() if n.log.exists() else "")
