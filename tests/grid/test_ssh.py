"""The daemon's SSH service with real OpenSSH clients (`sftp -b`, `ssh`) and real users: key
authentication against ndb, SFTP over the user's spawns, grid commands over ssh, and the
refusals invariant 9 asks for (wrong key, another user's key, a password, another user's
spawn, paths and symlinks leading out, commands outside the allowed set)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from grid.daemon.sftp import split
from grid.daemon.sshd import parse_listen
from tests.grid.gridnode import Node, User, free_port, make_user, new_node

if os.geteuid() != 0:
    pytest.skip("runs as root (real users, setpriv)", allow_module_level=True)
if shutil.which("ssh") is None or shutil.which("sftp") is None:
    pytest.skip("needs OpenSSH's ssh and sftp (Debian openssh-client)", allow_module_level=True)



class Env:
    def __init__(self, node: Node, alice: User, bob: User, port: int, sid: str) -> None:
        self.node = node
        self.alice = alice
        self.bob = bob
        self.port = port
        self.sid = sid
        self.keys = node.base / "keys"
        self.known_hosts = self.keys / "known_hosts"

    def key(self, who: str) -> Path:
        return self.keys / who

    def opts(self, key: str) -> list[str]:
        """Client options that read no configuration of the machine's and pin the node's host
        key (made by grid init) in a known_hosts of our own."""
        return ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"IdentityFile={self.key(key)}", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=20"]

    def ssh(self, user: str, command: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", *self.opts(key or user.removeprefix("gridtest-")), "-p", str(self.port),
                               f"{user}@127.0.0.1", command],
                              capture_output=True, text=True, timeout=60)

    def sftp(self, user: str, batch: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        """``sftp -b -``: stops at the first failing command (exit 1) unless it starts with -."""
        return subprocess.run(["sftp", *self.opts(key or user.removeprefix("gridtest-")), "-P", str(self.port), "-b", "-",
                               f"{user}@127.0.0.1"], input=batch, capture_output=True,
                              text=True, timeout=60)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    alice, bob = make_user("gridtest-alice"), make_user("gridtest-bob")
    n = new_node()
    try:
        n.init()
        files = {"hello": "hi\n", "docs/a.txt": b"a" * 100_000, "rootfile": "root's\n"}
        # alice's tree; "rootfile" stays root's
        n.import_shared(n.write_tree(files, owner=alice, roots=("rootfile",)), "proj")
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        for who in ("alice", "bob", "stranger"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f",
                            str(keys / who)], check=True, capture_output=True)
        n.grid("user", "add", alice.name, "--uid", str(alice.uid), "--ssh-key",
               str(keys / "alice.pub"))
        n.grid("user", "add", bob.name, "--uid", str(bob.uid), "--ssh-key", str(keys / "bob.pub"))
        # a grid user with a listed key but no uid on this node: no spawns, no login
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "carol")],
                       check=True, capture_output=True)
        n.grid("user", "add", "gridtest-carol", "--ssh-key", str(keys / "carol.pub"))
        port = free_port()
        hostkey = (n.home / "certs" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(hostkey)}\n")
        n.start("--ssh", f"127.0.0.1:{port}")
        sid = n.grid("spawn", "-q", "proj", user=alice).stdout.strip()
        yield Env(n, alice, bob, port, sid)
        log = n.log.read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        n.close()


def test_split_confines_paths() -> None:
    assert split(b"/1/a/../b") == [b"1", b"b"]
    assert split(b"//1//./a/") == [b"1", b"a"]
    assert split(b"../../etc/passwd") == [b"etc", b"passwd"]
    assert split(b"/1/../../..") == []
    assert split(b"") == split(b".") == split(b"/") == []


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:2222") == ("127.0.0.1", 2222)
    assert parse_listen("[::1]:22") == ("::1", 22)
    assert parse_listen(":22") == ("0.0.0.0", 22)
    for bad in ("2222", "host:", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# -- the host key and authentication -----------------------------------------------------------


def test_host_key_made_at_init(env: Env) -> None:
    key = env.node.home / "certs" / "ssh_host_ed25519_key"
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    env.node.grid("init")  # idempotent: a pinned host key is never replaced
    assert key.read_bytes() == before


def test_listed_key_logs_in(env: Env) -> None:
    p = env.ssh(env.alice.name, "grid spawns", key="alice")
    assert p.returncode == 0, p.stderr
    assert env.sid in p.stdout.split()


def test_wrong_key_refused(env: Env) -> None:
    p = env.ssh(env.alice.name, "grid spawns", key="stranger")
    assert p.returncode == 255 and "Permission denied" in p.stderr


def test_other_users_key_refused(env: Env) -> None:
    p = env.ssh(env.alice.name, "grid spawns", key="bob")
    assert p.returncode == 255 and "Permission denied" in p.stderr


def test_unknown_user_and_user_without_uid_refused(env: Env) -> None:
    p = env.ssh("nosuchuser", "grid spawns", key="alice")
    assert p.returncode == 255 and "Permission denied" in p.stderr
    p = env.ssh("gridtest-carol", "grid spawns", key="carol")
    assert p.returncode == 255 and "Permission denied" in p.stderr


def test_user_key_add_and_rm(env: Env) -> None:
    """`grid user key add|rm` changes which keys log in, at the next login."""
    b = env.bob.name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(env.key("bob2"))],
                   check=True, capture_output=True)
    assert env.ssh(b, "grid spawns", key="bob2").returncode == 255
    env.node.grid("user", "key", "add", b, str(env.key("bob2.pub")))
    env.node.grid("user", "key", "add", b, str(env.key("bob2.pub")))  # again: no duplicate
    users = json.loads(env.node.grid("user", "list", "--json").stdout)
    (rec,) = [u for u in users if u["user"] == b]
    assert len(rec["sshkeys"]) == 2 and rec["uid"] == env.bob.uid
    assert env.ssh(b, "grid spawns", key="bob2").returncode == 0
    assert env.ssh(b, "grid spawns", key="bob").returncode == 0
    env.node.grid("user", "key", "rm", b, str(env.key("bob2.pub")))
    assert env.ssh(b, "grid spawns", key="bob2").returncode == 255
    assert env.ssh(b, "grid spawns", key="bob").returncode == 0
    p = env.node.grid("user", "key", "rm", b, str(env.key("bob2.pub")), check=False)
    assert p.returncode != 0 and "not" in p.stderr
    p = env.node.grid("user", "key", "add", "nobody-here", str(env.key("bob2.pub")), check=False)
    assert p.returncode != 0 and "nobody-here" in p.stderr


def test_password_refused(env: Env) -> None:
    """The server offers public keys only: a password (or keyboard-interactive) attempt is
    refused before any password is even looked at."""
    p = subprocess.run(["ssh", *env.opts("alice"), "-o", "PreferredAuthentications=password",
                        "-p", str(env.port), f"{env.alice.name}@127.0.0.1", "grid spawns"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 255 and "Permission denied (publickey)" in p.stderr

    async def attempt() -> None:
        async with asyncssh.connect("127.0.0.1", env.port, username=env.alice.name,
                                    password="secret", client_keys=None, known_hosts=None,
                                    agent_path=None, config=None):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(attempt())


# -- commands ----------------------------------------------------------------------------------


def test_spawn_save_kill_over_ssh(env: Env) -> None:
    a = env.alice.name
    p = env.ssh(a, "grid spawn proj")
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    assert sid.isdigit()
    listed = env.node.grid("spawns", "--json", user=env.alice).stdout
    assert f'"{sid}"' in listed  # made as alice: hers over the control socket too
    p = env.ssh(a, f"grid save {sid} proj-ssh")
    assert p.returncode == 0, p.stderr
    score = p.stdout.split()[0]
    assert score.startswith("blake3:")
    names = env.ssh(a, "grid names")
    assert names.returncode == 0 and "proj-ssh" in names.stdout and score in names.stdout
    hist = env.ssh(a, "grid history proj-ssh")
    assert hist.returncode == 0 and score in hist.stdout and a in hist.stdout
    assert env.ssh(a, f"grid kill {sid}").returncode == 0
    assert sid not in env.ssh(a, "grid spawns").stdout.split()


def test_commands_outside_the_set_refused(env: Env) -> None:
    for cmd in ("id", "sh -c id", "grid serve", "grid stop", "grid import /etc x",
                "grid user add eve --uid 0", "/bin/sh", "grid; id"):
        p = env.ssh(env.alice.name, cmd)
        assert p.returncode == 2, (cmd, p.stdout, p.stderr)
        assert "is not allowed here" in p.stderr, (cmd, p.stderr)
    p = env.ssh(env.alice.name, "grid spawn")  # an allowed verb, wrong arguments
    assert p.returncode == 2 and "usage: grid spawn NAME" in p.stderr
    p = env.ssh(env.alice.name, "grid spawn no-such-name")  # a refusal, said clearly
    assert p.returncode == 1 and "no-such-name" in p.stderr, p.stderr
    p = env.ssh(env.alice.name, "spawns")  # the leading "grid" may be left out
    assert p.returncode == 0 and env.sid in p.stdout.split()
    p = env.ssh(env.alice.name, "grid spawns --bogus")
    assert p.returncode == 2 and "usage: grid spawns" in p.stderr


def test_json_output(env: Env) -> None:
    a = env.alice.name
    rows = json.loads(env.ssh(a, "grid spawns --json").stdout)
    (row,) = [r for r in rows if r["id"] == env.sid]
    assert row["owner"] == a and row["uid"] == env.alice.uid and row["name"] == "proj"
    names = json.loads(env.ssh(a, "grid names --json").stdout)
    assert any(r["name"] == "proj" and r["score"].startswith("blake3:") for r in names)
    sid = env.ssh(a, "grid spawn -q proj").stdout.strip()
    assert sid.isdigit()
    d = json.loads(env.ssh(a, f"grid kill --json {sid}").stdout)
    assert d == {"id": sid}


def test_no_shell_no_pty(env: Env) -> None:
    base = ["ssh", *env.opts("alice"), "-p", str(env.port), f"{env.alice.name}@127.0.0.1"]
    p = subprocess.run([*base[:1], "-tt", *base[1:]], input="id\nexit\n",
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 255 and "PTY allocation request failed" in p.stderr
    assert "uid=" not in p.stdout
    p = subprocess.run([*base[:1], "-T", *base[1:]], input="id\nexit\n",
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "uid=" not in p.stdout
    assert "no shell here" in p.stderr and "grid spawn NAME" in p.stderr


def test_other_users_spawn_refused_by_commands(env: Env) -> None:
    b = env.bob.name
    for cmd in (f"grid save {env.sid}", f"grid kill {env.sid}"):
        p = env.ssh(b, cmd)
        assert p.returncode == 1 and env.sid in p.stderr, (cmd, p.stderr)
    assert env.sid not in env.ssh(b, "grid spawns").stdout.split()
    assert env.ssh(env.alice.name, "grid spawns").stdout.split().count(env.sid) == 1


# -- SFTP --------------------------------------------------------------------------------------


def test_sftp_namespace_and_file_ops(env: Env) -> None:
    s = env.sid
    out = env.node.base / "got"
    up = env.node.base / "up.bin"
    up.write_bytes(os.urandom(300_000))
    batch = f"""\
