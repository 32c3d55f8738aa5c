"""Who may do what, per exporter: each permission rule of issue 14 by each way into a spawn,
with real users, against one daemon (docs/daemon.md, "Permissions: who may do what, per
exporter", is this table).

One node; a spawn of root's, mounted by root with FUSE, shared with alice and bob
(`grid share`), not with carol. Each cell gets a fresh directory made by root through the
mount, then one operation runs as its actor in a forked child that has become that user
(tests/posix/harness.in_child): os calls on the mount (FUSE); spawn.ninep.client over
HOME/run/9p.sock in 9P2000, 9P2000.u and 9P2000.L; asyncssh's SFTP client with the user's
key; a raw daemon session (grid.sock `attach`, then engine operations). The answer is "ok",
an errno name, or for SFTP the status code's name; what a rule also changes (a mode, a group)
is read back afterwards through a raw session as root. A cell a protocol cannot express (a
block device in 9P2000, "now" in a 9P2000 wstat or an SFTP setstat) is not run, and the
table says why.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from grid.daemon.client import DaemonClient
from spawn.access import NOW
from spawn.ninep import messages as m9
from spawn.ninep.client import Client, blank_stat
from tests.grid.gridnode import Node, User, free_port, make_user, new_node, skip_without_mounts
from tests.posix.harness import Cred, in_child
from tests.posix.ninep_exec import Steps

skip_without_mounts()
asyncssh = pytest.importorskip("asyncssh")

EXPORTERS = ("fuse", "9p2000", "9p2000.u", "9p2000.L", "sftp", "raw")
T1 = 1_000_000_000  # an explicit time, long ago


@dataclass(frozen=True)
class Rule:
    """A scene (``("f", path, mode, owner)`` files and ``("d", ...)`` directories, made by
    root), one operation by *actor*, Linux's answer, the exporters' own answers where they
    differ (None: the protocol cannot say it, with the reason in *why*), and what the file
    must look like afterwards (path, "mode" or "gid", value)."""

    name: str
    text: str
    setup: tuple[tuple[Any, ...], ...]
    actor: str
    op: str
    args: tuple[Any, ...]
    linux: str
    per: dict[str, str | None] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    after: tuple[str, str, Any] | None = None

    def expect(self, exporter: str) -> str | None:
        return self.per.get(exporter, self.linux)


# asyncssh's server turns EACCES into FX_PERMISSION_DENIED and EPERM into FX_FAILURE with
# strerror's text (OpenSSH's sftp-server makes both FX_PERMISSION_DENIED)
DENIED = "FX_PERMISSION_DENIED"
FX_EPERM = "FX_FAILURE (Operation not permitted)"
NO_DEV = {"9p2000": None, "sftp": None}
NO_NOW = {"9p2000": None, "9p2000.u": None, "sftp": None}

RULES = [
    Rule("read_0600", "read another user's 0600 file", (("f", "f", 0o600, "bob"),),
         "alice", "read", ("f",), "EACCES", {"sftp": DENIED}),
    Rule("create_no_w", "create in a directory without w", (("d", "d", 0o755, "bob"),),
         "alice", "create", ("d/new",), "EACCES", {"sftp": DENIED}),
    Rule("sticky_unlink", "unlink another's file in a sticky directory",
         (("d", "t", 0o1777, "root"), ("f", "t/f", 0o666, "bob")),
         "alice", "unlink", ("t/f",), "EPERM", {"sftp": FX_EPERM}),
    Rule("chmod_other", "chmod another's file (even writable)", (("f", "f", 0o666, "bob"),),
         "alice", "chmod", ("f", 0o777), "EPERM", {"sftp": FX_EPERM}),
    Rule("chown_give", "chown one's file to another uid", (("f", "f", 0o644, "alice"),),
         "alice", "chown", ("f", "bob"), "EPERM", {"sftp": FX_EPERM}),
    Rule("chgrp_foreign", "chgrp one's file to a group not one's own",
         (("f", "f", 0o644, "alice"),), "alice", "chgrp", ("f", "root"), "EPERM",
         {"sftp": FX_EPERM}),
    Rule("mknod_blk", "mknod a block device", (("d", "d", 0o777, "root"),),
         "alice", "mknod_blk", ("d/b",), "EPERM", {**NO_DEV, "9p2000": None},
         {"9p2000": "no device files in 9P2000 (DMDEVICE is .u)",
          "sftp": "SFTP has no mknod"}),
    Rule("mkfifo", "mkfifo", (("d", "d", 0o777, "root"),), "alice", "mkfifo", ("d/p",), "ok",
         NO_DEV, {"9p2000": "no named pipes in 9P2000 (DMNAMEDPIPE is .u)",
                  "sftp": "SFTP has no mknod"}, ("d/p", "mode", stat.S_IFIFO | 0o644)),
    Rule("write_kills_suid", "write to another's setuid file clears setuid",
         (("f", "f", 0o4777, "bob"),), "alice", "write", ("f",), "ok",
         after=("f", "mode", stat.S_IFREG | 0o777)),
    Rule("setgid_dir_group", "create in a setgid directory takes its group",
         (("d", "d", 0o2777, "bob"),), "alice", "create", ("d/f",), "ok",
         after=("d/f", "gid", "bob")),
    Rule("utimes_now", "utimes now on another's writable file", (("f", "f", 0o666, "bob"),),
         "alice", "utimes_now", ("f",), "ok", NO_NOW,
         {"9p2000": "a wstat carries explicit times only (Linux's .u client sends its clock)",
          "9p2000.u": "as 9P2000", "sftp": "setstat carries explicit times only"}),
    Rule("utimes_explicit", "utimes explicit on another's writable file",
         (("f", "f", 0o666, "bob"),), "alice", "utimes", ("f", T1), "EPERM", {"sftp": FX_EPERM}),
    Rule("not_shared", "a user the spawn is not shared with attaches or looks",
         (), "carol", "look", (), "ENOENT",
         {"fuse": "EACCES", "sftp": "FX_NO_SUCH_FILE"}),
]


# -- the node ---------------------------------------------------------------------------------


@dataclass
class Env:
    node: Node
    users: dict[str, User]
    sid: str
    mount: Path
    ssh_port: int
    keys: Path

    @property
    def sock9p(self) -> str:
        return os.fspath(self.node.home / "run" / "9p.sock")

    @property
    def grid_sock(self) -> str:
        return os.fspath(self.node.home / "run" / "grid.sock")

    def uid(self, who: str) -> int:
        return 0 if who == "root" else self.users[who].uid

    def gid(self, who: str) -> int:
        return 0 if who == "root" else self.users[who].gid

    def cred(self, who: str) -> Cred:
        u = self.users[who]
        return Cred(u.uid, u.gid, tuple(os.getgrouplist(u.name, u.gid)))


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    users = {k: make_user(f"gridtest-{k}") for k in ("alice", "bob", "carol")}
    n = new_node()
    try:
        n.init()
        src = n.base / "src"
        src.mkdir()
        os.chmod(src, 0o755)
        (src / "README").write_text("the access matrix runs beside this file\n")
        n.grid("import", str(src), "matrix")
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        for k, u in users.items():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", k, "-f",
                            str(keys / k)], check=True, capture_output=True)
            n.grid("user", "add", u.name, "--uid", str(u.uid), "--ssh-key", str(keys / f"{k}.pub"))
        port = free_port()
        n.start("--ssh", f"127.0.0.1:{port}")
        m = n.base / "m"
        m.mkdir()
        sid = n.grid("spawn", "-q", "matrix", "--mount", str(m)).stdout.strip()
        for k in ("alice", "bob"):
            n.grid("share", sid, users[k].name)
        os.chmod(m, 0o755)
        yield Env(n, users, sid, m, port, keys)
    finally:
        n.close()


# -- the exporters, each in the child that has become the actor -------------------------------


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, f"errno {e.errno}: {e}")


def fuse_cell(e: Env, rule: Rule, base: str) -> Callable[[], Any]:
    def p(rel: str) -> Path:
        return e.mount / base / rel

    def work() -> Any:
        op, a = rule.op, rule.args
        if op == "read":
            return p(a[0]).read_bytes().decode()
        if op == "create":
            os.close(os.open(p(a[0]), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        elif op == "unlink":
            os.unlink(p(a[0]))
        elif op == "chmod":
            os.chmod(p(a[0]), a[1])
        elif op == "chown":
            os.chown(p(a[0]), e.uid(a[1]), -1)
        elif op == "chgrp":
            os.chown(p(a[0]), -1, e.gid(a[1]))
        elif op == "mknod_blk":
            os.mknod(p(a[0]), stat.S_IFBLK | 0o644, os.makedev(8, 0))
        elif op == "mkfifo":
            os.mkfifo(p(a[0]), 0o644)
        elif op == "write":
            fd = os.open(p(a[0]), os.O_WRONLY)
            try:
                return os.write(fd, b"x")
            finally:
                os.close(fd)
        elif op == "utimes_now":
            os.utime(p(a[0]))
        elif op == "utimes":
            os.utime(p(a[0]), (a[1], a[1]))
        elif op == "look":
            os.listdir(e.mount)
        return None
    return work


def _path(base: str, rel: str) -> list[bytes]:
    return [os.fsencode(n) for n in f"{base}/{rel}".split("/") if n]


async def _ninep_classic(e: Env, rule: Rule, base: str, version: bytes, cred: Cred) -> Any:
    """9P2000 and 9P2000.u: Topen, Tcreate (.u: DMDEVICE, DMNAMEDPIPE), Tremove, Twstat."""
    c = await Client.connect_unix(e.sock9p)
    try:
        await c.version(version)
        root = c.fid()
        await c.attach(root, os.fsencode(e.users[rule.actor].name), e.sid.encode())
        if rule.op == "look":
            return None
        op, a = rule.op, rule.args
        f = c.fid()
        names = _path(base, a[0])
        if op in ("create", "mknod_blk", "mkfifo"):
            await c.walk(root, f, names[:-1])
            perm, ext = {"create": (0o644, b""),
                         "mknod_blk": (m9.DMDEVICE | 0o644, b"b 8 0"),
                         "mkfifo": (m9.DMNAMEDPIPE | 0o644, b"")}[op]
            await c.create(f, names[-1], perm, m9.OWRITE if op == "create" else m9.OREAD, ext)
            return None
        await c.walk(root, f, names)
        if op == "read":
            await c.open(f, m9.OREAD)
            return (await c.read(f, 0, 100)).decode()
        if op == "write":
            await c.open(f, m9.OWRITE)
            return await c.write(f, 0, b"x")
        if op == "unlink":
            await c.remove(f)
            return None
        if op == "chmod":
            await c.wstat(f, blank_stat(mode=a[1]))
        elif op == "chown":
            await c.wstat(f, blank_stat(uid=b"%d" % e.uid(a[1])))
        elif op == "chgrp":
            await c.wstat(f, blank_stat(gid=b"%d" % e.gid(a[1])))
        elif op == "utimes":
            await c.wstat(f, blank_stat(atime=a[1], mtime=a[1]))
        else:
            raise AssertionError(f"{op} is not a 9P2000 operation here")
        return None
    finally:
        await c.close()


async def _ninep_linux(e: Env, rule: Rule, base: str, cred: Cred) -> Any:
    """9P2000.L: the tests/posix executor's steps (Tlcreate, Tmknod, Tunlinkat, Tsetattr...)."""
    c = await Client.connect_unix(e.sock9p)
    try:
        await c.version(b"9P2000.L")
        top = c.fid()
        await c.attach(top, b"", e.sid.encode(), n_uname=cred.uid)
        if rule.op == "look":
            return None
        case = c.fid()
        await c.walk(top, case, _path(base, ""))
        s = Steps(c, top, case, cred, 0)
        op, a = rule.op, rule.args
        if op == "create":
            return await s.op_create(a[0], 0o644)
        if op == "chown":
            return await s.op_chown(a[0], e.uid(a[1]), -1)
        if op == "chgrp":
            return await s.op_chown(a[0], -1, e.gid(a[1]))
        if op == "mknod_blk":
            return await s.op_mknod(a[0], "blk", 0o644, 8, 0)
        if op == "mkfifo":
            return await s.op_mkfifo(a[0], 0o644)
        if op == "write":
            return await s.op_write(a[0], "x")
        if op == "utimes_now":
            return await s.op_utimes(a[0])
        if op == "utimes":
            return await s.op_utimes(a[0], a[1], a[1])
        return await getattr(s, "op_" + op)(*a)
    finally:
        await c.close()


