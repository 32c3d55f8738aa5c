"""The daemon's 9P service with a real daemon and real users: who may attach what, over the
Unix socket (peer uid) and TLS (grid client certificates), through `grid 9p`, and the
refusals invariant 9 asks for (no certificate, another CA, an expired one, a node's, a
uname that is someone else, another user's spawn, walks out of the root)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spawn.ninep.client import Client, ServerError
from spawn.ninep.messages import NONUNAME
from tests.grid.gridnode import Node, User, free_port, make_user, new_node

if os.geteuid() != 0:
    pytest.skip("runs as root (real users, setpriv)", allow_module_level=True)



class Env:
    def __init__(self, node: Node, alice: User, bob: User, port: int, sid: str) -> None:
        self.node = node
        self.alice = alice
        self.bob = bob
        self.port = port
        self.sid = sid
        self.sock = node.home / "run" / "9p.sock"
        self.bundle = node.home / "certs" / "users" / alice.name


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    alice, bob = make_user("gridtest-alice"), make_user("gridtest-bob")
    n = new_node()
    try:
        n.init()
        # alice's own project: hers to change
        n.import_shared(n.write_tree({"hello": "hi\n"}, owner=alice), "proj")
        for u in (alice, bob):
            n.grid("user", "add", u.name, "--uid", str(u.uid))
        n.grid("user", "add", "gridtest-carol")  # a certificate, but no uid on this node
        port = free_port()
        n.start("--9p", f"127.0.0.1:{port}")
        sid = n.grid("spawn", "-q", "proj", user=alice).stdout.strip()
        yield Env(n, alice, bob, port, sid)
    finally:
        n.close()


# -- helpers ----------------------------------------------------------------------------------


def tls_ctx(cert: Path | None, key: Path | None, ca: Path) -> ssl.SSLContext:
    """A client context built by hand, so tests can offer what grid's own helpers refuse."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _tls_attach(port: int, ctx: ssl.SSLContext, uname: bytes, aname: bytes,
                      n_uname: int = NONUNAME) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")
    c = Client(reader, writer)
    try:
        await asyncio.wait_for(c.version(b"9P2000.L"), 10)
        await asyncio.wait_for(c.attach(0, uname, aname, n_uname=n_uname), 10)
    except BaseException:
        await c.close()
        raise
    return c


def attach_error(port: int, ctx: ssl.SSLContext, uname: bytes, aname: bytes,
                 n_uname: int = NONUNAME) -> BaseException:
    """What attaching over TLS fails with (the test fails if it succeeds)."""
    async def go() -> BaseException:
        try:
            c = await _tls_attach(port, ctx, uname, aname, n_uname)
        except BaseException as e:
            return e
        await c.close()
        raise AssertionError("attach succeeded")

    return asyncio.run(go())


def alice_ctx(e: Env) -> ssl.SSLContext:
    return tls_ctx(e.bundle / "cert.pem", e.bundle / "key.pem", e.bundle / "ca.pem")


