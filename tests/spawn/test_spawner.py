"""The spawner: O(1) spawns, owners, the per-user limit, save, kill, restart."""

from __future__ import annotations

import os

import pytest

from spawn.archive import Archive
from spawn.cred import ROOT
from spawn.importer import Importer
from spawn.spawner import Spawner, SpawnLimit, SpawnNotFound
from store.local import LocalStore
from store.memory import MemoryStore


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f").write_bytes(os.urandom(200_000))
    (src / "d" / "g").write_bytes(b"g")
    return src


def test_spawn_reads_only_the_root(tree, tmp_path):
    store = MemoryStore()
    root = Importer(store).run(tree)
    sp = Spawner(store, tmp_path / "spawns")
    before = store.statistics().gets
    info = sp.spawn("t", root, owner="alice", uid=1000)
    assert store.statistics().gets - before == 1
    assert info.id == "1" and info.owner == "alice" and info.root.startswith("blake3:")
    e = sp.engine(info.id)
    assert sorted(n for n, _ in e.readdir(ROOT, 1)) == [b"d", b"f"]


def test_owners_see_only_their_spawns(tree, tmp_path):
    store = MemoryStore()
    root = Importer(store).run(tree)
    sp = Spawner(store, tmp_path / "spawns")
    a = sp.spawn("t", root, owner="alice", uid=1000)
    b = sp.spawn("t", root, owner="bob", uid=1001)
    assert [i.id for i in sp.list(1000)] == [a.id]
    assert [i.id for i in sp.list(0)] == [a.id, b.id]
    with pytest.raises(SpawnNotFound):
        sp.get(b.id, uid=1000)
    assert sp.get(b.id, uid=0).owner == "bob"
    for bad in ("../1", "x", "", "1/../2"):
        with pytest.raises(SpawnNotFound):
            sp.get(bad)


def test_limit_per_user(tree, tmp_path):
    store = MemoryStore()
    root = Importer(store).run(tree)
    sp = Spawner(store, tmp_path / "spawns", max_per_user=2)
    sp.spawn("t", root, owner="alice", uid=1000)
    sp.spawn("t", root, owner="alice", uid=1000)
    with pytest.raises(SpawnLimit, match="spawnmax 2"):
        sp.spawn("t", root, owner="alice", uid=1000)
    sp.spawn("t", root, owner="bob", uid=1001)  # others are not affected


def test_save_kill_and_restart(tree, tmp_path):
    LocalStore.create(tmp_path / "store")
    with LocalStore.open(tmp_path / "store") as store:
        root = Importer(store).run(tree)
        sp = Spawner(store, tmp_path / "spawns")
        info = sp.spawn("t", root, owner="alice", uid=1000)
        e = sp.engine(info.id)
        f = e.lookup(ROOT, 1, b"f").ino
        e.write(ROOT, f, 0, b"changed")
        e.fsync(ROOT)
        sp.close()
        # Restart: the change is still there.
        sp = Spawner(store, tmp_path / "spawns")
        e = sp.engine(info.id)
        assert e.read(ROOT, f, 0, 7) == b"changed"
        new = sp.save(info.id, name="t", user="alice")
        a = Archive(store, new)
        assert a.root.prev == root
        assert a.open(a.resolve("f")).read(0, 7) == b"changed"
        other = sp.spawn("t", root, owner="alice", uid=1000)
        sp.kill(info.id)
        assert [i.id for i in sp.list()] == [other.id]
        assert not (tmp_path / "spawns" / info.id).exists()
        with pytest.raises(SpawnNotFound):
            sp.engine(info.id)
        # Numbers are not reused.
        assert sp.spawn("t", root, owner="alice", uid=1000).id not in (info.id, other.id)
        sp.close()