_FX = {getattr(asyncssh, n): n for n in dir(asyncssh)
       if n.startswith("FX_") and not n.endswith("_END") and n not in ("FX_OK", "FX_EOF")}


async def _sftp(e: Env, rule: Rule, base: str, key: Any) -> Any:
    who = rule.actor
    async with asyncssh.connect("127.0.0.1", e.ssh_port, username=e.users[who].name,
                                client_keys=[key], known_hosts=None,
                                agent_path=None, config=None) as conn, \
            conn.start_sftp_client() as sftp:
            if rule.op == "look":
                await sftp.stat(f"/{e.sid}")
                return None
            op, a = rule.op, rule.args
            path = f"/{e.sid}/{base}/{a[0]}"
            if op == "read":
                async with sftp.open(path, "rb") as f:
                    return (await f.read(100)).decode()
            if op == "create":
                async with sftp.open(path, "xb"):
                    return None
            if op == "write":
                async with sftp.open(path, "r+b") as f:
                    return await f.write(b"x")
            if op == "unlink":
                await sftp.remove(path)
            elif op == "chmod":
                await sftp.chmod(path, a[1])
            elif op == "chown":
                await sftp.chown(path, e.uid(a[1]), e.gid(who))
            elif op == "chgrp":
                await sftp.chown(path, e.uid(who), e.gid(a[1]))
            elif op == "utimes":
                await sftp.utime(path, (a[1], a[1]))
            else:
                raise AssertionError(f"{op} is not an SFTP operation here")
            return None


