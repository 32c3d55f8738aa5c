"""diod's own clients (Debian's diodls and diodcat, 9P2000.L) against a spawn: through
`grid tunnel` (plain TCP locally, TLS with the user's certificate to the node) and straight
on the daemon's Unix socket as the spawn's owner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grid.gridnode import Node, User, free_port, make_user, new_node

if os.geteuid() != 0:
    pytest.skip("runs as root (real users, setpriv)", allow_module_level=True)
if shutil.which("diodcat") is None and not os.path.exists("/usr/sbin/diodcat"):
    pytest.skip("needs diod's tools (Debian package diod)", allow_module_level=True)

DIODLS = shutil.which("diodls") or "/usr/sbin/diodls"
DIODCAT = shutil.which("diodcat") or "/usr/sbin/diodcat"


class Env:
    def __init__(self, node: Node, alice: User, sid: str, tunnel: str) -> None:
        self.node, self.alice, self.sid, self.tunnel = node, alice, sid, tunnel


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    alice = make_user("gridtest-alice")
    n = new_node()
    tunnel: subprocess.Popen[str] | None = None
    try:
        n.init()
        big = bytes(range(256)) * 4096  # 1 MiB: several reads
        # alice's own project: hers to change
        n.import_shared(n.write_tree({"hello": "hi\n", "sub/big": big}, owner=alice), "proj")
        n.grid("user", "add", alice.name, "--uid", str(alice.uid))
        port = free_port()
        n.start("--9p", f"127.0.0.1:{port}")
        sid = n.grid("spawn", "-q", "proj", user=alice).stdout.strip()
        bundle = n.home / "certs" / "users" / alice.name
        tunnel = subprocess.Popen(
            [sys.executable, "-m", "grid.cli.main", "tunnel", "--listen", "127.0.0.1:0",
             "--cert", str(bundle), f"127.0.0.1:{port}"],
            env=n.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert tunnel.stdout is not None
        line = tunnel.stdout.readline()
        assert line.startswith("tunnel 127.0.0.1:"), (line, tunnel.stderr and tunnel.stderr.read())
        yield Env(n, alice, sid, line.split()[1])
    finally:
        if tunnel is not None:
            tunnel.terminate()
            tunnel.wait(timeout=30)
        n.close()


def diod(e: Env, tool: str, *args: str, server: str | None = None,
         user: User | None = None) -> subprocess.CompletedProcess[bytes]:
    prefix = user.prefix() if user else ()
    return subprocess.run([*prefix, tool, "-s", server or e.tunnel, "-t", "20", *args],
                          capture_output=True, timeout=60)


def test_diodls_through_tunnel(env: Env) -> None:
    e = env
    p = diod(e, DIODLS, "-a", e.sid, "-u", str(e.alice.uid), "/")
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.split()) == [b"hello", b"sub"]


def test_diodcat_through_tunnel(env: Env) -> None:
    e = env
    p = diod(e, DIODCAT, "-a", e.sid, "-u", str(e.alice.uid), "hello", "sub/big")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"hi\n" + bytes(range(256)) * 4096


def test_diod_uid_of_someone_else_refused(env: Env) -> None:
    e = env
    p = diod(e, DIODLS, "-a", e.sid, "-u", "0", "/")
    assert p.returncode != 0 and p.stdout == b""
    assert b"Permission denied" in p.stderr, p.stderr


def test_diodcat_on_the_unix_socket_as_owner(env: Env) -> None:
    e = env
    sock = str(e.node.home / "run" / "9p.sock")
    p = diod(e, DIODCAT, "-a", e.sid, "hello", server=sock, user=e.alice)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"hi\n"


def test_diodls_unknown_spawn(env: Env) -> None:
    e = env
    p = diod(e, DIODLS, "-a", "999", "-u", str(e.alice.uid), "/")
    assert p.returncode != 0
    assert b"No such file or directory" in p.stderr, p.stderr


def test_dioddate_through_tunnel(env: Env) -> None:
    p = diod(env, "/usr/sbin/dioddate", "-u", str(env.alice.uid))
    assert p.returncode == 0, p.stderr
    # the node's clock, as ctime(3) prints it: "Mon Nov 30 04:44:10 2026"
    assert len(p.stdout.split()) == 5 and p.stdout.split()[-1].isdigit(), p.stdout


def test_diodload_read_write_and_getattr(env: Env) -> None:
    """diodload copies ctl:zero to ctl:null (or stats ctl:null with -g) from many threads;
    it attaches as its euid, so it runs as alice."""
    for extra in ((), ("-g",)):
        p = subprocess.run([*env.alice.prefix(), "/usr/sbin/diodload", "-s", env.tunnel,
                            "-r", "1", "-n", "4", *extra],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, (extra, p.stderr)
        # e.g. "diodload: 1600 ops/s, 99 rMB/s, 99 wMB/s"; the getattr load moves no data
        words = p.stderr.decode().split()
        assert words[0] == "diodload:" and int(words[1]) > 0, p.stderr
        if not extra:
            assert int(words[3]) > 0 and int(words[5]) > 0, p.stderr


def test_tunnel_errors(env: Env, tmp_path: Path) -> None:
    """A bad bundle stops the tunnel before it listens; a node that does not answer costs
    only the connection, with a line on stderr."""
    p = env.node.grid("tunnel", "--cert", str(tmp_path), "127.0.0.1:1", check=False)
    assert p.returncode == 1 and p.stderr == f"grid: tunnel: {tmp_path}/ca.pem: no CA certificate here\n"
    p = env.node.grid("tunnel", "--listen", "nowhere", "127.0.0.1:1", check=False)
    assert p.returncode == 1 and "'nowhere' is not HOST:PORT" in p.stderr
    bundle = env.node.home / "certs" / "users" / env.alice.name
    t = subprocess.Popen(
        [sys.executable, "-m", "grid.cli.main", "tunnel", "--listen", "127.0.0.1:0",
         "--cert", str(bundle), f"127.0.0.1:{free_port()}"],
        env=env.node.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert t.stdout is not None and t.stderr is not None
        addr = t.stdout.readline().split()[1]
        r = diod(env, DIODLS, "-a", env.sid, "-u", str(env.alice.uid), "/", server=addr)
        assert r.returncode != 0
        assert "Connection refused" in t.stderr.readline()
    finally:
        t.terminate()
        t.wait(timeout=30)


@pytest.mark.parametrize("version", ["9P2000", "9P2000.u", "9P2000.L"])
def test_p9fs_through_tunnel(env: Env, version: str) -> None:
    """p9fs (PyPI) in each dialect through the tunnel, as alice: list, create and write,
    read back, stat, move (p9fs copies and deletes), remove; the spawn sees the change."""
    p9fs = pytest.importorskip("p9fs", reason="p9fs is not installed")
    host, port = env.tunnel.rsplit(":", 1)
    fs = p9fs.P9FileSystem(host, int(port), env.alice.name, version=version, aname=env.sid,
                           skip_instance_cache=True)

    def names(path: str) -> set[str]:
        return {n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)}

    assert {"hello", "sub"} <= names("")
    new = f"new-{version}"
    payload = bytes(range(256)) * 300
    with fs.open(new, "wb") as f:
        f.write(payload)
    with fs.open(new, "rb") as f:
        assert f.read() == payload
    assert fs.info(new)["size"] == len(payload)
    fs.mv(new, f"sub/{new}")
    assert new in names("sub") and new not in names("")
    p = diod(env, DIODCAT, "-a", env.sid, "-u", str(env.alice.uid), f"sub/{new}")
    assert p.stdout == payload
    fs.rm(f"sub/{new}")
    assert new not in names("sub")
