"""The user's namespace over 9P (aname ""): ctl, names, ID/ctl, ID/status, ID/root/, driven
by real users over the daemon's Unix socket; other users' spawns are invisible."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from spawn.ninep.client import Client, ServerError
from tests.grid.gridnode import ROOT, Node, User, make_user, new_node

if os.geteuid() != 0:
    pytest.skip("runs as root (real users, setpriv)", allow_module_level=True)


class Env:
    def __init__(self, node: Node, alice: User, bob: User, bob_sid: str) -> None:
        self.node, self.alice, self.bob, self.bob_sid = node, alice, bob, bob_sid
        self.sock = node.home / "run" / "9p.sock"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    alice, bob = make_user("gridtest-alice"), make_user("gridtest-bob")
    n = new_node()
    try:
        n.init()
        src = n.write_tree({"hello": "hi\n"}, owner=alice)  # alice's own project: hers to change
        n.import_shared(src, "proj")
        n.import_shared(src, "other")
        for u in (alice, bob):
            n.grid("user", "add", u.name, "--uid", str(u.uid))
        n.start()
        bob_sid = n.grid("spawn", "-q", "proj", user=bob).stdout.strip()
        yield Env(n, alice, bob, bob_sid)
    finally:
        n.close()


# A client run as a real user (the socket's peer uid is who the daemon serves): the steps
# come as JSON [op, path, data?] and the results go back as JSON, errors as their errno.
SCRIPT = textwrap.dedent('''
    import asyncio, json, os, sys
    from spawn.ninep.client import Client, ServerError

    async def main(sock, steps):
        c = await Client.connect_unix(sock)
        await c.version(b"9P2000.L")
        await c.attach(0, b"", b"", n_uname=os.getuid())
        out = []
        for op, path, *data in steps:
            names = [n.encode() for n in path.split("/") if n]
            try:
                if op == "ls":
                    fid = c.fid()
                    await c.walk(0, fid, names)
                    await c.lopen(fid, os.O_RDONLY)
                    out.append(sorted(d.name.decode() for d in await c.readdir_all(fid)
                                      if d.name not in (b".", b"..")))
                    await c.clunk(fid)
                elif op == "cat":
                    fid = await c.walk_open(0, path.encode(), os.O_RDONLY)
                    out.append((await c.read_all(fid)).decode())
                    await c.clunk(fid)
                elif op == "cmd":  # write a command, then read the answer on the same fid
                    fid = await c.walk_open(0, path.encode(), os.O_RDWR)
                    await c.write(fid, 0, data[0].encode())
                    out.append((await c.read_all(fid)).decode())
                    await c.clunk(fid)
                elif op == "write":
                    fid = await c.walk_open(0, path.encode(), os.O_WRONLY | os.O_TRUNC)
                    await c.write(fid, 0, data[0].encode())
                    await c.clunk(fid)
                    out.append("ok")
                elif op == "walk":
                    fid = c.fid()
                    out.append(len(await c.walk(0, fid, names)))
                    await c.clunk(fid)
            except ServerError as e:
                out.append({"errno": e.errno})
        await c.close()
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
''')


def as_user(e: Env, user: User, *steps: list[str]) -> list:
    p = subprocess.run([*user.prefix(), sys.executable, "-c", SCRIPT, str(e.sock),
                        json.dumps(steps)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd="/")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_names_and_empty_namespace(env: Env) -> None:
    ls, names = as_user(env, env.alice, ["ls", "/"], ["cat", "/names"])
    assert ls == ["ctl", "names"]  # bob's spawn is not there
    assert names == "other\nproj\n"


def test_spawn_use_save_kill(env: Env) -> None:
    sid, *_ = as_user(env, env.alice, ["cmd", "/ctl", "spawn proj"])
    sid = sid.strip()
    assert sid.isdigit()
    got = as_user(env, env.alice, ["ls", "/"], ["ls", f"/{sid}"],
                  ["cat", f"/{sid}/root/hello"],
                  ["write", f"/{sid}/root/hello", "changed\n"],
                  ["cat", f"/{sid}/root/hello"],
                  ["cmd", f"/{sid}/ctl", "save saved-by-9p"],
                  ["cat", f"/{sid}/status"],
                  ["cat", "/names"])
    assert got[0] == sorted(["ctl", "names", sid])
    assert got[1] == ["ctl", "err", "root", "status"]
    assert got[2] == "hi\n" and got[3] == "ok" and got[4] == "changed\n"
    saved = json.loads(got[5])
    assert saved["name"] == "saved-by-9p" and saved["score"].startswith("blake3:")
    status = json.loads(got[6])
    assert status["id"] == sid and status["owner"] == env.alice.name
    assert "saved-by-9p" in got[7].split()
    # the saved name spawns with the change in it
    sid2 = as_user(env, env.alice, ["cmd", "/ctl", "spawn saved-by-9p"])[0].strip()
    assert as_user(env, env.alice, ["cat", f"/{sid2}/root/hello"]) == ["changed\n"]
    # kill: the directory goes away
    assert as_user(env, env.alice, ["write", f"/{sid}/ctl", "kill"], ["ls", "/"]) == [
        "ok", sorted(["ctl", "names", sid2])]
    as_user(env, env.alice, ["write", f"/{sid2}/ctl", "kill"])


def test_other_users_spawns_invisible(env: Env) -> None:
    sid = env.bob_sid
    got = as_user(env, env.alice, ["walk", f"/{sid}"], ["cat", f"/{sid}/root/hello"],
                  ["write", f"/{sid}/ctl", "kill"])
    assert got == [{"errno": errno.ENOENT}] * 3
    assert env.node.grid("spawns", "--json", user=env.bob).stdout.count(f'"id": "{sid}"') == 1
    assert as_user(env, env.bob, ["ls", "/"])[0] == sorted(["ctl", "names", sid])


def test_command_errors_are_write_errors(env: Env) -> None:
    got = as_user(env, env.alice, ["cmd", "/ctl", "spawn no-such-name"],
                  ["cmd", "/ctl", "frobnicate"], ["cmd", "/ctl", "spawn"],
                  ["write", "/names", "x"], ["write", f"/{env.bob_sid}/ctl", "save"])
    assert got[0] == {"errno": errno.EINVAL}, got  # the name does not resolve
    assert got[1] == {"errno": errno.EINVAL} and got[2] == {"errno": errno.EINVAL}
    assert got[3]["errno"] in (errno.EACCES, errno.EBADF)
    assert got[4] == {"errno": errno.ENOENT}


def test_error_text_on_9p2000(env: Env) -> None:
    """9P2000 clients read the daemon's message, not just an errno."""
    async def go() -> str:
        c = await Client.connect_unix(env.sock)
        try:
            await c.version(b"9P2000")
            await c.attach(0, b"root", b"")
            fid = await c.walk_open(0, b"ctl", 2)  # ORDWR
            with pytest.raises(ServerError) as ei:
                await c.write(fid, 0, b"spawn no-such-name")
            return ei.value.strerror or ""
        finally:
            await c.close()

    text = asyncio.run(go())
    assert "no-such-name" in text, text