def g9p(e: Env, *args: str, user: User | None = None, input: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    return e.node.grid("9p", *args, user=user, input=input, check=check, timeout=60)


# -- the Unix socket --------------------------------------------------------------------------


def test_socket_modes(env: Env) -> None:
    assert env.sock.stat().st_mode & 0o777 == 0o666
    assert env.sock.parent.stat().st_mode & 0o777 == 0o711


def test_unix_owner_ls_cat_write_stat(env: Env) -> None:
    s, sid, a = str(env.sock), env.sid, env.alice
    assert g9p(env, s, "-a", sid, "ls", "/", user=a).stdout == "hello\n"
    assert g9p(env, s, "-a", sid, "cat", "/hello", user=a).stdout == "hi\n"
    g9p(env, s, "-a", sid, "write", "/new", user=a, input="written over 9P\n")
    assert g9p(env, s, "-a", sid, "cat", "new", user=a).stdout == "written over 9P\n"
    st = g9p(env, s, "-a", sid, "stat", "/new", user=a).stdout
    assert "-rw-r--r--" in st and "size 16" in st and f"uid {a.uid} " in st
    assert g9p(env, s, "-a", sid, "ls", "/", user=a).stdout == "hello\nnew\n"
    # no aname: her namespace, with the spawn in it
    assert g9p(env, s, "ls", "/", user=a).stdout == f"{sid}\nctl\nnames\n"
    assert g9p(env, s, "cat", f"/{sid}/root/new", user=a).stdout == "written over 9P\n"


def test_unix_other_user_sees_no_spawn(env: Env) -> None:
    p = g9p(env, str(env.sock), "-a", env.sid, "ls", "/", user=env.bob, check=False)
    assert p.returncode == 1
    assert p.stderr == f"grid: attach '{env.sid}': No such file or directory\n"
    # root may
    assert "hello" in g9p(env, str(env.sock), "-a", env.sid, "ls", "/").stdout


def test_unix_missing_file_and_bad_aname(env: Env) -> None:
    p = g9p(env, str(env.sock), "-a", env.sid, "cat", "/nope", user=env.alice, check=False)
    assert p.returncode == 1 and "grid: cat /nope: No such file or directory" in p.stderr
    p = g9p(env, str(env.sock), "-a", "../../etc", "ls", "/", user=env.alice, check=False)
    assert p.returncode == 1 and "No such file or directory" in p.stderr


def test_unix_uname_must_be_the_peer(env: Env) -> None:
    """The kernel says who the peer is (root, here); a uname or n_uname naming anyone else
    is refused, and so is an attach that names nobody."""
    async def go() -> list[int]:
        codes = []
        for uname, n_uname in ((env.bob.name.encode(), NONUNAME), (b"", env.bob.uid),
                               (b"nobody", 0), (b"", NONUNAME)):
            c = await Client.connect_unix(env.sock)
            try:
                await c.version(b"9P2000.L")
                with pytest.raises(ServerError) as ei:
                    await c.attach(0, uname, env.sid.encode(), n_uname=n_uname)
                codes.append(ei.value.errno)
            finally:
                await c.close()
        return codes

    assert asyncio.run(go()) == [errno.EACCES] * 4


def test_walk_dotdot_stays_inside(env: Env) -> None:
    async def go() -> None:
        c = await Client.connect_unix(env.sock)
        try:
            await c.version(b"9P2000.L")
            root = await c.attach(0, b"root", env.sid.encode())
            qids = await c.walk(0, 1, [b"..", b"..", b".."])
            assert qids[-1].path == root.path
            qids = await c.walk(0, 2, [b"..", b"hello"])
            assert len(qids) == 2
            # a failure after the first name answers the qids walked (walk(5)): "etc" is
            # looked up in the spawn's root, not the host's
            assert len(await c.walk(0, 3, [b"..", b"etc"])) == 1
            with pytest.raises(ServerError) as ei:
                await c.walk(0, 3, [b"etc"])
            assert ei.value.errno == errno.ENOENT
            with pytest.raises(ServerError) as ei:
                await c.walk(0, 4, [b"../etc"])
            assert ei.value.errno == errno.EINVAL
        finally:
            await c.close()

    asyncio.run(go())


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_owner_with_grid_9p(env: Env) -> None:
    addr = f"127.0.0.1:{env.port}"
    out = g9p(env, addr, "--cert", str(env.bundle), "-a", env.sid, "cat", "/hello").stdout
    assert out == "hi\n"


def test_tls_uname_mismatch_refused(env: Env) -> None:
    ctx = alice_ctx(env)
    sid = env.sid.encode()
    for uname, n_uname in ((env.bob.name.encode(), NONUNAME), (b"root", NONUNAME),
                           (b"", env.bob.uid), (b"", 0), (b"", NONUNAME),
                           (env.bob.name.encode(), env.alice.uid)):
        e = attach_error(env.port, ctx, uname, sid, n_uname)
        assert isinstance(e, ServerError) and e.errno == errno.EACCES, (uname, e)
    # alice by name (any n_uname: py9p always sends 0), or by number only (diod's tools)
    for uname, n_uname in ((env.alice.name.encode(), NONUNAME), (env.alice.name.encode(), 0),
                           (b"", env.alice.uid)):
        c = asyncio.run(_tls_attach_and_close(env.port, ctx, uname, sid, n_uname))
        assert c


async def _tls_attach_and_close(port: int, ctx: ssl.SSLContext, uname: bytes, aname: bytes,
                                n_uname: int) -> bool:
    c = await _tls_attach(port, ctx, uname, aname, n_uname)
    await c.close()
    return True


def test_tls_other_users_spawn_is_enoent(env: Env) -> None:
    bob = env.node.home / "certs" / "users" / env.bob.name
    ctx = tls_ctx(bob / "cert.pem", bob / "key.pem", bob / "ca.pem")
    e = attach_error(env.port, ctx, env.bob.name.encode(), env.sid.encode())
    assert isinstance(e, ServerError) and e.errno == errno.ENOENT


def test_tls_without_certificate_refused(env: Env) -> None:
    e = attach_error(env.port, tls_ctx(None, None, env.bundle / "ca.pem"),
                     env.alice.name.encode(), env.sid.encode())
    assert isinstance(e, (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)), e


def test_tls_certificate_of_another_grid_refused(env: Env, tmp_path: Path) -> None:
    other = Node(tmp_path)
    other.grid("init")
    other.grid("user", "add", env.alice.name)  # same name, the other grid's CA
    b = other.home / "certs" / "users" / env.alice.name
    ctx = tls_ctx(b / "cert.pem", b / "key.pem", env.bundle / "ca.pem")
    e = attach_error(env.port, ctx, env.alice.name.encode(), env.sid.encode())
    assert isinstance(e, (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)), e
    # and `grid 9p` with it says why before connecting
    p = g9p(env, f"127.0.0.1:{env.port}", "--cert", str(b), "-a", env.sid, "ls", "/",
            check=False)
    assert p.returncode == 1 and p.stderr.startswith("grid: ")


def test_tls_expired_certificate_refused(env: Env, tmp_path: Path) -> None:
    from replication.certs import issue_user_cert, load_ca, write_bundle

    ca = load_ca(env.node.home / "certs" / "ca")
    past = datetime.now(UTC) - timedelta(days=30)
    creds = issue_user_cert(ca, env.alice.name, not_before=past,
                            not_after=past + timedelta(days=1))
    b = write_bundle(tmp_path / "expired", creds)
    ctx = tls_ctx(b / "cert.pem", b / "key.pem", b / "ca.pem")
    e = attach_error(env.port, ctx, env.alice.name.encode(), env.sid.encode())
    assert isinstance(e, (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)), e
    p = g9p(env, f"127.0.0.1:{env.port}", "--cert", str(b), "-a", env.sid, "ls", "/",
            check=False)
    assert p.returncode == 1 and "expired" in p.stderr


def test_tls_node_certificate_is_not_a_user(env: Env) -> None:
    n = env.node.home / "certs" / "node"
    ctx = tls_ctx(n / "cert.pem", n / "key.pem", n / "ca.pem")
    e = attach_error(env.port, ctx, b"", env.sid.encode(), 0)
    assert isinstance(e, ServerError) and e.errno == errno.EACCES


def test_tls_user_without_uid_refused(env: Env) -> None:
    b = env.node.home / "certs" / "users" / "gridtest-carol"
    ctx = tls_ctx(b / "cert.pem", b / "key.pem", b / "ca.pem")
    e = attach_error(env.port, ctx, b"gridtest-carol", env.sid.encode())
    assert isinstance(e, ServerError) and e.errno == errno.EACCES


def test_bad_addresses_have_clear_errors(env: Env) -> None:
    p = g9p(env, "/nonexistent/9p.sock", "ls", "/", check=False)
    assert p.returncode == 1 and p.stderr.startswith("grid: /nonexistent/9p.sock: cannot connect")
    p = g9p(env, "127.0.0.1:1", "--cert", str(env.bundle), "ls", "/", check=False)
    assert p.returncode == 1 and "cannot connect" in p.stderr


def test_sessions_are_clients_and_kill_ends_them(env: Env) -> None:
    """A 9P session of a spawn counts among its clients, and `grid kill` ends it."""
    import json

    sid = env.node.grid("spawn", "-q", "proj", user=env.alice).stdout.strip()

    async def go() -> None:
        c = await Client.connect_unix(env.sock)
        try:
            await c.version(b"9P2000.L")
            await c.attach(0, b"root", sid.encode())
            await c.walk_open(0, b"hello")  # an open file the session must release
            spawns = json.loads(env.node.grid("spawns", "--json", user=env.alice).stdout)
            assert [s["clients"] for s in spawns if s["id"] == sid] == [1]
            await asyncio.to_thread(env.node.grid, "kill", "--force", sid, user=env.alice)
            for _ in range(100):
                if c.closed:
                    break
                await asyncio.sleep(0.05)
            assert c.closed
        finally:
            await c.close()

    asyncio.run(go())


def test_garbage_costs_only_its_connection(env: Env) -> None:
    """Random frames on the Unix socket, random bytes inside TLS, and plain 9P on the TLS
    port: each ends (or errs) that connection only; the daemon keeps serving."""
    import random
    import struct

    rng = random.Random(9)

    async def unix_garbage(seed: int) -> None:
        r = random.Random(seed)
        reader, writer = await asyncio.open_unix_connection(str(env.sock))
        version = b"9P2000.L"
        body = struct.pack("<IH", 8192, len(version)) + version
        writer.write(struct.pack("<IBH", 7 + len(body), 100, 0xFFFF) + body)
        for _ in range(100):
            payload = r.randbytes(r.randrange(0, 64))
            writer.write(struct.pack("<IBH", 7 + len(payload), r.randrange(256),
                                     r.randrange(1 << 16)) + payload)
        if seed % 2:
            writer.write(b"\xff\xff\xff\xff")  # breaks the framing: the connection ends
        await writer.drain()
        writer.write_eof()
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(1 << 16), 20):
                pass
        writer.close()

    async def tls_garbage() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port, ssl=alice_ctx(env),
                                                       server_hostname="localhost")
        writer.write(rng.randbytes(5000))
        await writer.drain()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await asyncio.wait_for(reader.read(), 20)
        writer.close()

    async def plain_on_tls_port() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        writer.write(b"\x13\x00\x00\x00\x64\xff\xff\x00\x20\x00\x00\x08\x009P2000.L")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), 20)
        writer.close()

    async def go() -> None:
        await asyncio.gather(*(unix_garbage(i) for i in range(20)), tls_garbage(),
                             plain_on_tls_port())

    asyncio.run(go())
    assert g9p(env, str(env.sock), "-a", env.sid, "cat", "/hello", user=env.alice).stdout == "hi\n"
    out = g9p(env, f"127.0.0.1:{env.port}", "--cert", str(env.bundle), "-a", env.sid,
              "cat", "/hello").stdout
    assert out == "hi\n"
    assert "Traceback" not in env.node.log.read_text()
