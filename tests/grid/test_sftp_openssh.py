"""grid's SFTP server behind OpenSSH's sshd (docs/ssh.md, "OpenSSH in front"): a real sshd
(``sshd -D -f`` with a config and host key of its own, on a spare port; the system's sshd is
not touched) runs ``python -m grid.sftp_bridge HOME/run/sftp.sock`` as its sftp subsystem,
as the user it authenticated, and the daemon serves the session as that uid.

The SFTP tests of the daemon's own SSH listener (tests/grid/test_ssh.py: namespace, file
operations, another user's spawn, path and symlink confinement, permissions) and of sshfs
beside a FUSE mount (tests/grid/test_ssh_sshfs.py) run here unchanged through OpenSSH's
transport: the same rules must hold, since the same server applies them. Then what is new:
the bridge and the socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.grid.gridnode import ROOT, Node, free_port, make_user, new_node, skip_without_mounts

skip_without_mounts()
SSHD = "/usr/sbin/sshd"
if not os.path.exists(SSHD) or shutil.which("sftp") is None or shutil.which("sshfs") is None:
    pytest.skip("needs OpenSSH's sshd, sftp and sshfs (Debian openssh-server, sshfs)",
                allow_module_level=True)

# the same tests, through OpenSSH: collected here, with this module's fixtures, in their
# modules' order (test_daemon_stops... and the ssh-command tests are the listener's own)
from tests.grid import test_ssh as _ssh  # noqa: E402
from tests.grid import test_ssh_sshfs as _sshfs  # noqa: E402
from tests.grid.test_ssh import Env  # noqa: E402
from tests.grid.test_ssh_sshfs import Mounts, sshfs_mount  # noqa: E402

test_sftp_namespace_and_file_ops = _ssh.test_sftp_namespace_and_file_ops
test_sftp_other_user_sees_nothing_of_alice = _ssh.test_sftp_other_user_sees_nothing_of_alice
test_sftp_paths_stay_inside = _ssh.test_sftp_paths_stay_inside
test_sftp_permissions_as_the_kernel_would = _ssh.test_sftp_permissions_as_the_kernel_would
test_sshfs_sees_the_spawn = _sshfs.test_sshfs_sees_the_spawn
test_changes_seen_both_ways_at_once = _sshfs.test_changes_seen_both_ways_at_once
test_permissions_as_over_fuse = _sshfs.test_permissions_as_over_fuse
test_statvfs_and_fsync = _sshfs.test_statvfs_and_fsync
test_save_after_sshfs_changes = _sshfs.test_save_after_sshfs_changes


@contextlib.contextmanager
def openssh(node: Node, keys: Path, users: dict[str, str]) -> Iterator[int]:
    """sshd on a spare port with grid's bridge as its sftp subsystem; *users* maps a login to
    the key (in *keys*) it may use (root by key only, if listed). Pins the host key in
    keys/known_hosts. Yields the port."""
    auth = node.base / "authorized"  # sshd reads these as the user: not under keys/ (0700)
    auth.mkdir(mode=0o755, exist_ok=True)
    for login, key in users.items():
        (auth / login).write_text((keys / f"{key}.pub").read_text())
        os.chmod(auth / login, 0o644)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "sshd_host")],
                   check=True, capture_output=True)
    port = free_port()
    hostkey = (keys / "sshd_host.pub").read_text().split()[:2]
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(hostkey)}\n")
    cfg = node.base / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'sshd_host'}\n"
        f"PidFile {node.base / 'sshd.pid'}\nAuthorizedKeysFile {auth}/%u\n"
        "StrictModes no\nPasswordAuthentication no\n"
        f"PermitRootLogin {'prohibit-password' if 'root' in users else 'no'}\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM yes\n"  # the test users' passwords are locked ("!"): without PAM sshd refuses them
        f"SetEnv PYTHONPATH={ROOT}\n"
        f"Subsystem sftp {sys.executable} -m grid.sftp_bridge {node.home / 'run' / 'sftp.sock'}\n")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = node.base / "sshd.log"
    with open(log, "wb") as f:
        p = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL, stderr=f)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port
    finally:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """test_ssh.py's node (alice's tree, a root-owned file, bob), served through sshd."""
    alice, bob = make_user("gridtest-alice"), make_user("gridtest-bob")
    n = new_node()
    try:
        n.init()
        files = {"hello": "hi\n", "docs/a.txt": b"a" * 100_000, "rootfile": "root's\n"}
        n.import_shared(n.write_tree(files, owner=alice, roots=("rootfile",)), "proj")
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        for who in ("alice", "bob"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f",
                            str(keys / who)], check=True, capture_output=True)
        for u in (alice, bob):  # grid users without keys: sshd holds those
            n.grid("user", "add", u.name, "--uid", str(u.uid))
        n.start()  # no --ssh: OpenSSH is the only SSH server here
        sid = n.grid("spawn", "-q", "proj", user=alice).stdout.strip()
        with openssh(n, keys, {alice.name: "alice", bob.name: "bob"}) as port:
            yield Env(n, alice, bob, port, sid)
        log = n.log.read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        n.close()


@pytest.fixture(scope="module")
def mounts() -> Iterator[Mounts]:
    """test_ssh_sshfs.py's node: alice's sshfs mount (through sshd) beside root's FUSE mount."""
    alice = make_user("gridtest-alice")
    n = new_node()
    sshfs_dir, fuse_dir = n.base / "sshfs", n.base / "fuse"
    try:
        n.init()
        files = {"hello": "hi\n", "docs/big": os.urandom(1 << 20), "docs/rootfile": "root's\n"}
        n.import_shared(n.write_tree(files, owner=alice, roots=("docs/rootfile",)), "proj")
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "alice")],
                       check=True, capture_output=True)
        n.grid("user", "add", alice.name, "--uid", str(alice.uid))  # no key: sshd has it
        n.start()
        sid = n.grid("spawn", "-q", "proj", user=alice).stdout.strip()
        fuse_dir.mkdir()
        sshfs_dir.mkdir()
        n.grid("mount", sid, str(fuse_dir))
        with openssh(n, keys, {alice.name: "alice"}) as port:
            sshfs_mount(n, alice, port, sid, sshfs_dir)
            try:
                yield Mounts(n, alice, sid, sshfs_dir, fuse_dir)
            finally:
                subprocess.run(["fusermount3", "-u", "-z", str(sshfs_dir)], capture_output=True,
                               check=False)
    finally:
        n.close()


