"""sshfs (Debian) mounting a spawn through the daemon's SFTP service, beside a FUSE mount of
the same spawn (`grid mount`): both are clients of the one engine (invariant 8), so what one
changes the other sees at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.grid.gridnode import (
    Node,
    User,
    free_port,
    make_user,
    new_node,
    skip_without_mounts,
    wait_for,
)

skip_without_mounts()
if shutil.which("sshfs") is None or shutil.which("ssh") is None:
    pytest.skip("needs sshfs and ssh (Debian sshfs, openssh-client)", allow_module_level=True)



@dataclass
class Mounts:
    node: Node
    alice: User
    sid: str
    sshfs: Path
    fuse: Path


def sshfs_mount(node: Node, user: User, port: int, sid: str, where: Path) -> None:
    """Mount /SID of *user*'s namespace with no sshfs caching (what another client changes
    must show at once) and the node's host key pinned."""
    keys = node.base / "keys"
    opts = ",".join([
        f"IdentityFile={keys / 'alice'}", "IdentitiesOnly=yes", "BatchMode=yes",
        f"UserKnownHostsFile={keys / 'known_hosts'}", "StrictHostKeyChecking=yes",
        "GlobalKnownHostsFile=/dev/null", "dir_cache=no", "entry_timeout=0", "attr_timeout=0",
        "negative_timeout=0",
    ])
    subprocess.run(["sshfs", "-F", "/dev/null", "-p", str(port),
                    f"{user.name}@127.0.0.1:/{sid}", str(where), "-o", opts],
                   check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def mounts() -> Iterator[Mounts]:
    alice = make_user("gridtest-alice")
    n = new_node()
    sshfs_dir, fuse_dir = n.base / "sshfs", n.base / "fuse"
    try:
        n.init()
        files = {"hello": "hi\n", "docs/big": os.urandom(1 << 20), "docs/rootfile": "root's\n"}
        # alice's tree, so she may write it, but not docs/rootfile
        n.import_shared(n.write_tree(files, owner=alice, roots=("docs/rootfile",)), "proj")
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "alice")],
                       check=True, capture_output=True)
        n.grid("user", "add", alice.name, "--uid", str(alice.uid), "--ssh-key",
               str(keys / "alice.pub"))
        port = free_port()
        hostkey = (n.home / "certs" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(hostkey)}\n")
        n.start("--ssh", f"127.0.0.1:{port}")
        sid = n.grid("spawn", "-q", "proj", user=alice).stdout.strip()
        fuse_dir.mkdir()
        sshfs_dir.mkdir()
        n.grid("mount", sid, str(fuse_dir))  # as root: root may use any spawn
        sshfs_mount(n, alice, port, sid, sshfs_dir)
        yield Mounts(n, alice, sid, sshfs_dir, fuse_dir)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(sshfs_dir)], capture_output=True,
                       check=False)
        n.close()


def test_sshfs_sees_the_spawn(mounts: Mounts) -> None:
    s = mounts.sshfs
    assert sorted(os.listdir(s)) == ["docs", "hello"]
    assert sorted(os.listdir(s / "docs")) == ["big", "rootfile"]
    assert (s / "hello").read_text() == "hi\n"
    assert (s / "docs" / "big").read_bytes() == (mounts.fuse / "docs" / "big").read_bytes()


def test_changes_seen_both_ways_at_once(mounts: Mounts) -> None:
    s, f = mounts.sshfs, mounts.fuse
    (s / "from-sshfs").write_bytes(b"x" * 70_000)
    assert (f / "from-sshfs").read_bytes() == b"x" * 70_000  # no wait: one engine
    st = (f / "from-sshfs").stat()
    assert st.st_uid == mounts.alice.uid and st.st_gid == mounts.alice.gid
    (f / "from-fuse").write_text("made in the FUSE mount\n")
    assert (s / "from-fuse").read_text() == "made in the FUSE mount\n"
    (s / "dir").mkdir()
    os.rename(s / "from-sshfs", s / "dir" / "moved")
    assert not (f / "from-sshfs").exists() and (f / "dir" / "moved").stat().st_size == 70_000
    os.symlink("moved", s / "dir" / "ln")
    assert os.readlink(f / "dir" / "ln") == "moved"
    assert (f / "hello").read_text() == "hi\n"  # now in the FUSE mount's caches
    assert not (f / "dir" / "later").exists()  # and a negative entry
    with open(s / "hello", "r+b") as fh:  # a base file changed in place, through sshfs
        fh.seek(1)
        fh.write(b"o")
    assert (f / "hello").read_text() == "ho\n"
    (s / "dir" / "later").write_text("now\n")
    assert (f / "dir" / "later").read_text() == "now\n"
    os.unlink(s / "dir" / "later")
    os.truncate(f / "hello", 1)
    assert (s / "hello").read_bytes() == b"h"
    os.chmod(s / "hello", 0o600)
    assert (f / "hello").stat().st_mode & 0o777 == 0o600
    os.unlink(f / "dir" / "ln")
    assert not os.path.lexists(s / "dir" / "ln")
    shutil.rmtree(s / "dir")
    assert not (f / "dir").exists()
    assert sorted(os.listdir(s)) == sorted(os.listdir(f))


def test_permissions_as_over_fuse(mounts: Mounts) -> None:
    """A root-owned 0644 file in alice's spawn: readable through her sshfs mount, not
    writable, and its mode not hers to change (the daemon checks, as the kernel would)."""
    p = mounts.sshfs / "docs" / "rootfile"
    assert p.read_text() == "root's\n"
    with pytest.raises(PermissionError):
        p.write_text("mine now")
    with pytest.raises(PermissionError):
        os.chmod(p, 0o4755)
    st = (mounts.fuse / "docs" / "rootfile").stat()
    assert st.st_uid == 0 and st.st_mode & 0o7777 == 0o644
    assert p.read_text() == "root's\n"


def test_statvfs_and_fsync(mounts: Mounts) -> None:
    v = os.statvfs(mounts.sshfs)
    assert v.f_bsize > 0 and v.f_blocks > 0
    fd = os.open(mounts.sshfs / "synced", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"data")
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (mounts.fuse / "synced").read_bytes() == b"data"


def test_save_after_sshfs_changes(mounts: Mounts) -> None:
    (mounts.sshfs / "saved").write_text("kept\n")
    d = mounts.node.grid("save", mounts.sid, "proj-sshfs").stdout.split()[0]
    assert d.startswith("blake3:")
    assert (mounts.fuse / "saved").read_text() == "kept\n"  # the spawn goes on after a save
    assert (mounts.sshfs / "saved").read_text() == "kept\n"


def test_daemon_stops_with_sshfs_mounted(mounts: Mounts) -> None:
    """Last (it stops the daemon): SIGTERM ends the SSH sessions too, promptly and cleanly,
    and sshfs sees its connection end instead of hanging."""
    assert (mounts.sshfs / "hello").exists()
    t0 = time.monotonic()
    mounts.node.stop()
    assert mounts.node.proc is not None and mounts.node.proc.returncode == 0
    assert time.monotonic() - t0 < 20
    log = mounts.node.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    def gone() -> bool:
        """sshfs unmounts itself when its connection ends (or errors, if it cannot)."""
        try:
            return not os.path.ismount(mounts.sshfs)
        except OSError:
            return True

    assert wait_for(gone, timeout=10)