ls -1 /
ls -1 /{s}
get /{s}/hello {out}
mkdir /{s}/newdir
put {up} /{s}/newdir/up.bin
rename /{s}/newdir/up.bin /{s}/newdir/moved.bin
symlink moved.bin /{s}/newdir/ln
chmod 600 /{s}/newdir/moved.bin
ls -l /{s}/newdir
df /{s}
rm /{s}/docs/a.txt
rmdir /{s}/docs
"""
    p = env.sftp(env.alice.name, batch)
    assert p.returncode == 0, p.stdout + p.stderr
    top = p.stdout.split("sftp> ls -1 /\n")[1].split("sftp>")[0].split()
    assert top == [f"/{s}"]
    assert out.read_text() == "hi\n"
    assert "-rw-------" in p.stdout and "lrwxrwxrwx" in p.stdout
    # the same engine the FUSE mounts use: the changes are in the spawn, made as alice
    ls = env.sftp(env.alice.name, f"ls -ln /{s}/newdir\nget /{s}/newdir/ln {out}\n")
    assert ls.returncode == 0, ls.stderr
    assert out.read_bytes() == up.read_bytes()
    row = next(r for r in ls.stdout.splitlines() if r.endswith("moved.bin")).split()
    assert row[2] == str(env.alice.uid) and row[3] == str(env.alice.gid)
    assert "docs" not in env.sftp(env.alice.name, f"ls -1 /{s}\n").stdout.split()


def test_sftp_other_user_sees_nothing_of_alice(env: Env) -> None:
    p = env.sftp(env.bob.name, "ls -1 /\n")
    assert p.returncode == 0 and env.sid not in p.stdout.split()[2:]
    for cmd in (f"ls /{env.sid}", f"get /{env.sid}/hello /dev/null", f"mkdir /{env.sid}/x",
                f"rm /{env.sid}/hello", f"ls /../{env.sid}/", f"cd /{env.sid}"):
        p = env.sftp(env.bob.name, cmd + "\n")
        assert p.returncode == 1, (cmd, p.stdout)
        assert "No such file" in p.stderr or "not found" in p.stderr, (cmd, p.stderr)


def test_sftp_paths_stay_inside(env: Env) -> None:
    s = env.sid
    a = env.alice.name
    secret = env.node.base / "secret"
    secret.write_text("node's own file\n")
    got = env.node.base / "got2"
    # dot-dot, doubled slashes and absolute paths are names in the user's namespace
    p = env.sftp(a, f"get /{s}/../../../..{secret} {got}\n")
    assert p.returncode == 1 and not got.exists()
    p = env.sftp(a, f"get //{s}//./hello {got}\n")
    assert p.returncode == 0 and got.read_text() == "hi\n"
    got.unlink()
    p = env.sftp(a, f"get /{s}/../{s}/../../{s}/hello {got}\n")
    assert p.returncode == 0 and got.read_text() == "hi\n"
    got.unlink()
    # symlinks pointing out are followed inside the spawn, as in a chroot
    p = env.sftp(a, f"symlink {secret} /{s}/abs\nsymlink ../../../../etc /{s}/out\n"
                    f"symlink ../../../.. /{s}/up\n"
                    f"symlink /hello /{s}/rooted\n")
    assert p.returncode == 0, p.stderr
    for path in (f"/{s}/abs", f"/{s}/out/passwd", f"/{s}/up/etc/passwd"):
        p = env.sftp(a, f"get {path} {got}\n")
        assert p.returncode == 1 and not got.exists(), path
    p = env.sftp(a, f"get /{s}/rooted {got}\n")  # "/hello" is the spawn's own /hello
    assert p.returncode == 0 and got.read_text() == "hi\n"
    got.unlink()
    p = env.sftp(a, f"ls /{s}/up/\n")  # the spawn's root, not the node's /
    assert p.returncode == 0 and "hello" in p.stdout and "passwd" not in p.stdout
    # the top directory and the spawn roots are not the client's to change
    for cmd in ("mkdir /new", f"rmdir /{s}", f"rename /{s} /x", "put /etc/hostname /x"):
        p = env.sftp(a, cmd + "\n")
        assert p.returncode == 1, cmd
    assert secret.read_text() == "node's own file\n"


def test_sftp_permissions_as_the_kernel_would(env: Env) -> None:
    """A root-owned 0644 file in alice's spawn: she may read it, not write, chmod or chown
    it (what default_permissions refuses her on a FUSE mount)."""
    s = env.sid
    a = env.alice.name
    got = env.node.base / "got3"
    p = env.sftp(a, f"get /{s}/rootfile {got}\n")
    assert p.returncode == 0 and got.read_text() == "root's\n"
    for cmd in (f"put /etc/hostname /{s}/rootfile", f"chmod 4755 /{s}/rootfile",
                f"chown {env.alice.uid} /{s}/rootfile", f"chown 0 /{s}/hello"):
        p = env.sftp(a, cmd + "\n")
        assert p.returncode == 1, (cmd, p.stdout)
    p = env.sftp(a, f"ls -ln /{s}/rootfile\n")
    assert "-rw-r--r--" in p.stdout and " 0 " in p.stdout
    got.unlink()
    env.sftp(a, f"get /{s}/rootfile {got}\n")
    assert got.read_text() == "root's\n"


def test_spawn_killed_under_an_open_sftp_file(env: Env) -> None:
    """Killing a spawn while an SFTP client has a file of it open: the client gets errors,
    the session and the daemon carry on."""
    a = env.alice.name
    sid = env.ssh(a, "grid spawn proj").stdout.strip()

    async def run() -> tuple[bytes, str, list[str]]:
        async with (asyncssh.connect("127.0.0.1", env.port, username=a,
                                     client_keys=[str(env.key("alice"))], known_hosts=None,
                                     agent_path=None, config=None) as conn,
                    conn.start_sftp_client() as sftp):
            f = await sftp.open(f"/{sid}/hello", "rb")
            first = await f.read(3, 0)
            killed = await conn.run(f"grid kill {sid}")
            assert killed.exit_status == 0, killed.stderr
            with pytest.raises(asyncssh.SFTPError):
                await f.read(3, 0)
            with pytest.raises(asyncssh.SFTPError):
                await sftp.listdir(f"/{sid}")
            await f.close()
            return first, str(killed.stdout), await sftp.listdir("/")

    first, out, top = asyncio.run(run())
    assert first == b"hi\n" and sid in out
    assert sid not in top and env.sid in top
    assert env.ssh(a, "grid spawns").returncode == 0


def test_bad_listen_address_is_a_clear_error() -> None:
    n = new_node()
    try:
        n.init()
        p = n.grid("serve", "--ssh", "nope", check=False, timeout=60)
        assert p.returncode != 0 and "expected HOST:PORT" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            p = n.grid("serve", "--ssh", f"127.0.0.1:{port}", check=False, timeout=60)
        assert p.returncode != 0 and "in use" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        n.start()  # the home is fine afterwards
    finally:
        n.close()
