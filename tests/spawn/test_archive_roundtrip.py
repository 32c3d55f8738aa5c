"""Import then export gives an identical tree: contents, modes, owners, times, links, xattrs,
holes, awkward names, a 100,000-entry directory and a sparse file beyond 4 GiB."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spawn.archive import Archive
from spawn.export import Exporter, ExportError
from spawn.importer import Importer
from store.base import walk
from store.local import LocalStore
from store.memory import MemoryStore
from tests.spawn.treecompare import data_bytes, snapshot

ROOT = os.geteuid() == 0


def make_everything(top: Path) -> None:
    top.mkdir()
    (top / "plain.txt").write_bytes(b"hello\n")
    (top / "empty").write_bytes(b"")
    (top / "big.bin").write_bytes(os.urandom(3 << 20))
    (top / "name with spaces").write_bytes(b"s")
    (top / "new\nline").write_bytes(b"n")
    (top / os.fsdecode(b"latin1-\xe9\xff")).write_bytes(b"bytes")
    sub = top / "dir" / "deeper"
    sub.mkdir(parents=True)
    (sub / "f").write_bytes(os.urandom(5000))
    os.symlink("../plain.txt", top / "dir" / "rel-link")
    os.symlink("/etc/passwd", top / "abs-link")
    os.symlink("nowhere", top / "dangling")
    os.link(top / "plain.txt", top / "dir" / "hardlink")
    os.link(top / "plain.txt", top / "dir" / "deeper" / "hardlink2")
    os.mkfifo(top / "fifo", 0o640)
    os.chmod(top / "big.bin", 0o4755)
    os.setxattr(top / "plain.txt", "user.color", b"blue")
    os.setxattr(top / "dir", "user.dirattr", b"\x00\x01binary")
    # sparse: data, hole, data
    with open(top / "sparse", "wb") as f:
        f.write(b"start")
        f.seek(50 << 20)
        f.write(b"end")
    if ROOT:
        os.mknod(top / "null-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.chown(top / "dir" / "deeper" / "f", 1234, 5678)
        os.chown(top / "dangling", 4321, 8765, follow_symlinks=False)
    os.utime(top / "plain.txt", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.utime(top / "dir" / "rel-link", ns=(1_000_000_001, 1_000_000_002), follow_symlinks=False)


@pytest.mark.skipif(not ROOT, reason="a device node and foreign owners need root to make")
def test_export_without_same_owner_is_safe(tmp_path: Path) -> None:
    """A tree another user made cannot hand them privilege through root's export: without
    --same-owner the files are the exporter's, setuid/setgid go from files (a setgid
    directory keeps its bit: it only passes its group on) and device nodes are skipped."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "shell").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "shell", 0, 0)
    os.chmod(src / "shell", 0o4755)
    (src / "sgid").write_bytes(b"g")
    os.chmod(src / "sgid", 0o2775)
    (src / "d").mkdir()
    os.chmod(src / "d", 0o2775)
    (src / "mine").write_bytes(b"m")
    os.chown(src / "mine", 1234, 5678)
    os.mknod(src / "disk", stat.S_IFBLK | 0o666, os.makedev(8, 0))
    os.mkfifo(src / "fifo", 0o600)
    store = MemoryStore()
    score = Importer(store).run(src, name="t")
    out = tmp_path / "out"
    st = Exporter(Archive(store, score)).run(out)
    assert stat.S_IMODE(os.stat(out / "shell").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "sgid").st_mode) == 0o775
    assert stat.S_IMODE(os.stat(out / "d").st_mode) == 0o2775
    assert (os.stat(out / "mine").st_uid, os.stat(out / "mine").st_gid) == (0, 0)
    assert not os.path.lexists(out / "disk")
    assert stat.S_ISFIFO(os.stat(out / "fifo").st_mode)
    assert (st.stripped, st.devices_skipped) == (2, 1)
    out2 = tmp_path / "out2"
    st = Exporter(Archive(store, score), same_owner=True).run(out2)
    assert stat.S_IMODE(os.stat(out2 / "shell").st_mode) == 0o4755
    assert (os.stat(out2 / "mine").st_uid, os.stat(out2 / "mine").st_gid) == (1234, 5678)
    assert stat.S_ISBLK(os.stat(out2 / "disk").st_mode)
    assert (st.stripped, st.devices_skipped) == (0, 0)


def roundtrip(src: Path, out: Path, store=None) -> tuple[bytes, Importer]:
    store = store or MemoryStore()
    snapshot(src)  # settle atimes before the import reads anything
    imp = Importer(store)
    score = imp.run(src, name="t", time_ns=1)
    Exporter(Archive(store, score), same_owner=True).run(out)
    return score, imp