def sftp_cell(e: Env, rule: Rule, base: str) -> Callable[[], Any]:
    key = asyncssh.read_private_key(e.keys / rule.actor)  # root's directory: read it here

    def work() -> Any:
        os.environ["HOME"] = str(e.users[rule.actor].home)  # asyncssh looks in ~/.ssh
        try:
            return asyncio.run(_sftp(e, rule, base, key))
        except asyncssh.SFTPError as x:
            name = _FX.get(x.code, f"FX code {x.code}")
            if x.code == asyncssh.FX_FAILURE:  # the text says which failure
                name += f" ({x.reason.split(':')[0]})"
            return {"sftp": name}
    return work


class Raw:
    """A raw daemon session on the spawn: engine operations by name, paths by lookups."""

    def __init__(self, sock: str, sid: str) -> None:
        self.c = DaemonClient(sock, timeout=30)
        self.c.call("attach", sid)

    def close(self) -> None:
        self.c.close()

    def ino(self, path: str) -> int:
        ino = 1
        for n in _path(path, ""):
            ino = self.c.call("lookup", ino, n).ino
        return ino

    def parent(self, path: str) -> tuple[int, bytes]:
        head, _, name = path.rpartition("/")
        return self.ino(head), os.fsencode(name)

    def getattr(self, path: str) -> Any:
        return self.c.call("getattr", self.ino(path))


