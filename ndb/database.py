"""ndb files on disk: reading (scan or index), ``database=`` chains, and safe updates.

Reading. ``NdbFile`` reads one file. Small files are parsed whole and kept parsed until
their (device, inode, size, mtime) changes; files from ``INDEX_THRESHOLD`` bytes up are
queried through their LMDB index (ndb.index), built and refreshed on demand. A missing
file reads as empty, as in Plan 9 where ``ndbopen`` skips files it cannot open.

Chains. ``Database(root)`` is Plan 9's ``ndbopen``: the root file is searched first, then
each ``file=`` of the root's ``database=`` entry in order; listing the root file itself
among them moves it to that place. Relative ``file=`` paths are taken relative to the root
file's directory (Plan 9 takes them as they are; ours must not depend on the current
directory). Chained files' own ``database=`` entries are not followed, as in Plan 9.

Updates. Writers take an exclusive ``flock`` on the file itself, then check that the path
still names the inode they locked (a replace may have renamed a new file over it while
they waited) and try again if not. Under the lock:

- *append* writes whole entries, each on one line, with a single ``write()`` on an
  ``O_APPEND`` descriptor, then ``fsync``. A writer killed part-way leaves at worst an
  incomplete final line; every reader ignores an incomplete final line (ndb.syntax), so the
  file still parses and means what it meant before. The next writer moves such a torn tail
  to ``FILE.torn`` (appending, so nothing is ever silently destroyed) and truncates it away
  before it appends.
- *replace* writes the new text to a temporary file in the same directory, ``fsync``\\ s it,
  ``rename``\\ s it over the old one and ``fsync``\\ s the directory: readers see the old file
  or the new one, never a mix.

Readers take no lock: appends and renames are what make their view consistent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ndb.errors import NdbError
from ndb.index import Index, IndexUnavailable
from ndb.query import Match, match_entry, search
from ndb.syntax import Entry, Parsed, format_entry_line, parse

INDEX_THRESHOLD = 128 * 1024
"""Files at least this large are queried through their index (Plan 9's libndb complains
about a missing hash file from 128 KiB up)."""

TORN_SUFFIX = ".torn"

_EMPTY = Parsed((), 0, b"")


def _sig(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class NdbFile:
    """One ndb file: parsed on demand, queried by scan or through its index.

    *index*: True always uses the index, False never, None (the default) from
    ``INDEX_THRESHOLD`` bytes up.
    """

    def __init__(self, path: str | os.PathLike[str], *, index: bool | None = None) -> None:
        self.path = Path(path)
        self.index_mode = index
        self._parsed: tuple[tuple[int, int, int, int], Parsed] | None = None
        self._index: Index | None = None

    def __repr__(self) -> str:
        return f"NdbFile({str(self.path)!r})"

    @property
    def name(self) -> str:
        return str(self.path)

    def parse(self) -> Parsed:
        """The whole file parsed (cached while the file is unchanged)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return _EMPTY
        try:
            return self._parse_fd(fd, os.fstat(fd))
        finally:
            os.close(fd)

    def entries(self) -> tuple[Entry, ...]:
        return self.parse().entries

    def _parse_fd(self, fd: int, st: os.stat_result) -> Parsed:
        sig = _sig(st)
        if self._parsed is not None and self._parsed[0] == sig:
            return self._parsed[1]
        parsed = parse(_pread_all(fd, st.st_size), self.name)
        self._parsed = (sig, parsed)
        return parsed

    def uses_index(self, size: int) -> bool:
        if self.index_mode is None:
            return size >= INDEX_THRESHOLD
        return self.index_mode

    def search(self, attr: str, value: str) -> list[Match]:
        """The entries holding ``attr=value``, in file order."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            st = os.fstat(fd)
            if self.uses_index(st.st_size):
                found = self._search_index(fd, st, attr, value)
                if found is not None:
                    return found
            return list(search(self._parse_fd(fd, st).entries, attr, value))
        finally:
            os.close(fd)

    def _search_index(
        self, fd: int, st: os.stat_result, attr: str, value: str
    ) -> list[Match] | None:
        if self._index is None:
            self._index = Index(self.path)
        for _attempt in range(2):
            try:
                spans = self._index.lookup(fd, st, attr, value, self.name)
            except IndexUnavailable:
                return None
            found = []
            for offset, length in spans:
                m = self._read_match(fd, offset, length, attr, value)
                if m is None:
                    break
                found.append(m)
            else:
                return found
            # An entry read through the index does not hold the pair: the file changed in a
            # way the signature missed. Rebuild once, then give up on the index.
            self._index.invalidate()
        return None

    def _read_match(self, fd: int, offset: int, length: int, attr: str, value: str) -> Match | None:
        data = os.pread(fd, length, offset)
        if len(data) != length or (offset and os.pread(fd, 1, offset - 1) != b"\n"):
            return None
        try:
            parsed = parse(data, self.name, offset=offset)
        except NdbError:
            return None
        if len(parsed.entries) != 1:
            return None
        return match_entry(parsed.entries[0], attr, value)

    # -- updates ---------------------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> None:
        """Append *entries* atomically (see the module docstring). The text is formatted
        before the file is touched, so a value that cannot be written changes nothing."""
        data = "".join(format_entry_line(e) for e in entries).encode("utf-8")
        if not data:
            return
        with locked(self.path) as f:
            f.append(data)

    def locked(self) -> contextlib.AbstractContextManager[LockedFile]:
        return locked(self.path)


class Database:
    """A chain of ndb files opened from a root file (Plan 9's ``ndbopen``)."""

    def __init__(self, root: str | os.PathLike[str], *, index: bool | None = None) -> None:
        self.root = Path(root)
        self.index_mode = index
        self._files: dict[Path, NdbFile] = {}

    def _file(self, path: Path) -> NdbFile:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = NdbFile(path, index=self.index_mode)
        return f

    def files(self) -> list[NdbFile]:
        """The files in search order."""
        root = self._file(self.root)
        order = [root]
        found = root.search("database", "")
        if not found:
            return order
        base = self.root.parent
        for value in found[0].entry.values("file"):
            if not value:
                continue
            path = Path(value) if os.path.isabs(value) else base / value
            if path == self.root or _same_file(path, self.root):
                order.remove(root)
                order.append(root)
                continue
            f = self._file(path)
            if f not in order:
                order.append(f)
        return order

    def search(self, attr: str, value: str) -> Iterator[Match]:
        """Matching entries of every file, in chain order."""
        for f in self.files():
            yield from f.search(attr, value)

    def entries(self) -> Iterator[Entry]:
        for f in self.files():
            yield from f.entries()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _pread_all(fd: int, size: int) -> bytes:
    chunks = []
    pos = 0
    while pos < size:
        chunk = os.pread(fd, size - pos, pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


# -- locking ---------------------------------------------------------------------------------


class LockedFile:
    """An ndb file held under an exclusive lock (from ``locked``)."""

    def __init__(self, path: Path, fd: int, created: bool) -> None:
        self.path = path
        self.fd = fd
        self.created = created

    def read(self) -> bytes:
        """The whole file as it stands."""
        return _pread_all(self.fd, os.fstat(self.fd).st_size)

    def parse(self) -> Parsed:
        return parse(self.read(), str(self.path))

    def append(self, data: bytes) -> None:
        """Append whole lines with one ``write()``, then fsync."""
        if not data.endswith(b"\n"):
            raise ValueError("appended data must end with a newline")
        self._drop_torn_tail()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)
        if self.created:
            _fsync_dir(self.path.parent)
            self.created = False

    def replace(self, data: bytes) -> None:
        """Make *data* the file's content: temp file, fsync, rename, fsync the directory."""
        torn = parse_torn(self.read())
        if torn:
            _set_aside(self.path, torn)
        mode = os.fstat(self.fd).st_mode & 0o7777
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(tmp, self.path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.path.parent)

    def _drop_torn_tail(self) -> None:
        size = os.fstat(self.fd).st_size
        if size == 0 or os.pread(self.fd, 1, size - 1) == b"\n":
            return
        cut = _last_newline_end(self.fd, size)
        _set_aside(self.path, os.pread(self.fd, size - cut, cut))
        os.ftruncate(self.fd, cut)
        os.fsync(self.fd)


def parse_torn(data: bytes) -> bytes:
    """The incomplete final line of *data* (empty when it ends with a newline)."""
    return data[data.rfind(b"\n") + 1 :]


def _last_newline_end(fd: int, size: int) -> int:
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def _set_aside(path: Path, torn: bytes) -> None:
    """Keep an incomplete last line in FILE.torn rather than destroy it."""
    aside = path.with_name(path.name + TORN_SUFFIX)
    fd = os.open(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, torn + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[LockedFile]:
    """Hold *path* (created empty when missing) under an exclusive flock.

    The lock is on the file's inode; after a replace renamed a new file over the path,
    a writer that was waiting on the old inode notices and locks the new one instead.
    """
    p = Path(path)
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    while True:
        created = False
        try:
            fd = os.open(p, flags | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            try:
                fd = os.open(p, flags)
            except FileNotFoundError:
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(p)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                continue
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EINTR:
                continue
            raise
        try:
            yield LockedFile(p, fd, created)
        finally:
            os.close(fd)
        return
