"""Reading an archive: resolve paths, list directories, read files, walk everything.

The reader is lazy: opening an archive reads the root block only; inode-table and directory
nodes and file leaves are read when first touched, through the store (and the b-trees'
per-instance node caches).
"""

from __future__ import annotations

from collections.abc import Iterator

from spawn.fsformat import DirEntry, Inode, Root, decode_dirent, decode_inode, decode_root, ino_key
from store.base import BlockStore
from store.block import BlockType, split_refs
from store.btree import BTree
from store.errors import InvalidBlock
from store.hashtree import TreeReader
from store.score import Score


class NotFound(LookupError):
    """A path or inode the archive does not have."""


class NotADirectory(LookupError):
    pass


class Archive:
    def __init__(self, store: BlockStore, root_score: bytes) -> None:
        self.store = store
        self.score = Score(bytes(root_score))
        blk = store.get(self.score)
        if blk.type != BlockType.ROOT:
            raise InvalidBlock(f"{blk.type.name} block is not an archive root")
        refs, body = split_refs(blk.type, blk.data)
        self.root: Root = decode_root(refs, bytes(body))
        self.inodes = BTree(store, self.root.inode_table, cache_nodes=1024)
        self._dirs: dict[int, BTree] = {}

    @property
    def root_ino(self) -> int:
        return self.root.root_ino

    def inode(self, ino: int) -> Inode:
        e = self.inodes.get(ino_key(ino))
        if e is None:
            raise NotFound(f"no inode {ino}")
        return decode_inode(e.value, e.refs)

    def directory(self, ino: int, inode: Inode | None = None) -> BTree:
        t = self._dirs.get(ino)
        if t is None:
            inode = inode or self.inode(ino)
            if not inode.is_dir():
                raise NotADirectory(f"inode {ino} is not a directory")
            t = BTree(self.store, inode.content)
            if len(self._dirs) > 4096:
                self._dirs.clear()
            self._dirs[ino] = t
        return t

    def lookup(self, dir_ino: int, name: bytes) -> DirEntry | None:
        e = self.directory(dir_ino).get(name)
        return decode_dirent(e.key, e.value) if e is not None else None

    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        for e in self.directory(dir_ino).from_index(offset):
            yield decode_dirent(e.key, e.value)

    def resolve(self, path: bytes | str) -> int:
        """The inode at *path* (``/``-separated, relative to the root; symlinks not followed)."""
        if isinstance(path, str):
            path = path.encode("utf-8", "surrogateescape")
        ino = self.root_ino
        for part in path.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b"..":
                raise NotFound("'..' is not allowed in archive paths")
            d = self.lookup(ino, part)
            if d is None:
                raise NotFound(f"no such file: {path.decode('utf-8', 'replace')}")
            ino = d.ino
        return ino

    def open(self, ino: int, inode: Inode | None = None) -> TreeReader:
        inode = inode or self.inode(ino)
        if not inode.is_reg():
            raise InvalidBlock(f"inode {ino} is not a regular file")
        return TreeReader(self.store, inode.content)

    def walk(self, start: int | None = None, prefix: bytes = b"") -> Iterator[tuple[bytes, int, Inode]]:
        """(path, ino, inode) for every entry below *start*, parents first, sorted by name."""
        ino = self.root_ino if start is None else start
        inode = self.inode(ino)
        yield prefix, ino, inode
        if inode.is_dir():
            for d in self.readdir(ino):
                child = prefix + b"/" + d.name if prefix else d.name
                yield from self.walk(d.ino, child)
