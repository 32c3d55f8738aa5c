"""Import a directory tree into the store as an archive (``grid import``; vac).

The walk is depth-first in sorted name order, so inode numbers and block layout, and with the
same metadata the root score, are deterministic. Each directory's b-tree is stored as soon as
the directory is scanned (it needs only names and inode numbers); regular files are read,
chunked, hashed and compressed by a pool of worker threads (BLAKE3 and zstd release the GIL);
the inode table and the root block come last, so every block is stored after the blocks it
references (closure).

Unchanged files (same device, inode, size, mtime and ctime as in the files cache) are not read
at all. Files that cannot be read are skipped with a warning and reported, never silently.
Sparse files are read region by region (SEEK_DATA/SEEK_HOLE); holes are never read or stored.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from spawn.filescache import CachedFile, FilesCache
from spawn.fsformat import (
    Inode,
    Root,
    check_name,
    encode_dirent,
    encode_inode,
    encode_root,
    ino_key,
)
from store.base import BlockStore
from store.block import BlockType, encode_refs
from store.btree import Entry, build
from store.chunker import Chunker, default_chunker
from store.hashtree import TreeWriter
from store.score import NULL_SCORE, Score

ROOT_INO = 1
_READ = 8 << 20
_INLINE_MAX = 64 << 10  # files up to this size are stored by the scanning thread
_O_NOATIME = getattr(os, "O_NOATIME", 0)


@dataclass
class ImportStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0  # logical bytes of regular files in the tree
    read_bytes: int = 0  # bytes actually read (files not answered by the cache)
    cached_files: int = 0
    done_files: int = 0  # regular files finished (stored or answered by the cache)
    done_bytes: int = 0
    skipped: list[tuple[bytes, str]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Pending:
    """An inode being imported; a regular file's content arrives from a worker."""

    ino: int
    st: os.stat_result
    path: bytes = b""  # the source path, for messages
    inline: bytes = b""
    content: Score = NULL_SCORE
    size: int = 0
    future: Future[tuple[Score, int]] | None = None
    nlink: int = 1
    xattrs: tuple[tuple[bytes, bytes], ...] = ()