def raw_cell(e: Env, rule: Rule, base: str) -> Callable[[], Any]:
    def work() -> Any:
        r = Raw(e.grid_sock, e.sid)
        try:
            op, a = rule.op, rule.args
            if op == "look":
                return None
            path = f"{base}/{a[0]}"
            c = r.c
            if op == "read":
                ino = r.ino(path)
                c.call("open", ino, os.O_RDONLY)
                try:
                    return c.call("read", ino, 0, 100).decode()
                finally:
                    c.call("release", ino)
            if op == "write":
                ino = r.ino(path)
                c.call("open", ino, os.O_WRONLY)
                try:
                    return c.call("write", ino, 0, b"x")
                finally:
                    c.call("release", ino)
            if op == "create":
                parent, name = r.parent(path)
                c.call("release", c.call("create", parent, name, 0o644, open=True).ino)
            elif op == "unlink":
                c.call("unlink", *r.parent(path))
            elif op in ("mknod_blk", "mkfifo"):
                parent, name = r.parent(path)
                mode, dev = ((stat.S_IFBLK, os.makedev(8, 0)) if op == "mknod_blk"
                             else (stat.S_IFIFO, 0))
                c.call("mknod", parent, name, mode | 0o644, dev)
            elif op == "chmod":
                c.call("setattr", r.ino(path), mode=a[1])
            elif op == "chown":
                c.call("setattr", r.ino(path), uid=e.uid(a[1]))
            elif op == "chgrp":
                c.call("setattr", r.ino(path), gid=e.gid(a[1]))
            elif op == "utimes_now":
                c.call("setattr", r.ino(path), atime_ns=NOW, mtime_ns=NOW)
            elif op == "utimes":
                c.call("setattr", r.ino(path), atime_ns=a[1] * 10**9, mtime_ns=a[1] * 10**9)
            return None
        finally:
            r.close()
    return work


