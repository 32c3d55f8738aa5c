"""The privacy rules with real Linux users: a spawn belongs to its spawner; another user can
neither see, mount, save nor kill it, nor use a mount of it; root can; spawnmax holds."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grid.gridnode import Node, User, grid_mounts, make_user, new_node, skip_without_mounts

skip_without_mounts()

PROBE = (
    "import os, sys\n"
    "try:\n"
    "    print(sorted(os.listdir(sys.argv[1])))\n"
    "except OSError as e:\n"
    "    print('errno', e.errno)\n"
)


@pytest.fixture(scope="module")
def users() -> tuple[User, User]:
    return make_user("gridtest-alice"), make_user("gridtest-bob")


@pytest.fixture
def node(users: tuple[User, User]) -> Iterator[Node]:
    n = new_node()
    try:
        n.init()
        n.import_shared(n.write_tree({"hello": "hi\n"}), "proj")
        for u in users:
            n.grid("user", "add", u.name, "--uid", str(u.uid))
        n.start("--spawnmax", "2")
        yield n
    finally:
        n.close()


def _spawn(node: Node, user: User) -> str:
    return node.grid("spawn", "-q", "proj", user=user).stdout.strip()


def _mountpoint(user: User, name: str) -> Path:
    d = user.home / name
    d.mkdir(exist_ok=True)
    os.chown(d, user.uid, user.gid)
    return d


def _probe(user: User | None, path: Path) -> str:
    import subprocess
    import sys

    cmd = [sys.executable, "-c", PROBE, str(path)]
    if user is None:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    return user.run(*cmd, timeout=30).stdout.strip()


def test_other_users_cannot_see_mount_save_or_kill(node: Node, users: tuple[User, User]) -> None:
    alice, bob = users
    sid = _spawn(node, alice)
    mine = json.loads(node.grid("spawns", "--json", user=alice).stdout)
    assert [r["id"] for r in mine] == [sid] and mine[0]["owner"] == alice.name
    assert json.loads(node.grid("spawns", "--json", user=bob).stdout) == []
    assert [r["id"] for r in json.loads(node.grid("spawns", "--json").stdout)] == [sid]  # root

    m = _mountpoint(bob, "m")
    for args in (("mount", sid, str(m)), ("save", sid, "stolen"), ("kill", "--force", sid)):
        p = node.grid(*args, user=bob, check=False)
        assert p.returncode == 1 and f"no spawn '{sid}'" in p.stderr, (args, p.stderr)
    assert not grid_mounts(m)
    assert node.grid("name", "get", "stolen", check=False).returncode != 0
    assert [r["id"] for r in json.loads(node.grid("spawns", "--json", user=alice).stdout)] == [sid]

    # a mount process of bob's own cannot attach to it either (the daemon checks the uid)
    import sys

    p = bob.run(sys.executable, "-m", "spawn.fuse_main", "--connect",
                str(node.home / "run" / "grid.sock"), "--spawn", sid, str(m), timeout=30)
    assert p.returncode == 1 and "no spawn" in p.stderr
    assert not grid_mounts(m)

    # the owner and root can
    node.grid("save", sid, "alices", user=alice)
    assert json.loads(node.grid("name", "get", "alices", "--json").stdout)["user"] == alice.name
    node.grid("kill", "--force", sid)  # root


def test_a_users_mount_admits_the_owner_and_root_only(node: Node, users: tuple[User, User]) -> None:
    alice, bob = users
    sid = _spawn(node, alice)
    m = _mountpoint(alice, "m")
    node.grid("mount", sid, str(m), user=alice)
    os.chmod(alice.home, 0o755)  # bob could reach the mountpoint, were it not for the mount
    try:
        assert _probe(alice, m) == "['hello']"
        assert _probe(None, m) == "['hello']"  # root
        assert _probe(bob, m) == f"errno {errno.EACCES}"
        p = bob.run("cat", str(m / "hello"))
        assert p.returncode != 0 and "Permission denied" in p.stderr
        p = bob.run("touch", str(m / "bobs"))
        assert p.returncode != 0 and not (m / "bobs").exists()
    finally:
        node.grid("unmount", str(m), user=alice)


def test_roots_mount_of_a_users_spawn_admits_the_owner_not_others(node: Node, users: tuple[User, User]) -> None:
    alice, bob = users
    sid = _spawn(node, alice)
    m = node.base / "rootmount"
    m.mkdir()
    os.chmod(m, 0o755)
    node.grid("mount", sid, str(m))
    assert _probe(alice, m) == "['hello']"
    assert _probe(bob, m) == f"errno {errno.EACCES}"
    p = alice.run("sh", "-c", f"echo mine > {m}/new")
    assert p.returncode != 0 and "Permission denied" in p.stderr  # the tree's root is root's
    os.chown(m, alice.uid, alice.gid)  # root may, through the mount
    p = alice.run("sh", "-c", f"echo mine > {m}/new")
    assert p.returncode == 0, p.stderr
    assert os.stat(m / "new").st_uid == alice.uid  # files are made as the caller
    p = bob.run("cat", str(m / "new"))
    assert p.returncode != 0 and "Permission denied" in p.stderr


def test_spawnmax_is_per_user_with_a_clear_message(node: Node, users: tuple[User, User]) -> None:
    alice, bob = users
    a1, _a2 = _spawn(node, alice), _spawn(node, alice)
    p = node.grid("spawn", "proj", user=alice, check=False)
    assert p.returncode == 1
    assert "spawnmax 2" in p.stderr and "save or kill one" in p.stderr
    assert len(json.loads(node.grid("spawns", "--json", user=alice).stdout)) == 2
    _spawn(node, bob)  # bob's count is his own
    for _ in range(3):  # root is not limited
        node.grid("spawn", "-q", "proj")
    node.grid("kill", "--force", a1, user=alice)
    _spawn(node, alice)  # room again


def _as_member(user: User, *cmd: str) -> str:
    """Run *cmd* as *user* with its supplementary groups (User.run clears them)."""
    import subprocess

    p = subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
                        "env", f"HOME={user.home}", *cmd], capture_output=True, text=True, timeout=30)
    return p.stdout.strip()


def test_share_admits_a_user_or_a_group_and_grants_nothing_more(node: Node, users: tuple[User, User]) -> None:
    import subprocess
    import sys

    alice, bob = users
    carol = make_user("gridtest-carol")
    subprocess.run(["groupadd", "-f", "gridtest-share"], check=True)
    subprocess.run(["usermod", "-a", "-G", "gridtest-share", carol.name], check=True)
    sid = _spawn(node, alice)
    m = _mountpoint(alice, "m")
    node.grid("mount", sid, str(m), user=alice)
    os.chmod(alice.home, 0o755)
    sock = str(node.home / "run" / "9p.sock")
    try:
        assert _probe(bob, m) == f"errno {errno.EACCES}"
        p = node.grid("share", sid, bob.name, user=bob, check=False)  # not his to share
        assert p.returncode == 1 and f"no spawn '{sid}'" in p.stderr
        assert node.grid("9p", sock, "-a", sid, "ls", "/", user=bob, check=False).returncode != 0

        node.grid("share", sid, bob.name, user=alice)
        assert _probe(bob, m) == "['hello']"
        assert [r["id"] for r in json.loads(node.grid("spawns", "--json", user=bob).stdout)] == [sid]
        assert node.grid("9p", sock, "-a", sid, "cat", "/hello", user=bob).stdout == "hi\n"
        # inside, the files decide: hello is root's 0644, so bob reads it and cannot write it
        assert bob.run("cat", str(m / "hello")).stdout == "hi\n"
        p = bob.run("sh", "-c", f"echo x >> {m}/hello")
        assert p.returncode != 0 and "Permission denied" in p.stderr
        p = node.grid("9p", sock, "-a", sid, "write", "/hello", user=bob, input="x\n", check=False)
        assert p.returncode != 0 and "Permission denied" in p.stderr
        # sharing admits and grants nothing else: no save, kill or sharing onwards
        for args in (("save", sid, "bobs"), ("kill", "--force", sid), ("share", sid, carol.name)):
            p = node.grid(*args, user=bob, check=False)
            assert p.returncode == 1 and "only its owner or root" in p.stderr, (args, p.stderr)

        # a group: members are let in through their supplementary groups
        probe = (sys.executable, "-c", PROBE, str(m))
        assert _as_member(carol, *probe) == f"errno {errno.EACCES}"
        node.grid("share", sid, "@gridtest-share", user=alice)
        assert _as_member(carol, *probe) == "['hello']"
        assert _probe(carol, m) == f"errno {errno.EACCES}"  # the same user without the group

        node.grid("unshare", sid, bob.name, user=alice)
        node.grid("unshare", sid, "@gridtest-share", user=alice)
        assert _probe(bob, m) == f"errno {errno.EACCES}"
        assert _as_member(carol, *probe) == f"errno {errno.EACCES}"
        assert json.loads(node.grid("spawns", "--json", user=bob).stdout) == []
        p = node.grid("share", sid, "@no-such-group-here", user=alice, check=False)
        assert p.returncode == 1 and "no group" in p.stderr
    finally:
        node.grid("unmount", str(m), user=alice)
