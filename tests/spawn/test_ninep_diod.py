"""Interoperability with diod's 9P2000.L client tools (Debian's diod package, which
scripts/setup.sh installs): diodls lists (with -l it walks from the directory fid it has
open and getattrs each entry), diodcat reads whole files with its own msize, and both
treat our Tauth error as "no authentication needed". The tools connect over TCP."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.spawn.ninep_env import BIG, eventually, run, served

if not (shutil.which("diodls") and shutil.which("diodcat")):
    pytest.skip("diod's client tools are not installed", allow_module_level=True)


async def tool(*args: str) -> tuple[int, bytes, bytes]:
    p = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode or 0, out, err


def test_diodls_and_diodcat(tmp_path):
    async def body():
        async with served(tmp_path, tcp=True) as env:
            server = f"127.0.0.1:{env.tcp_port}"
            rc, out, err = await tool("diodls", "-s", server, "-a", "spawn", "dir")
            assert rc == 0, err
            assert out.split() == [b"a", b"b", b"sub"]
            rc, out, err = await tool("diodls", "-s", server, "-a", "spawn", "-l", "/")
            assert rc == 0 and err == b"", err
            lines = {line.split()[-1]: line for line in out.splitlines()}
            assert set(lines) >= {b".", b"..", b"big.bin", b"dir", b"hello.txt", b"link"}
            assert lines[b"big.bin"].split()[4] == str(len(BIG)).encode()
            assert lines[b"dir"].startswith(b"d")
            for msize in ("8192", "65536", "1048576"):
                rc, out, err = await tool("diodcat", "-s", server, "-a", "spawn", "-m", msize,
                                          "big.bin", "hello.txt")
                assert rc == 0, err
                assert out == BIG + b"hello, world\n"
            rc, out, err = await tool("diodcat", "-s", server, "-a", "nosuch", "hello.txt")
            assert rc != 0 and b"No such file or directory" in err
            rc, out, err = await tool("diodcat", "-s", server, "-a", "forbidden", "hello.txt")
            assert rc != 0 and b"ermission denied" in err
            assert [a[2] for a in env.attaches][:1] == [os.geteuid()]  # n_uname: the euid
            await eventually(lambda: sum(env.engine._open.values()) == 0)
            await eventually(lambda: env.live_fids() == 0)

    run(body())
