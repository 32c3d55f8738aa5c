"""Differences between two archives, path by path.

Subtrees whose directory b-tree and inode records are identical are skipped without being
walked further only when the whole inode table is identical; otherwise every entry's inode
record is compared (O(entries), reading only the inode table and directory blocks, never
file contents: a file's content is compared by its hash-tree root score).
"""

from __future__ import annotations

from collections.abc import Iterator

from spawn.archive import Archive
from spawn.fsformat import DirEntry, Inode


def _meta(i: Inode) -> tuple:
    return (i.mode, i.uid, i.gid, i.mtime_ns, i.xattrs, i.rdev)


def diff_archives(a: Archive, b: Archive) -> Iterator[tuple[str, bytes]]:
    """Yield ('+', path), ('-', path), ('M', path) content changed, ('m', path) metadata only."""
    if a.root.inode_table == b.root.inode_table and a.root.root_ino == b.root.root_ino:
        return
    yield from _diff_dir(a, a.root_ino, b, b.root_ino, b"", (set(), set()))


def _all(x: Archive, ino: int, prefix: bytes) -> Iterator[bytes]:
    for path, _i, _n in x.walk(ino, prefix):
        yield path


def _diff_dir(a: Archive, ai: int, b: Archive, bi: int, prefix: bytes,
              seen: tuple[set[int], set[int]]) -> Iterator[tuple[str, bytes]]:
    # Each directory is entered once per side: a cycle in a malformed archive is BadArchive.
    a.enter_dir(ai, prefix, seen[0])
    b.enter_dir(bi, prefix, seen[1])
    ea = {d.name: d.ino for d in a.readdir(ai)}
    eb = {d.name: d.ino for d in b.readdir(bi)}
    for name in sorted(ea.keys() | eb.keys()):
        path = prefix + b"/" + name if prefix else name
        if name not in eb:
            for p in _all(a, ea[name], path):
                yield "-", p
            continue
        if name not in ea:
            for p in _all(b, eb[name], path):
                yield "+", p
            continue
        ia = a.entry_inode(DirEntry(name, ea[name], 0))
        ib = b.entry_inode(DirEntry(name, eb[name], 0))
        if ia.kind != ib.kind:
            for p in _all(a, ea[name], path):
                yield "-", p
            for p in _all(b, eb[name], path):
                yield "+", p
            continue
        if ia.is_dir():
            if _meta(ia) != _meta(ib):
                yield "m", path
            yield from _diff_dir(a, ea[name], b, eb[name], path, seen)
        elif (ia.content, ia.inline, ia.size) != (ib.content, ib.inline, ib.size):
            yield "M", path
        elif _meta(ia) != _meta(ib):
            yield "m", path