def cell_work(e: Env, rule: Rule, exporter: str, base: str) -> Callable[[], Any]:
    cred = e.cred(rule.actor)
    if exporter == "fuse":
        return fuse_cell(e, rule, base)
    if exporter in ("9p2000", "9p2000.u"):
        version = b"9P2000" if exporter == "9p2000" else b"9P2000.u"
        return lambda: asyncio.run(_ninep_classic(e, rule, base, version, cred))
    if exporter == "9p2000.L":
        return lambda: asyncio.run(_ninep_linux(e, rule, base, cred))
    if exporter == "sftp":
        return sftp_cell(e, rule, base)
    return raw_cell(e, rule, base)


# -- the matrix -------------------------------------------------------------------------------


def _setup(e: Env, base: str, rule: Rule) -> None:
    """The scene, as root through the FUSE mount."""
    d = e.mount / base
    d.mkdir()
    os.chmod(d, 0o755)
    for kind, rel, mode, owner in rule.setup:
        p = d / rel
        if kind == "d":
            p.mkdir()
        else:
            p.write_bytes(b"")
        os.chown(p, e.uid(owner), e.gid(owner))
        os.chmod(p, mode)


def _answer(raw: str) -> str:
    """in_child's answer as the table writes it: ok (whatever value), an errno name, or an
    SFTP status; a crash or a hang as it is."""
    if raw.startswith("{") and '"sftp"' in raw:
        return str(json.loads(raw)["sftp"])
    if raw in errno.errorcode.values() or raw.startswith(("CRASH", "TIMEOUT")):
        return raw
    return "ok"


CELLS = [pytest.param(r, x, id=f"{r.name}-{x}") for r in RULES for x in EXPORTERS]


@pytest.mark.parametrize(("rule", "exporter"), CELLS)
def test_cell(env: Env, rule: Rule, exporter: str) -> None:
    want = rule.expect(exporter)
    if want is None:
        pytest.skip(f"not expressible: {rule.why.get(exporter, '')}")
    base = f"{rule.name}.{exporter}"
    _setup(env, base, rule)
    got = _answer(in_child(env.cred(rule.actor), 0, cell_work(env, rule, exporter, base)))
    assert got == want, f"{rule.text} over {exporter}: expected {want}, got {got}"
    if rule.after is not None and want == "ok":
        rel, what, value = rule.after
        r = Raw(env.grid_sock, env.sid)
        try:
            a = r.getattr(f"{base}/{rel}")
        finally:
            r.close()
        if what == "gid":
            assert a.gid == env.gid(value), (rule.text, exporter, a)
        else:
            assert a.mode == value, (rule.text, exporter, oct(a.mode))
