"""Names have owners, with real Linux users and the real daemon: a private name is absent for
everyone else from every listing (CLI, 9P `names`, SSH), its history, spawn and raw root are
refused, nobody else saves over it; chmod, chown, share and unshare open it as asked; root
sees everything. Also: spawnmax is exact under 40 concurrent requests, and the daemon's log
is 0600."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.grid.gridnode import ROOT, Node, User, free_port, make_user, new_node

if os.geteuid() != 0:
    pytest.skip("runs as root (real users, setpriv)", allow_module_level=True)


@dataclass
class Env:
    node: Node
    alice: User
    bob: User
    carol: User
    ssh_port: int

    @property
    def names_file(self) -> Path:
        return self.node.home / "ndb" / "names"

    def grid(self, user: User | None, *args: str, check: bool = True):
        return self.node.grid(*args, user=user, check=check)

    def names(self, user: User | None) -> dict[str, dict]:
        return {r["name"]: r for r in json.loads(self.grid(user, "names", "--json").stdout)}

    def spawn(self, user: User | None, ref: str) -> str:
        return self.grid(user, "spawn", "-q", ref).stdout.strip()

    def refused(self, user: User | None, *args: str) -> str:
        """Run a command that must fail, and change nothing in the names file."""
        before = self.names_file.read_bytes()
        p = self.grid(user, *args, check=False)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert p.stderr.startswith("grid: ") and "Traceback" not in p.stderr, p.stderr
        assert self.names_file.read_bytes() == before, args
        return p.stderr

    def ssh(self, user: User, command: str) -> subprocess.CompletedProcess[str]:
        key = self.node.base / "keys" / user.name
        return subprocess.run(
            ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-o", f"IdentityFile={key}", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             "-p", str(self.ssh_port), f"{user.name}@127.0.0.1", command],
            capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    alice, bob, carol = (make_user(f"gridtest-{n}") for n in ("alice", "bob", "carol"))
    n = new_node()
    try:
        n.init()
        n.import_shared(n.write_tree({"hello": "hi\n"}), "proj")  # a base everyone may spawn
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        ssh = shutil.which("ssh") is not None
        for u, groups in ((alice, ["staff"]), (bob, ["dev"]), (carol, ["staff"])):
            opts = [a for g in groups for a in ("--group", g)]
            if ssh:
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                                str(keys / u.name)], check=True, capture_output=True)
                opts += ["--ssh-key", str(keys / f"{u.name}.pub")]
            n.grid("user", "add", u.name, "--uid", str(u.uid), *opts)
        port = free_port()
        n.start("--spawnmax", "16", *(("--ssh", f"127.0.0.1:{port}") if ssh else ()))
        yield Env(n, alice, bob, carol, port if ssh else 0)
    finally:
        n.close()


def _private(env: Env, name: str) -> str:
    """*name*, saved by alice from a spawn of proj: hers, private. Returns its score."""
    sid = env.spawn(env.alice, "proj")
    env.grid(env.alice, "save", sid, name)
    env.grid(env.alice, "kill", "--force", sid)
    r = env.names(env.alice)[name]
    assert (r["owner"], r["mode"], r["group"], r["acl"]) == (env.alice.name, "0600", None, [])
    return r["score"]


NINEP = textwrap.dedent('''
    import asyncio, os, sys
    from spawn.ninep.client import Client

    async def main(sock):
        c = await Client.connect_unix(sock)
        await c.version(b"9P2000.L")
        await c.attach(0, b"", b"", n_uname=os.getuid())
        fid = await c.walk_open(0, b"names", os.O_RDONLY)
        sys.stdout.write((await c.read_all(fid)).decode())
        await c.close()

    asyncio.run(main(sys.argv[1]))
''')


def _ninep_names(env: Env, user: User) -> list[str]:
    p = subprocess.run([*user.prefix(), sys.executable, "-c", NINEP,
                        str(env.node.home / "run" / "9p.sock")], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd="/")
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_a_private_name_is_nowhere_for_others(env: Env) -> None:
    alice, bob = env.alice, env.bob
    score = _private(env, "amine")
    assert "amine" not in env.names(bob) and "proj" in env.names(bob)
    assert "no such name" in env.refused(bob, "name", "get", "amine")
    assert "no such name" in env.refused(bob, "history", "amine")
    assert "no such name" in env.refused(bob, "spawn", "amine")
    assert "no such name" in env.refused(bob, "spawn", f"amine@{score}")
    err = env.refused(bob, "spawn", score)
    assert "permission denied" in err and "not a root of a name you may read" in err
    assert "no name 'amine'" in env.refused(bob, "name", "chmod", "0644", "amine")
    assert "no name 'amine'" in env.refused(bob, "name", "share", "amine", bob.name)
    assert "no name 'amine'" in env.refused(bob, "name", "rm", "amine")
    err = env.refused(bob, "name", "set", "amine", score)
    assert "not a root of a name you may read" in err
    # bob may not save over it (refused before anything is written), nor take it by set
    sid = env.spawn(bob, "proj")
    err = env.refused(bob, "save", sid, "amine")
    assert "permission denied: name 'amine' is someone else's" in err
    env.grid(bob, "save", sid, "bobs")  # a name of his own is fine
    env.grid(bob, "kill", "--force", sid)
    assert env.names(bob)["bobs"]["owner"] == bob.name
    assert "amine" not in _ninep_names(env, bob) and "bobs" in _ninep_names(env, bob)
    assert "amine" in _ninep_names(env, alice) and "bobs" not in _ninep_names(env, alice)
    if env.ssh_port:
        p = env.ssh(bob, "grid names")
        assert p.returncode == 0 and "amine" not in p.stdout and "proj" in p.stdout, p.stderr
        p = env.ssh(bob, "grid history amine")
        assert p.returncode == 1 and "no such name" in p.stderr
        p = env.ssh(bob, "grid spawn amine")
        assert p.returncode == 1 and "no such name" in p.stderr
        p = env.ssh(alice, "grid names")
        assert "amine" in p.stdout and "bobs" not in p.stdout
    # the owner and root see and use it
    assert len(json.loads(env.grid(alice, "history", "amine", "--json").stdout)) == 1
    everything = env.names(None)
    assert {"amine", "bobs", "proj"} <= everything.keys()
    env.grid(None, "kill", "--force", env.spawn(None, score))  # root spawns any root
    sid = env.spawn(alice, score)  # alice: a root of her name
    env.grid(alice, "kill", "--force", sid)


def test_share_chmod_chown(env: Env) -> None:
    alice, bob, carol = env.alice, env.bob, env.carol
    score = _private(env, "shared")
    out = env.grid(alice, "name", "share", "shared", bob.name).stdout
    assert f"acl=u:{bob.name}:r" in out
    assert env.names(bob)["shared"]["acl"] == [f"u:{bob.name}:r"]
    sid = env.spawn(bob, "shared")
    err = env.refused(bob, "save", sid, "shared")  # read, not write
    assert f"is {alice.name}'s (mode 0600)" in err
    env.grid(alice, "name", "share", "shared", bob.name, "--write")
    env.grid(bob, "save", sid, "shared")
    env.grid(bob, "kill", "--force", sid)
    latest = env.names(alice)["shared"]
    assert latest["user"] == bob.name and latest["owner"] == alice.name  # bob wrote, alice owns
    assert latest["score"] != score or latest["prev"] == score
    assert len(json.loads(env.grid(bob, "history", "shared", "--json").stdout)) == 4
    env.grid(alice, "name", "unshare", "shared", bob.name)
    assert "shared" not in env.names(bob)
    assert "not shared with" in env.refused(alice, "name", "unshare", "shared", bob.name)

    # the group: carol is in staff, bob is not
    assert "shared" not in env.names(carol)
    env.grid(alice, "name", "chown", ":staff", "shared")
    env.grid(alice, "name", "chmod", "g+r", "shared")
    assert env.names(carol)["shared"]["mode"] == "0640"
    env.grid(carol, "kill", "--force", env.spawn(carol, "shared"))
    assert "shared" not in env.names(bob)
    assert "not in group 'dev'" in env.refused(alice, "name", "chown", ":dev", "shared")
    env.grid(alice, "name", "share", "shared", "@dev")
    assert "shared" in env.names(bob)
    env.grid(alice, "name", "unshare", "shared", "@dev")
    env.grid(alice, "name", "chmod", "o+r", "shared")  # others
    assert "shared" in env.names(bob)
    assert "only the owner" in env.refused(bob, "name", "chmod", "0666", "shared")
    assert "bad mode" in env.refused(alice, "name", "chmod", "u+s", "shared")

    # chown to another user: root only, as in Unix
    assert "only root may give" in env.refused(alice, "name", "chown", bob.name, "shared")
    env.grid(None, "name", "chown", bob.name, "shared")
    r = env.names(None)["shared"]
    assert (r["owner"], r["group"], r["mode"]) == (bob.name, "staff", "0644")
    env.grid(bob, "name", "chmod", "0600", "shared")  # bob's now
    assert "shared" not in env.names(alice)
    assert "unknown user 'nosuchuser'" in env.refused(None, "name", "chown", "nosuchuser", "shared")
    assert "no name 'shared'" in env.refused(alice, "name", "chown", ":staff", "shared")


def test_spawnmax_is_exact_under_40_concurrent_requests(env: Env) -> None:
    dave = make_user("gridtest-dave")
    env.grid(None, "user", "add", dave.name, "--uid", str(dave.uid))
    script = textwrap.dedent('''
        import json, sys, threading
        from grid.daemon.client import DaemonClient, DaemonError
        results = []
        barrier = threading.Barrier(40)
        def one():
            with DaemonClient(sys.argv[1], timeout=120) as c:
                barrier.wait()
                try:
                    results.append(c.call("spawn", "proj")["id"])
                except DaemonError as e:
                    results.append(e.errno)
        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(json.dumps(results))
    ''')
    p = subprocess.run([*dave.prefix(), sys.executable, "-c", script,
                        str(env.node.home / "run" / "grid.sock")], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       cwd="/")
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    import errno

    made = [r for r in results if isinstance(r, str)]
    assert len(made) == 16 and results.count(errno.EDQUOT) == 24, results
    spawns = json.loads(env.grid(dave, "spawns", "--json").stdout)
    assert sorted(s["id"] for s in spawns) == sorted(made)
    for sid in made:
        env.grid(None, "kill", "--force", sid)


def test_the_daemon_log_is_0600() -> None:
    n = new_node()
    try:
        n.init()
        run = n.home / "run"
        run.mkdir(mode=0o711, exist_ok=True)
        log = run / "daemon.log"
        log.write_text("an old log\n")
        os.chmod(log, 0o644)  # from an older grid
        n.grid("spawns", autostart=True)
        assert (log.stat().st_mode & 0o777) == 0o600
        assert "an old log" in log.read_text()  # appended to, not replaced
    finally:
        n.close()
