"""Reading an archive: resolve paths, list directories, read files, walk everything.

The reader is lazy: opening an archive reads the root block only; inode-table and directory
nodes and file leaves are read when first touched, through the store (and the b-trees'
per-instance node caches).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator

from spawn.fsformat import DirEntry, Inode, Root, decode_dirent, decode_inode, decode_root, ino_key
from store.base import BlockStore
from store.block import BlockType, split_refs
from store.btree import BTree
from store.errors import InvalidBlock
from store.hashtree import TreeReader
from store.score import Score, format_score

# Bounds a decoded inode must keep: what Linux can represent (off_t, uid_t, 64-bit ns times).
MAX_FILE_SIZE = (1 << 63) - 1
_MAX_ID = (1 << 32) - 1
_MAX_NS = (1 << 63) - 1
MAX_DEPTH = 4096  # directory levels below the root (PATH_MAX allows at most 2048)


class NotFound(LookupError):
    """A path or inode the archive does not have."""


class NotADirectory(LookupError):
    pass


class BadArchive(ValueError):
    """The archive's blocks decode to something no filesystem holds: a malformed record,
    an entry naming an absent inode, a directory cycle, an impossible size. Blocks that
    pass closure can come from any peer, so every decoder turns what it cannot accept
    into this one error, naming the archive and what was wrong, never a traceback."""


# What decoding hostile bytes can raise besides our own errors.
_DECODE_ERRORS = (InvalidBlock, ValueError, IndexError, KeyError, OverflowError, struct.error)


@contextlib.contextmanager
def _decoding(archive: Archive, what: str) -> Iterator[None]:
    try:
        yield
    except (BadArchive, NotFound, NotADirectory):
        raise
    except _DECODE_ERRORS as e:
        raise BadArchive(f"archive {format_score(archive.score)}: {what}: {e}") from None


def _check_inode(ino: int, i: Inode) -> Inode:
    if not 0 <= i.size <= MAX_FILE_SIZE:
        raise BadArchive(f"inode {ino} has size {i.size}, larger than any file can be")
    if not (0 <= i.uid <= _MAX_ID and 0 <= i.gid <= _MAX_ID):
        raise BadArchive(f"inode {ino} has an owner id out of range")
    if not all(-_MAX_NS <= t <= _MAX_NS for t in (i.atime_ns, i.mtime_ns, i.ctime_ns)):
        raise BadArchive(f"inode {ino} has a time out of range")
    return i


class Archive:
    def __init__(self, store: BlockStore, root_score: bytes) -> None:
        self.store = store
        self.score = Score(bytes(root_score))
        blk = store.get(self.score)
        if blk.type != BlockType.ROOT:
            raise InvalidBlock(f"{blk.type.name} block is not an archive root")
        with _decoding(self, "root block"):
            refs, body = split_refs(blk.type, blk.data)
            self.root: Root = decode_root(refs, bytes(body))
        self.inodes = BTree(store, self.root.inode_table, cache_nodes=1024)
        self._dirs: dict[int, BTree] = {}

    @property
    def root_ino(self) -> int:
        return self.root.root_ino

    def inode(self, ino: int) -> Inode:
        with _decoding(self, f"inode {ino}"):
            e = self.inodes.get(ino_key(ino))
            if e is None:
                raise NotFound(f"no inode {ino}")
            return _check_inode(ino, decode_inode(e.value, e.refs))

    def entry_inode(self, d: DirEntry) -> Inode:
        """The inode a directory entry names: one the archive lacks is BadArchive (the
        archive is malformed), not NotFound (which means a path the user asked for)."""
        try:
            return self.inode(d.ino)
        except NotFound:
            raise BadArchive(
                f"archive {format_score(self.score)}: entry {d.name.decode('utf-8', 'replace')!r} "
                f"names inode {d.ino}, which the archive lacks"
            ) from None

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
        with _decoding(self, f"directory {dir_ino}"):
            e = self.directory(dir_ino).get(name)
            return decode_dirent(e.key, e.value) if e is not None else None

    def readdir(self, dir_ino: int, offset: int = 0) -> Iterator[DirEntry]:
        with _decoding(self, f"directory {dir_ino}"):
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
        """(path, ino, inode) for every entry below *start*, parents first, sorted by name.

        Iterative, and every directory is entered once: a directory met a second time (a
        cycle, or a directory hard link, which no filesystem makes) is BadArchive, so a
        hostile archive cannot recurse forever or blow up exponentially."""
        ino = self.root_ino if start is None else start
        seen: set[int] = set()
        stack: list[tuple[bytes, int, Inode | None]] = [(prefix, ino, None)]
        while stack:
            path, ino, inode = stack.pop()
            inode = inode or self.inode(ino)
            yield path, ino, inode
            if not inode.is_dir():
                continue
            self.enter_dir(ino, path, seen)
            kids = []
            for d in self.readdir(ino):
                kids.append((path + b"/" + d.name if path else d.name, d.ino, self.entry_inode(d)))
            stack.extend(reversed(kids))

    def enter_dir(self, ino: int, path: bytes, seen: set[int]) -> None:
        """Record directory *ino* at *path* as visited; BadArchive when it was already
        (a directory cycle) or when *path* is deeper than any real tree."""
        if ino in seen:
            raise BadArchive(
                f"archive {format_score(self.score)}: directory {path.decode('utf-8', 'replace') or '/'} "
                f"(inode {ino}) appears twice: a directory cycle"
            )
        if path.count(b"/") >= MAX_DEPTH:
            raise BadArchive(f"archive {format_score(self.score)}: directories nested deeper than {MAX_DEPTH}")
        seen.add(ino)