def test_no_changes_in_the_control_tree(env: Env) -> None:
    async def go() -> list[int]:
        c = await Client.connect_unix(env.sock)
        codes = []
        try:
            await c.version(b"9P2000.L")
            await c.attach(0, b"root", b"")
            await c.walk(0, 1, [])
            with pytest.raises(ServerError) as ei:
                await c.lcreate(1, b"newfile")
            codes.append(ei.value.errno)
        finally:
            await c.close()
        return codes

    assert asyncio.run(go()) == [errno.EACCES]


def test_err_says_why_the_last_command_failed(env: Env) -> None:
    sid = as_user(env, env.alice, ["cmd", "/ctl", "spawn proj"])[0].strip()
    got = as_user(env, env.alice, ["cat", f"/{sid}/err"],
                  ["write", f"/{sid}/ctl", "save bad=name"], ["cat", f"/{sid}/err"],
                  ["write", f"/{sid}/ctl", "kill"])
    assert got[0] == "" and got[1] == {"errno": errno.EINVAL}, got
    assert got[2].startswith("save bad=name: Invalid argument: save: name "), got[2]
    assert got[3] == "ok"


def test_locks_are_shared_with_direct_attaches(env: Env) -> None:
    """A lock taken through aname = ID is seen through the namespace's ID/root/ and the
    other way round: one lock table per spawn (invariant 8)."""
    from spawn.ninep import messages as m9
    from spawn.ninep.messages import LockStatus, LockType

    sid = env.bob_sid

    async def lock(c: Client, fid: int, type: LockType) -> int:
        r = await c.call(m9.Tlock, fid=fid, type=type, flags=0, start=0, length=0,
                         proc_id=1, client_id=b"t")
        return r.status  # type: ignore[attr-defined]

    async def holder(c: Client, fid: int) -> int:
        r = await c.call(m9.Tgetlock, fid=fid, type=LockType.WRLCK, start=0, length=0,
                         proc_id=2, client_id=b"t")
        return r.type  # type: ignore[attr-defined]

    async def go() -> None:
        direct = await Client.connect_unix(env.sock)
        ns = await Client.connect_unix(env.sock)
        try:
            for c, aname in ((direct, sid.encode()), (ns, b"")):
                await c.version(b"9P2000.L")
                await c.attach(0, b"root", aname)
            d = await direct.walk_open(0, b"hello", os.O_RDWR)
            n = await ns.walk_open(0, f"{sid}/root/hello".encode(), os.O_RDWR)
            assert await lock(direct, d, LockType.WRLCK) == LockStatus.SUCCESS
            assert await holder(ns, n) == LockType.WRLCK
            assert await lock(ns, n, LockType.WRLCK) == LockStatus.BLOCKED
            await direct.clunk(d)  # drops the lock
            assert await lock(ns, n, LockType.WRLCK) == LockStatus.SUCCESS
            assert await holder(direct, await direct.walk_open(0, b"hello")) == LockType.WRLCK
            await ns.close()  # the session's end drops its locks in the spawn's table too
            for _ in range(100):
                if await holder(direct, await direct.walk_open(0, b"hello")) == LockType.UNLCK:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the namespace session's lock outlived it")
        finally:
            await direct.close()
            await ns.close()

    asyncio.run(go())