# -- the bridge and the socket -------------------------------------------------------------------


def bridge(sock: Path, *, user_prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([*user_prefix, sys.executable, "-m", "grid.sftp_bridge", str(sock)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)


def sftp_init() -> bytes:
    """SSH_FXP_INIT, version 3."""
    body = bytes([1]) + (3).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + body


def test_bridge_hands_the_session_to_the_daemon_as_its_uid(env: Env) -> None:
    """The bridge run directly (as sshd would, as bob): the daemon answers SFTP's INIT on
    the bridge's stdout, logs the session for bob's uid, and the bridge exits 0 once its
    stdin ends."""
    p = bridge(env.node.home / "run" / "sftp.sock", user_prefix=env.bob.prefix())
    out, err = p.communicate(sftp_init(), timeout=30)
    assert p.returncode == 0, err
    assert out[4] == 2 and int.from_bytes(out[5:9], "big") == 3  # SSH_FXP_VERSION 3
    assert f"sftp: session for uid {env.bob.uid}" in env.node.log.read_text()


def test_bridge_without_a_daemon_says_so(tmp_path: Path) -> None:
    p = bridge(tmp_path / "sftp.sock")
    out, err = p.communicate(sftp_init(), timeout=30)
    assert p.returncode == 1 and out == b""
    assert b"cannot reach the grid daemon" in err
    p = subprocess.run([sys.executable, "-m", "grid.sftp_bridge"], capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=30)
    assert p.returncode == 2 and b"usage" in p.stderr


def test_socket_refuses_what_is_not_the_bridge(env: Env) -> None:
    """A client that sends anything but the bridge's hello with two descriptors is dropped;
    the daemon carries on."""
    path = env.node.home / "run" / "sftp.sock"
    for send in (lambda s: s.sendall(sftp_init() + b"x" * 20),  # SFTP without descriptors
                 lambda s: socket.send_fds(s, [b"grid-sftp 1"], [0]),  # one descriptor
                 lambda s: None):  # nothing at all: closed after the hello timeout
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(path))
            send(s)
            try:
                assert s.recv(100) == b""  # closed by the daemon
            except ConnectionResetError:  # closed with our extra bytes unread
                pass
    assert env.node.grid("spawns").returncode == 0
    assert "not a grid SFTP bridge" in env.node.log.read_text()
    p = env.sftp(env.alice.name, f"ls -1 /{env.sid}\n")  # and sessions still work
    assert p.returncode == 0 and "hello" in p.stdout


def test_idle_connections_do_not_hold_up_sessions(env: Env) -> None:
    """Connections that never send the hello wait on the event loop, not in the daemon's
    threads: with 12 of them open, a real session is served at once, and the daemon's
    other work (a FUSE mount's attach) goes on."""
    path = env.node.home / "run" / "sftp.sock"
    idle = []
    try:
        for _ in range(12):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            idle.append(s)
        t0 = time.monotonic()
        p = env.sftp(env.alice.name, f"ls -1 /{env.sid}\n")
        assert p.returncode == 0 and "hello" in p.stdout, p.stderr
        mnt = env.node.base / "idle-mnt"
        mnt.mkdir(exist_ok=True)
        env.node.grid("mount", env.sid, str(mnt))
        try:
            assert (mnt / "hello").read_text() == "hi\n"
        finally:
            env.node.grid("unmount", str(mnt))
        assert time.monotonic() - t0 < 9  # before the idle ones time out (10 s)
    finally:
        for s in idle:
            s.close()


def test_read_ahead_never_returns_overwritten_bytes(env: Env) -> None:
    """A file read in order in 32 KiB requests (as sshfs reads) is fetched from the engine
    512 KiB at a time; a change made by another session between two requests is seen by the
    next one, whether the spawn is still uncommitted then or a checkpoint came between."""
    import asyncio

    import asyncssh

    path = f"/{env.sid}/ra.bin"
    old, new = os.urandom(1 << 20), os.urandom(1 << 20)

    def connect() -> Any:  # asyncssh.connect: awaitable and an async context manager
        return asyncssh.connect("127.0.0.1", env.port, username=env.alice.name,
                                known_hosts=None, client_keys=[str(env.key("alice"))])

    async def run() -> None:
        async with connect() as a, connect() as b, a.start_sftp_client() as sa, \
                b.start_sftp_client() as sb:
            async with sb.open(path, "wb") as f:
                await f.write(old)
            await asyncio.sleep(2.5)  # a checkpoint: reads come from committed state
            async with sa.open(path, "rb") as r:
                assert await r.read(32768, 0) == old[:32768]  # fills the read-ahead
                assert await r.read(32768, 32768) == old[32768:65536]
                async with sb.open(path, "r+b") as w:  # uncommitted change
                    await w.write(new[65536:200000], 65536)
                assert await r.read(32768, 65536) == new[65536:98304]
                await asyncio.sleep(2.5)  # committed again, and read ahead again
                assert await r.read(32768, 98304) == new[98304:131072]
                assert await r.read(32768, 131072) == new[131072:163840]
                async with sb.open(path, "r+b") as w:
                    await w.write(b"z" * 32768, 163840)
                await asyncio.sleep(2.5)  # and a checkpoint before the next read
                assert await r.read(32768, 163840) == b"z" * 32768
                assert await r.read(32768, 196608) == new[196608:200000] + old[200000:229376]

    asyncio.run(run())


# last: it stops the mounts fixture's daemon (sessions end, sshfs unmounts itself)
test_daemon_stops_with_sshfs_mounted = _sshfs.test_daemon_stops_with_sshfs_mounted