class _Names:
    """uid/gid -> name, cached (None when unknown)."""

    def __init__(self) -> None:
        self._u: dict[int, str] = {}
        self._g: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._u:
            try:
                self._u[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._u[uid] = ""
        return self._u[uid]

    def group(self, gid: int) -> str:
        if gid not in self._g:
            try:
                self._g[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._g[gid] = ""
        return self._g[gid]


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        try:
            out.append((n.encode(), os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)


def _listdir(path: bytes) -> list[bytes]:
    """List a directory without touching its atime where the kernel lets us (O_NOATIME)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_NOATIME)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return [os.fsencode(n) for n in os.listdir(fd)]
    finally:
        os.close(fd)


def store_file(store: BlockStore, path: bytes, chunker: Chunker | None = None) -> tuple[Score, int]:
    """Store one regular file as a hash tree, skipping holes; returns (root, bytes read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _O_NOATIME)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "no longer a regular file")
        w = TreeWriter(store, chunker or default_chunker())
        size = st.st_size
        sparse = st.st_blocks * 512 < size
        pos = 0
        read = 0
        while pos < size:
            end = size
            if sparse:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    data = size
                if data > pos:
                    w.write_hole(min(data, size) - pos)
                    pos = min(data, size)
                    if pos >= size:
                        break
                end = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
            while pos < end:
                buf = os.pread(fd, min(_READ, end - pos), pos)
                if not buf:
                    size = pos  # the file shrank while we read it
                    break
                w.write(buf)
                pos += len(buf)
                read += len(buf)
        ref = w.finish()
        return ref.score, read
    finally:
        os.close(fd)


class Importer:
    def __init__(
        self,
        store: BlockStore,
        *,
        cache: FilesCache | None = None,
        cache_name: str = "",
        one_file_system: bool = True,
        workers: int = 2,
        chunker: Callable[[], Chunker] = default_chunker,
        prev_ino_high: int = 0,
        progress: Callable[[ImportStats], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.cache_name = cache_name
        self.one_file_system = one_file_system
        self.workers = workers
        self.chunker = chunker
        self.prev_ino_high = prev_ino_high
        self.progress = progress
        self.warn = warn or (lambda msg: None)
        self.stats = ImportStats()
        self._names = _Names()
        self._lock = threading.Lock()
        self._local = threading.local()  # one chunker per worker thread (not thread-safe)
        self.cache_files: dict[bytes, CachedFile] = {}  # abs path -> content, for the cache
        self.cache_inos: dict[bytes, tuple[int, int, int]] = {}  # abs path -> (dev, st_ino, grid ino)

    # -- inode numbers ----------------------------------------------------------------------

    def _alloc(self, rel: bytes, st: os.stat_result) -> int:
        if not rel:
            return ROOT_INO
        cand = None
        if self.cache is not None and self.prev_ino_high:
            cand = self.cache.ino_for_source(self.cache_name, st.st_dev, st.st_ino)
            if cand is None or cand in self._used:
                cand = self.cache.ino_for_path(self.cache_name, self._top + b"/" + rel)
        if cand is None or cand in self._used or cand == ROOT_INO:
            cand = self._next
            while cand in self._reserved:
                cand += 1
            self._next = cand + 1
        self._used.add(cand)
        return cand

    # -- the walk ------------------------------------------------------------------------

    def run(self, top: bytes | str, *, name: str = "", user: str = "", time_ns: int | None = None, prev: bytes = NULL_SCORE) -> Score:
        t0 = time.monotonic()
        # The directory a symlink names is what the user means; the walk itself follows no
        # symlinks (it opens with O_NOFOLLOW), so resolve the top once, here.
        top = os.path.realpath(os.fsencode(top))
        self._top = top
        st = os.stat(top)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", top)
        self._used: set[int] = set()
        self._reserved: set[int] = set()
        self._next = max(self.prev_ino_high, ROOT_INO + 1)
        inodes: dict[int, _Pending] = {}
        links: dict[tuple[int, int], int] = {}
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="import")
        try:
            self._used.add(ROOT_INO)
            inodes[ROOT_INO] = _Pending(ROOT_INO, st, xattrs=_xattrs(top))
            self._record(b"", st, ROOT_INO, NULL_SCORE)
            stack: list[tuple[bytes, bytes, int, os.stat_result]] = [(top, b"", ROOT_INO, st)]
            while stack:
                path, rel, ino, dst = stack.pop()
                subdirs = self._scan_dir(path, rel, ino, dst, inodes, links, pool, top_dev=st.st_dev)
                stack.extend(reversed(subdirs))
            for p in inodes.values():
                if p.future is not None:
                    try:
                        p.content, nread = p.future.result()
                        self.stats.read_bytes += nread
                    except OSError as e:
                        self._skip(p, e)
            table = build(self.store, BlockType.META, (self._table_entry(i, p) for i, p in sorted(inodes.items())))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        high = max(max(inodes) + 1, self._next)
        root = Root(table, ROOT_INO, high, time.time_ns() if time_ns is None else time_ns, name, user, Score(bytes(prev)))
        refs, body = encode_root(root)
        score = self.store.put(BlockType.ROOT, encode_refs(refs, body))
        self.stats.seconds = time.monotonic() - t0
        return score

    def _skip(self, p: _Pending, e: OSError) -> None:
        self.stats.skipped.append((p.path, e.strerror or str(e)))
        self.warn(f"skipped {os.fsdecode(p.path)}: {e.strerror or e}")
        p.content = self.store.put(BlockType.DATA, b"")
        p.size = 0

    def _table_entry(self, ino: int, p: _Pending) -> Entry:
        inode = self._inode(p)
        return Entry(ino_key(ino), encode_inode(inode), inode.refs())

    def _inode(self, p: _Pending) -> Inode:
        st = p.st
        return Inode(
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            nlink=p.nlink,
            size=p.size,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            rdev=st.st_rdev if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else 0,
            content=p.content,
            inline=p.inline,
            user=self._names.user(st.st_uid),
            group=self._names.group(st.st_gid),
            xattrs=p.xattrs,
        )

    def _record(self, rel: bytes, st: os.stat_result, ino: int, score: Score) -> None:
        path = self._top + b"/" + rel if rel else self._top
        self.cache_inos[path] = (st.st_dev, st.st_ino, ino)
        if score != NULL_SCORE:
            self.cache_files[path] = CachedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, score)

    def _scan_dir(self, path, rel, ino, dst, inodes, links, pool, top_dev) -> list:
        subdirs = []
        entries: list[Entry] = []
        nsub = 0
        try:
            names = sorted(_listdir(path))
        except OSError as e:
            if not rel:  # the top itself: an import of nothing must fail, not record an empty tree
                raise
            self.stats.skipped.append((path, e.strerror or str(e)))
            self.warn(f"skipped the contents of {os.fsdecode(path)}: {e.strerror or e}")
            names = []
        self.stats.dirs += 1
        for name in names:
            check_name(name)
            cpath = path + b"/" + name
            crel = rel + b"/" + name if rel else name
            try:
                st = os.lstat(cpath)
            except OSError as e:
                self.stats.skipped.append((cpath, e.strerror or str(e)))
                self.warn(f"skipped {os.fsdecode(cpath)}: {e.strerror or e}")
                continue
            mode = st.st_mode
            hard = not stat.S_ISDIR(mode) and st.st_nlink > 1
            if hard and (st.st_dev, st.st_ino) in links:
                cino = links[(st.st_dev, st.st_ino)]
                inodes[cino].nlink += 1
                entries.append(Entry(name, encode_dirent(cino, mode)))
                continue
            cino = self._alloc(crel, st)
            if hard:
                links[(st.st_dev, st.st_ino)] = cino
            p = _Pending(cino, st, path=cpath, xattrs=_xattrs(cpath))
            inodes[cino] = p
            entries.append(Entry(name, encode_dirent(cino, mode)))
            if stat.S_ISDIR(mode):
                nsub += 1
                if self.one_file_system and st.st_dev != top_dev:
                    self.warn(f"not crossing into another filesystem at {os.fsdecode(cpath)} (stored empty)")
                    p.content = build(self.store, BlockType.DIR, [])
                    p.nlink = 2
                    self.stats.dirs += 1
                else:
                    subdirs.append((cpath, crel, cino, st))
                self._record(crel, st, cino, NULL_SCORE)
            elif stat.S_ISREG(mode):
                self.stats.files += 1
                self.stats.bytes += st.st_size
                p.size = st.st_size
                hit = self.cache.get(self._top + b"/" + crel) if self.cache is not None else None
                if (
                    hit is not None
                    and (hit.dev, hit.st_ino, hit.size, hit.mtime_ns, hit.ctime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    and hit.score != NULL_SCORE
                    and self.store.has(hit.score)
                ):
                    p.content = hit.score
                    self.stats.cached_files += 1
                    self._record(crel, st, cino, hit.score)
                    self._done(st.st_size)
                elif st.st_size <= _INLINE_MAX:
                    # Small files cost less to store here than to hand to a worker thread.
                    try:
                        p.content, nread = self._file_job(cpath, crel, st, cino)
                        self.stats.read_bytes += nread
                    except OSError as e:
                        self._skip(p, e)
                else:
                    p.future = pool.submit(self._file_job, cpath, crel, st, cino)
            elif stat.S_ISLNK(mode):
                self.stats.symlinks += 1
                try:
                    p.inline = os.readlink(cpath)
                except OSError as e:
                    self.stats.skipped.append((cpath, e.strerror or str(e)))
                p.size = len(p.inline)
                self._record(crel, st, cino, NULL_SCORE)
            else:
                self.stats.others += 1
                self._record(crel, st, cino, NULL_SCORE)
        tree = build(self.store, BlockType.DIR, entries)
        me = inodes[ino]
        me.content = tree
        me.size = len(entries)
        me.nlink = 2 + nsub
        return subdirs

    def _file_job(self, path: bytes, rel: bytes, st: os.stat_result, ino: int) -> tuple[Score, int]:
        chunker = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self._local.chunker = self.chunker()
        score, nread = store_file(self.store, path, chunker)
        with self._lock:
            self._record(rel, st, ino, score)
        self._done(st.st_size)
        return score, nread

    def _done(self, nbytes: int) -> None:
        """A regular file is finished: count it and tell the progress display."""
        with self._lock:
            self.stats.done_files += 1
            self.stats.done_bytes += nbytes
            if self.progress is not None:
                self.progress(self.stats)