def test_everything_roundtrips(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_everything(src)
    before = snapshot(src)
    _score, imp = roundtrip(src, out)
    assert not imp.stats.skipped
    after = snapshot(out)
    assert after["links"] == before["links"] and len(before["links"]) == 1
    for rel, m in before["meta"].items():
        assert after["meta"][rel] == m, rel
    assert set(after["meta"]) == set(before["meta"])
    # The hole is a hole in the copy too.
    assert data_bytes(out / "sparse") < (1 << 20)


def test_hundred_thousand_entry_directory(tmp_path):
    src = tmp_path / "src"
    (src / "many").mkdir(parents=True)
    for i in range(100_000):
        fd = os.open(src / "many" / f"entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    store = MemoryStore()
    score = Importer(store).run(src, name="many", time_ns=1)
    a = Archive(store, score)
    many = a.resolve("many")
    assert a.inode(many).size == 100_000
    gets = store.statistics().gets
    a2 = Archive(store, score)
    assert a2.lookup(many, b"entry-054321") is not None
    assert store.statistics().gets - gets < 12  # root, inode-table path, directory path
    out = tmp_path / "out"
    Exporter(a, same_owner=True).run(out)
    assert len(os.listdir(out / "many")) == 100_000


@pytest.mark.slow
def test_sparse_file_beyond_4gib(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    size = (5 << 30) + 123
    with open(src / "huge", "wb") as f:
        f.write(b"head")
        f.seek(4 << 30)
        f.write(b"middle" * 1000)
        f.truncate(size)
    LocalStore.create(tmp_path / "store")
    with LocalStore.open(tmp_path / "store") as store:
        score, imp = roundtrip(src, tmp_path / "out", store)
        assert imp.stats.read_bytes < (1 << 20)
        a = Archive(store, score)
        r = a.open(a.resolve("huge"))
        assert r.size == size
        assert r.read((4 << 30) - 2, 10) == b"\0\0middlemi"
    st_ = os.stat(tmp_path / "out" / "huge")
    assert st_.st_size == size and st_.st_blocks * 512 < (1 << 20)
    with open(tmp_path / "out" / "huge", "rb") as f:
        f.seek(4 << 30)
        assert f.read(12) == b"middlemiddle"


def test_deterministic(tmp_path):
    src = tmp_path / "src"
    make_everything(src)
    snapshot(src)
    a = Importer(MemoryStore()).run(src, name="x", time_ns=5)
    b = Importer(MemoryStore()).run(src, name="x", time_ns=5)
    assert a == b


def test_reachability_covers_everything(tmp_path):
    src = tmp_path / "src"
    make_everything(src)
    store = MemoryStore()
    score = Importer(store).run(src, name="x", time_ns=5)
    reach = {s for s, _ in walk(store, score)}
    assert reach == set(store._blocks)  # nothing stored that the root does not reach


def test_export_refuses_nonempty_destination(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    store = MemoryStore()
    score = Importer(store).run(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_bytes(b"mine")
    with pytest.raises(ExportError, match="not empty"):
        Exporter(Archive(store, score)).run(out)
    assert os.listdir(out) == ["keep"]


def test_export_never_follows_symlinks(tmp_path):
    """An archive with a symlink named like a directory, then a file 'under' it, cannot write
    through the link: hostile names are refused, links are created, never followed."""
    from spawn.fsformat import Inode, Root, encode_dirent, encode_inode, encode_root, ino_key
    from store.block import BlockType, encode_refs
    from store.btree import Entry, build

    victim = tmp_path / "victim"
    victim.mkdir()
    store = MemoryStore()
    for bad_name in (b"..", b"a/b"):
        d = build(store, BlockType.DIR, [Entry(bad_name, encode_dirent(2, stat.S_IFREG | 0o644))])
        f = Inode(stat.S_IFREG | 0o644, content=store.put(BlockType.DATA, b"pwned"), size=5)
        r = Inode(stat.S_IFDIR | 0o755, content=d)
        table = build(store, BlockType.META, [Entry(ino_key(1), encode_inode(r), r.refs()), Entry(ino_key(2), encode_inode(f), f.refs())])
        refs, body = encode_root(Root(table, 1, 3, 0))
        score = store.put(BlockType.ROOT, encode_refs(refs, body))
        with pytest.raises(ValueError):
            Exporter(Archive(store, score)).run(tmp_path / f"out-{len(bad_name)}")
    assert os.listdir(victim) == []
    assert not (tmp_path / "pwned").exists()


names = st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
trees = st.recursive(
    st.one_of(st.binary(max_size=3000), st.tuples(st.just("link"), names)),
    lambda children: st.dictionaries(names, children, max_size=5),
    max_leaves=25,
)


def materialize(top: bytes, tree) -> None:
    os.mkdir(top)
    for name, v in tree.items():
        p = os.path.join(top, name)
        if isinstance(v, dict):
            materialize(p, v)
        elif isinstance(v, tuple):
            os.symlink(v[1], p)
        else:
            with open(p, "wb") as f:
                f.write(v)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(names, trees, max_size=6))
def test_random_trees_roundtrip(tmp_path, tree):
    import shutil
    import uuid

    base = tmp_path / uuid.uuid4().hex
    base.mkdir()
    try:
        src = os.fsencode(base / "src")
        materialize(src, tree)
        before = snapshot(src)
        roundtrip(Path(os.fsdecode(src)), base / "out")
        after = snapshot(base / "out")
        assert after == before
    finally:
        shutil.rmtree(base)
