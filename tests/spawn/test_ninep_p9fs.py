"""Interoperability with a 9P client we did not write: p9fs (PyPI, fsspec over py9p) in
each of its three dialects, against the server on TCP (p9fs connects by host and port).

p9fs runs in a thread (it uses blocking sockets) while the server runs on the test's event
loop. What is checked is what p9fs gets right: listings, file types and sizes, contents
written and read back, copy-and-delete moves, mkdir and removal. Three p9fs quirks shape the
test: in 9P2000.L it converts Linux modes as if they were Plan 9 modes (so its 'mode' is not
checked); in 9P2000 and .u it knows a missing file only by the text "file not found" (which
grid sends for ENOENT: tests/spawn/test_ninep_errtext.py; listings are used here); and
without an aname its .L rmdir
sends Tunlinkat without AT_REMOVEDIR, which a correct server refuses (EISDIR), while with an
aname it removes by Tremove, as it does for diod. p9fs has no rename: its ``mv`` copies and
deletes.
"""

from __future__ import annotations

import asyncio

import pytest

from spawn.cred import ROOT
from tests.spawn.ninep_env import BIG, run, served

p9fs = pytest.importorskip("p9fs", reason="p9fs is not installed (pip install p9fs)")


@pytest.mark.parametrize("version", ["9P2000", "9P2000.u", "9P2000.L"])
def test_p9fs_session(tmp_path, version):
    async def body():
        async with served(tmp_path, tcp=True) as env:
            port = env.tcp_port

            def session() -> None:
                fs = p9fs.P9FileSystem("127.0.0.1", port, "tester", version=version,
                                       aname="spawn", skip_instance_cache=True)

                def names(path: str) -> set[str]:
                    return {n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)}

                assert names("") == {"big.bin", "dir", "hello.txt", "link", "many"}
                entries = {e["name"].rstrip("/"): e for e in fs.ls("dir", detail=True)}
                assert set(entries) == {"dir/a", "dir/b", "dir/sub"}
                assert entries["dir/a"]["type"] == "file" and entries["dir/a"]["size"] == 10
                assert entries["dir/sub"]["type"] == "directory"
                with fs.open("big.bin", "rb") as f:
                    assert f.read() == BIG
                payload = bytes(range(256)) * 500
                with fs.open("dir/new", "wb") as f:
                    f.write(payload)
                with fs.open("dir/new", "rb") as f:
                    assert f.read() == payload
                assert fs.info("dir/new")["size"] == len(payload)
                fs.mv("dir/new", "dir/moved")
                assert names("dir") == {"a", "b", "sub", "moved"}
                with fs.open("dir/moved", "rb") as f:
                    assert f.read() == payload
                fs.rm("dir/moved")
                assert names("dir") == {"a", "b", "sub"}
                fs.mkdir("made", create_parents=False)
                assert fs.isdir("made")
                fs.rmdir("made")
                assert "made" not in names("")

            await asyncio.to_thread(session)
            e = env.engine
            dino = e.lookup(ROOT, 1, b"dir").ino
            assert sorted(n for n, _ in e.readdir(ROOT, dino)) == [b"a", b"b", b"sub"]
            assert b"made" not in {n for n, _ in e.readdir(ROOT, 1)}

    run(body())


def test_p9fs_copies_a_tree_with_symlinks_whole_in_9p2000(tmp_path):
    """9P2000 has no symlinks: p9fs copying the whole tree used to stop at the link
    (a read of it was EINVAL); the link now reads as a file holding its target, so every
    entry comes out, and the files byte for byte."""
    async def body():
        async with served(tmp_path, tcp=True) as env:
            port = env.tcp_port
            out = tmp_path / "copy"

            def session() -> None:
                fs = p9fs.P9FileSystem("127.0.0.1", port, "tester", version="9P2000",
                                       aname="spawn", skip_instance_cache=True)
                for path in fs.find("/"):  # every file below the root, as a copy walks it
                    dest = out / path.lstrip("/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(fs.cat_file(path))

            await asyncio.to_thread(session)
            got = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
            assert "link" in got and "dir/sub/deep" in got and "many/f39" in got
            assert (out / "link").read_bytes() == b"hello.txt"
            assert (out / "big.bin").read_bytes() == BIG
            assert (out / "dir" / "sub" / "deep").read_bytes() == b"deep\n"
    run(body())
