"""The spawn commands end to end: a real daemon, real FUSE mounts made by `grid mount`, the
`grid` command as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grid.gridnode import Node, grid_mounts, new_node, skip_without_mounts, wait_for

skip_without_mounts()


def _tree(src: Path) -> None:
    (src / "docs").mkdir(parents=True)
    (src / "README").write_text("grid test tree\n")
    (src / "docs" / "a.txt").write_bytes(os.urandom(200_000))
    (src / "link").symlink_to("README")


@pytest.fixture
def node() -> Iterator[Node]:
    n = new_node()
    try:
        n.init()
        _tree(n.base / "src")
        n.grid("import", str(n.base / "src"), "proj")
        n.start()
        yield n
    finally:
        n.close()


def _spawn(node: Node, *args: str) -> str:
    return node.grid("spawn", "-q", *args).stdout.strip()


def test_spawn_mount_change_save_respawn(node: Node) -> None:
    old = node.grid("name", "get", "proj").stdout.strip()
    m = node.base / "m"
    m.mkdir()
    sid = _spawn(node, "proj", "--mount", str(m))
    assert sid.isdigit()
    assert (m / "README").read_text() == "grid test tree\n"
    assert os.readlink(m / "link") == "README"
    (m / "new.txt").write_text("made in the spawn\n")
    (m / "README").unlink()
    (m / "docs" / "sub").mkdir()

    rows = json.loads(node.grid("spawns", "--json").stdout)
    (row,) = [r for r in rows if r["id"] == sid]
    assert row["name"] == "proj" and row["clients"] == 1 and row["mounts"] == [str(m)]

    out = node.grid("save", sid)
    new = out.stdout.strip()
    assert new.startswith("blake3:") and new != old
    assert "saved spawn" in out.stderr
    rec = json.loads(node.grid("name", "get", "proj", "--json").stdout)
    assert rec["score"] == new and rec["prev"] == old
    assert node.grid("cat", "proj:new.txt").stdout == "made in the spawn\n"
    assert node.grid("cat", "proj:README", check=False).returncode != 0

    # the spawn carries on from the new root; a second spawn of the name sees the save
    (m / "after.txt").write_text("x")
    m2 = node.base / "m2"
    m2.mkdir()
    sid2 = _spawn(node, "proj", "--mount", str(m2))
    assert sorted(os.listdir(m2)) == ["docs", "link", "new.txt"]
    assert (m2 / "docs" / "a.txt").read_bytes() == (node.base / "src" / "docs" / "a.txt").read_bytes()
    node.grid("unmount", str(m2))
    node.grid("kill", "--force", sid2)

    # a second save records prev = the first save's root
    newer = node.grid("save", sid).stdout.strip()
    rec = json.loads(node.grid("name", "get", "proj", "--json").stdout)
    assert rec["score"] == newer and rec["prev"] == new


def test_save_under_a_new_name_and_from_a_score(node: Node) -> None:
    score = node.grid("name", "get", "proj").stdout.strip()
    sid = _spawn(node, score)
    out = node.grid("save", sid)
    assert "no name recorded" in out.stderr
    assert out.stdout.strip().startswith("blake3:")
    node.grid("save", sid, "proj-v2")
    rec = json.loads(node.grid("name", "get", "proj-v2", "--json").stdout)
    assert rec["prev"] == out.stdout.strip()
    # the old name did not move
    assert node.grid("name", "get", "proj").stdout.strip() == score


def test_two_mounts_are_coherent_and_appends_interleave_whole(node: Node) -> None:
    a, b = node.base / "a", node.base / "b"
    a.mkdir()
    b.mkdir()
    sid = _spawn(node, "proj", "--mount", str(a))
    node.grid("mount", sid, str(b))
    assert not (b / "f").exists()  # b's kernel now holds a negative entry for f
    (a / "f").write_text("one")
    assert (b / "f").read_text() == "one"  # at once: the daemon invalidated b's cache
    st = os.stat(b / "f")
    with open(a / "f", "a") as f:
        f.write("two")
    assert os.stat(b / "f").st_size == 6 and (b / "f").read_text() == "onetwo"
    os.chmod(a / "f", 0o600)
    assert os.stat(b / "f").st_mode & 0o777 == 0o600 and os.stat(b / "f").st_ino == st.st_ino
    os.rename(b / "f", b / "g")
    assert not (a / "f").exists() and (a / "g").read_text() == "onetwo"
    os.link(a / "g", a / "h")
    assert os.stat(b / "g").st_nlink == 2
    os.unlink(a / "h")
    assert not (b / "h").exists() and os.stat(b / "g").st_nlink == 1
    os.mkdir(b / "d")
    (b / "d" / "x").write_text("x")
    assert os.listdir(a / "d") == ["x"]
    os.rename(a / "d" / "x", a / "d" / "y")
    assert os.listdir(b / "d") == ["y"] and (b / "d" / "y").read_text() == "x"

    script = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)\n"
        "rec = (sys.argv[2] * 99 + '\\n').encode()\n"
        "for _ in range(300):\n"
        "    os.write(fd, rec)\n"
        "os.close(fd)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(d / "log"), c])
             for d, c in ((a, "x"), (b, "y"), (a, "z"))]
    for p in procs:
        assert p.wait(timeout=120) == 0
    lines = (b / "log").read_text().splitlines()
    assert len(lines) == 900
    assert all(len(ln) == 99 and len(set(ln)) == 1 for ln in lines)  # no torn records
    assert sorted({ln[0] for ln in lines}) == ["x", "y", "z"]


def _kill_on_tty(node: Node, sid: str, answer: bytes) -> tuple[int, bool]:
    """`grid kill SID` on a terminal, answering *answer*: (exit status, spawn still there)."""
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "grid.cli.main", "kill", sid], env=node.env(),
                             stdin=slave, stdout=slave, stderr=slave)
        out = b""
        while b"[y/N]" not in out:
            out += os.read(master, 1024)
        assert b"discard spawn " + sid.encode() in out
        os.write(master, answer)
        rc = p.wait(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    there = any(r["id"] == sid for r in json.loads(node.grid("spawns", "--json").stdout))
    return rc, there


def test_kill_asks_unless_forced_and_ends_the_mounts(node: Node) -> None:
    m = node.base / "m"
    m.mkdir()
    sid = _spawn(node, "proj", "--mount", str(m))
    p = node.grid("kill", sid, check=False)  # stdin is not a terminal
    assert p.returncode == 1 and "--force" in p.stderr
    assert any(r["id"] == sid for r in json.loads(node.grid("spawns", "--json").stdout))
    p = node.grid("kill", sid, check=False, input="n\n")
    assert p.returncode == 1
    other = _spawn(node, "proj")
    assert _kill_on_tty(node, other, b"n\n") == (1, True)  # asked, declined: still there
    assert _kill_on_tty(node, other, b"y\n") == (0, False)  # asked, confirmed: gone
    node.grid("kill", "--force", sid)
    assert not any(r["id"] == sid for r in json.loads(node.grid("spawns", "--json").stdout))
    assert wait_for(lambda: not grid_mounts(m), timeout=20), "the mount of a killed spawn stays"
    p = node.grid("mount", sid, str(m), check=False)
    assert p.returncode == 1 and f"no spawn '{sid}'" in p.stderr


def test_bad_requests_change_nothing(node: Node) -> None:
    p = node.grid("spawn", "nosuchname", check=False)
    assert p.returncode == 1 and "no such name" in p.stderr
    p = node.grid("spawn", "proj", "--mount", str(node.base / "missing"), check=False)
    assert p.returncode == 1 and "no such directory" in p.stderr
    assert json.loads(node.grid("spawns", "--json").stdout) == []  # neither made a spawn

    sid = _spawn(node, "proj")
    p = node.grid("mount", sid, str(node.base / "missing"), check=False)
    assert p.returncode == 1 and "no such directory" in p.stderr
    p = node.grid("mount", "99", str(node.base), check=False)
    assert p.returncode == 1 and "no spawn '99'" in p.stderr
    p = node.grid("save", sid, "bad name!", check=False)
    assert p.returncode == 1 and "name" in p.stderr
    assert node.grid("name", "get", "bad name!", check=False).returncode != 0
    p = node.grid("unmount", str(node.base), check=False)
    assert p.returncode == 1 and "not a grid mount" in p.stderr
    p = node.grid("kill", "--force", "abc", check=False)
    assert p.returncode == 1 and "no spawn" in p.stderr

    m = node.base / "m"
    m.mkdir()
    node.grid("mount", sid, str(m))
    p = node.grid("mount", sid, str(m), check=False)
    assert p.returncode == 1 and "mounted there already" in p.stderr

    p = node.grid("serve", check=False, timeout=30)
    assert p.returncode == 1 and "already running" in p.stderr


def test_a_command_starts_the_daemon_when_none_runs() -> None:
    n = new_node()
    try:
        n.init()
        _tree(n.base / "src")
        n.grid("import", str(n.base / "src"), "proj")
        p = n.grid("spawn", "proj", check=False)
        assert p.returncode == 1 and "no node daemon is running" in p.stderr  # GRID_AUTOSTART=0
        p = n.grid("spawn", "proj", autostart=True)
        assert "started the node daemon" in p.stderr
        assert p.stdout.startswith("spawn 1: proj")
        # it holds the store now: imports go through its block socket
        n.grid("import", str(n.base / "src"), "proj2")
        assert n.grid("spawns").stdout.splitlines()[1].startswith("1 ")
        n.grid("stop")
        assert wait_for(lambda: not (n.home / "run" / "grid.sock").exists())
        p = n.grid("spawns", autostart=True)
        assert "started the node daemon" in p.stderr  # and the spawn is still there
        assert "proj" in p.stdout
        n.grid("stop")
    finally:
        n.close()


def test_mount_rides_out_a_daemon_restart(node: Node) -> None:
    m = node.base / "m"
    m.mkdir()
    sid = _spawn(node, "proj", "--mount", str(m))
    fd = os.open(m / "kept", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"fsynced before the kill")
    os.fsync(fd)
    node.kill9()
    time.sleep(0.2)
    node.start()
    # the held descriptor works again once the mount has re-attached
    assert wait_for(lambda: (m / "kept").exists(), timeout=20)
    os.write(fd, b"; and after")
    os.close(fd)
    assert (m / "kept").read_bytes() == b"fsynced before the kill; and after"
    rows = json.loads(node.grid("spawns", "--json").stdout)
    assert [r["clients"] for r in rows if r["id"] == sid] == [1]


def test_overlay_limit_moves_changes_into_the_store() -> None:
    """`grid serve --overlay-limit`: a spawn keeps at most that much changed data locally;
    the rest goes into the block store as it is written, and nothing is lost."""
    n = new_node()
    try:
        n.init()
        _tree(n.base / "src")
        n.grid("import", str(n.base / "src"), "proj")
        n.start("--overlay-limit", "1M")
        m = n.base / "m"
        m.mkdir()
        sid = _spawn(n, "proj", "--mount", str(m))
        data = os.urandom(8 << 20)
        with open(m / "big", "wb") as f:
            for i in range(0, len(data), 1 << 20):
                f.write(data[i:i + (1 << 20)])
        (row,) = json.loads(n.grid("spawns", "--json").stdout)
        assert row["changed_bytes"] <= 1 << 20, row
        assert (m / "big").read_bytes() == data
        n.grid("unmount", str(m))
        n.stop()
        n.start("--overlay-limit", "1M")
        n.grid("mount", sid, str(m))
        assert (m / "big").read_bytes() == data
        n.grid("save", sid)
        n.grid("export", "proj", str(n.base / "x"))
        assert (n.base / "x" / "big").read_bytes() == data
        p = n.grid("serve", "--overlay-limit", "lots", check=False)
        assert p.returncode == 2 and "not a size" in p.stderr
    finally:
        n.close()


def test_fuse_and_9p_clients_of_one_spawn_stay_coherent(node: Node) -> None:
    """A change over 9P reaches a mount's kernel cache at once, and a mount keeps working
    while a 9P session is attached to the same spawn."""
    import asyncio

    from spawn.ninep.client import Client

    m = node.base / "m"
    m.mkdir()
    sid = _spawn(node, "proj", "--mount", str(m))
    (m / "f").write_text("one")
    assert (m / "f").read_text() == "one"  # now in the mount's caches
    sock = str(node.home / "run" / "9p.sock")
    node.grid("9p", sock, "-a", sid, "write", "/f", input="changed over 9P\n")
    assert (m / "f").read_text() == "changed over 9P\n"

    async def with_9p_attached() -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        c = Client(reader, writer)
        try:
            await c.version(b"9P2000.L")
            await c.attach(0, b"root", sid.encode(), n_uname=0)
            for i in range(5):  # each change through the mount tells the 9P session nothing,
                await asyncio.to_thread((m / f"g{i}").write_text, "x")  # and must not fail
            assert await asyncio.to_thread(os.listdir, m) == sorted(os.listdir(m))
        finally:
            await c.close()

    asyncio.run(with_9p_attached())
    assert sorted(p.name for p in m.iterdir() if p.name.startswith("g")) == [f"g{i}" for i in range(5)]


def test_commands_start_without_the_heavy_imports() -> None:
    """Start-up is most of what `grid spawn` costs a user (DESIGN: it adds only start-up,
    < 150 ms): building the parser and reaching the daemon must not pull in asyncio, ssl,
    the engine or the 9P server (command modules import them inside their handlers)."""
    code = (
        "import sys\n"
        "from grid.cli.main import build_parser\n"
        "from grid.daemon.client import DaemonClient\n"
        "build_parser()\n"
        "print(sorted(m for m in ('asyncio', 'ssl', 'spawn.engine', 'spawn.ninep.server',"
        " 'asyncssh', 'lmdb') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
