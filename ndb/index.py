"""The hash index of an ndb file: ``attr=value`` to the byte spans of the entries holding it.

Plan 9's ``ndb/mkhash file attr`` writes one hash file per attribute beside the database
file, and libndb trusts it only while its recorded mtime equals the file's. We keep the
idea with LMDB and make it automatic:

- One LMDB environment per ndb file, in the directory ``FILE.idx/`` beside it. It indexes
  the attributes that have been asked for (the first query on an attribute indexes it, as
  if ``mkhash`` had run), so a names file is indexed on ``name`` and not on every date.
- Database ``keys`` (dupsort, dupfixed): key ``b"k" + attr=value`` (or ``b"h" + attr=`` +
  BLAKE2b of the value when that would pass LMDB's 511-byte key limit), values
  ``>QI`` = (offset, length) of each entry holding the pair, in file order.
- Database ``meta``: ``sig`` = the file's (device, inode, size, mtime_ns) when indexed,
  ``end`` = where its complete lines ended, ``tail`` = BLAKE2b of the 4 KiB before ``end``,
  ``attrs`` = the indexed attributes, ``format`` = this layout's version.

Freshness. A lookup compares ``sig`` with ``fstat`` of the open file:

- equal: the index is current;
- same inode, the file grew, the 4 KiB before ``end`` are unchanged and the new text starts
  a new entry: the file was appended to (grid's own writers only ever append or replace by
  rename), so only the new tail is parsed and indexed;
- anything else (a new inode after an atomic replace, a shrink, an edit in place, an mtime
  change with the same size): the index is rebuilt from the whole file.

An edit in place that keeps the size and lands in the same mtime tick as the last index
update is the one change this cannot see (Linux has no Plan 9 ``qid.vers``); readers
also check that each entry read through the index really holds the pair asked for, and
rebuild when one does not.

The index is a cache: it is written without fsync, and a damaged or unopenable index is
deleted and rebuilt, or, when that fails too (a read-only directory), queries fall back
to reading the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

import lmdb

from ndb.syntax import Entry, gc_paused, parse

FORMAT = b"1"
INDEX_SUFFIX = ".idx"
_SPAN = struct.Struct(">QI")
_SIG = struct.Struct(">QQQq")
_TAIL = 4096
_MAX_KEY = 480
_MAP_SIZE = 1 << 34

_envs: dict[str, tuple[int, lmdb.Environment]] = {}
_envs_lock = threading.Lock()


class IndexUnavailable(Exception):
    """The index cannot be used (cannot be created or opened); callers read the file."""


def index_path(path: Path) -> Path:
    """Where the index of the ndb file *path* lives."""
    return path.with_name(path.name + INDEX_SUFFIX)


def key_of(attr: str, value: str) -> bytes:
    """The LMDB key for the pair ``attr=value``."""
    a = attr.encode("utf-8")
    v = value.encode("utf-8")
    if len(a) + len(v) + 2 <= _MAX_KEY:
        return b"k" + a + b"=" + v
    return b"h" + a + b"=" + hashlib.blake2b(v, digest_size=32).digest()


def _signature(st: os.stat_result) -> bytes:
    return _SIG.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _tail_digest(fd: int, end: int) -> bytes:
    start = max(0, end - _TAIL)
    return hashlib.blake2b(os.pread(fd, end - start, start), digest_size=16).digest()


def _open_env(directory: Path) -> lmdb.Environment:
    """One environment per directory per process (LMDB forbids opening one twice); a child
    process after fork opens its own."""
    key = str(directory)
    with _envs_lock:
        held = _envs.get(key)
        if held is not None and held[0] == os.getpid():
            return held[1]
        env = lmdb.open(
            key,
            subdir=True,
            max_dbs=2,
            map_size=_MAP_SIZE,
            sync=False,
            metasync=False,
            readahead=False,
            lock=True,
        )
        _envs[key] = (os.getpid(), env)
        return env


def _forget_env(directory: Path) -> None:
    with _envs_lock:
        held = _envs.pop(str(directory), None)
    if held is not None and held[0] == os.getpid():
        held[1].close()


class Index:
    """The LMDB index of one ndb file (see the module docstring for the layout)."""

    def __init__(self, path: Path, directory: Path | None = None) -> None:
        self.path = path
        self.directory = directory or index_path(path)
        self._env: lmdb.Environment | None = None
        self._keys = self._meta = None

    def _open(self) -> lmdb.Environment:
        if self._env is None:
            try:
                self._env = self._try_open()
            except lmdb.Error:
                # A damaged index: it is only a cache, so start again.
                _forget_env(self.directory)
                shutil.rmtree(self.directory, ignore_errors=True)
                try:
                    self._env = self._try_open()
                except (lmdb.Error, OSError) as e:
                    raise IndexUnavailable(str(e)) from None
            except OSError as e:
                raise IndexUnavailable(str(e)) from None
        return self._env

    def _try_open(self) -> lmdb.Environment:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        env = _open_env(self.directory)
        self._keys = env.open_db(b"keys", dupsort=True, dupfixed=True)
        self._meta = env.open_db(b"meta")
        return env

    def close(self) -> None:
        """Forget the environment (other Index objects on the same file keep working)."""
        self._env = None

    def invalidate(self) -> None:
        """Mark the index stale, so that the next lookup rebuilds it."""
        try:
            env = self._open()
            with env.begin(write=True) as txn:
                txn.delete(b"sig", db=self._meta)
        except (IndexUnavailable, lmdb.Error):
            pass

    def lookup(
        self, fd: int, st: os.stat_result, attr: str, value: str, filename: str
    ) -> list[tuple[int, int]]:
        """The (offset, length) of every entry of the open file *fd* holding ``attr=value``,
        updating the index first when the file changed. Raises IndexUnavailable."""
        env = self._open()
        key = key_of(attr, value)
        sig = _signature(st)
        try:
            with env.begin() as txn:
                if txn.get(b"sig", db=self._meta) == sig and self._has_attr(txn, attr):
                    return self._spans(txn, key)
            with gc_paused(), env.begin(write=True) as txn:
                self._update(txn, fd, st, sig, attr, filename)
                return self._spans(txn, key)
        except lmdb.Error as e:
            raise IndexUnavailable(str(e)) from None

    # -- internals ------------------------------------------------------------------------

    def _has_attr(self, txn: lmdb.Transaction, attr: str) -> bool:
        return txn.get(b"attr:" + attr.encode("utf-8"), db=self._meta) is not None

    def _spans(self, txn: lmdb.Transaction, key: bytes) -> list[tuple[int, int]]:
        cur = txn.cursor(db=self._keys)
        if not cur.set_key(key):
            return []
        return [_SPAN.unpack(v) for v in cur.iternext_dup()]

    def _update(
        self,
        txn: lmdb.Transaction,
        fd: int,
        st: os.stat_result,
        sig: bytes,
        attr: str,
        filename: str,
    ) -> None:
        """Bring the index up to date with the file as *st* describes it, and make sure
        *attr* is indexed. Runs inside the write transaction, so concurrent updaters
        (other processes) take turns and the second finds the work done."""
        meta = self._meta
        attrs = {k[5:].decode("utf-8") for k, _ in txn.cursor(db=meta) if k.startswith(b"attr:")}
        known = attr in attrs
        old = txn.get(b"sig", db=meta)
        if old == sig and known and txn.get(b"format", db=meta) == FORMAT:
            return
        attrs.add(attr)
        start = self._appended_from(txn, fd, st, old) if known else None
        if start is None:
            txn.drop(self._keys, delete=False)
            start = 0
        data = os.pread(fd, st.st_size - start, start)
        parsed = parse(data, filename, offset=start)
        self._put(txn, parsed.entries, attrs)
        end = parsed.end
        txn.put(b"sig", sig, db=meta)
        txn.put(b"end", struct.pack(">Q", end), db=meta)
        txn.put(b"tail", _tail_digest(fd, end), db=meta)
        txn.put(b"format", FORMAT, db=meta)
        for a in attrs:
            txn.put(b"attr:" + a.encode("utf-8"), b"", db=meta)

    def _appended_from(
        self, txn: lmdb.Transaction, fd: int, st: os.stat_result, old: bytes | None
    ) -> int | None:
        """Where new text starts if the file only grew since it was indexed, else None."""
        if old is None or txn.get(b"format", db=self._meta) != FORMAT:
            return None
        dev, ino, size, _mtime = _SIG.unpack(old)
        raw_end = txn.get(b"end", db=self._meta)
        if (dev, ino) != (st.st_dev, st.st_ino) or st.st_size <= size or raw_end is None:
            return None
        (end,) = struct.unpack(">Q", raw_end)
        if st.st_size < end or txn.get(b"tail", db=self._meta) != _tail_digest(fd, end):
            return None
        # The first line after `end` that is not a comment must start an entry: an indented
        # line would continue the last indexed entry, whose span is then wrong.
        probe = os.pread(fd, min(st.st_size - end, 1 << 16), end)
        for line in probe.split(b"\n"):
            if line[:1] == b"#":
                continue
            if line[:1] in (b" ", b"\t", b"\r"):
                return None
            break
        return end

    def _put(self, txn: lmdb.Transaction, entries: Iterable[Entry], attrs: set[str]) -> None:
        items = []
        pack = _SPAN.pack
        for e in entries:
            span = pack(e.start, e.end - e.start)
            for p in e.pairs:
                if p.attr in attrs:
                    items.append((key_of(p.attr, p.value), span))
        items.sort()
        if items:
            txn.cursor(db=self._keys).putmulti(items, dupdata=True)
