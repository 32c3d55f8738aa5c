"""Export an archive into a directory (``grid export``; unvac).

Safety: every name from the archive is checked (no ``/``, NUL, ``.``, ``..``); everything is
created relative to directory file descriptors that grid itself created and opened with
O_NOFOLLOW, and nothing is ever opened through a symlink, so a hostile archive cannot write
outside the destination. Symlinks in the archive are created, never followed.

Metadata: contents (holes recreated with lseek, not written), mode, xattrs, atime and mtime
to the nanosecond (directory times are set after their contents). ctime cannot be set by
anyone.

Privilege, as tar does for an ordinary user, whoever runs it: by default the tree is the
exporter's own (no owners restored), setuid and setgid bits of files are dropped and device
nodes are skipped, each counted in the summary. A snapshot may hold files another user made
(a shared spawn, a name saved by another user): restoring them as they are, as root, would
hand that user whatever the tree says. ``same_owner`` (``grid export --same-owner``) is the
consent to do so: owners (root may set any; others only their own ids), setuid/setgid bits and
device nodes (root only) as the archive has them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from spawn.archive import Archive, BadArchive
from spawn.fsformat import BadName, Inode, check_name
from store.score import NULL_SCORE

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass
class ExportStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    links: int = 0
    others: int = 0
    bytes: int = 0
    stripped: int = 0  # files whose setuid/setgid bits were dropped (no same_owner)
    devices_skipped: int = 0  # device nodes not made (no same_owner)
    warnings: list[str] = field(default_factory=list)


class ExportError(Exception):
    """An export that cannot go on; the message names the path inside the archive."""


class Exporter:
    def __init__(self, archive: Archive, *, same_owner: bool = False,
                 warn: Callable[[str], None] | None = None,
                 progress: Callable[[ExportStats], None] | None = None) -> None:
        self.a = archive
        self.stats = ExportStats()
        self._warn = warn or (lambda m: None)
        self._progress = progress
        self._done: dict[int, tuple[int, bytes]] = {}  # ino -> (dir fd, name) of its first name
        self.same_owner = same_owner
        self._can_chown = same_owner and os.geteuid() == 0
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._seen_dirs: set[int] = set()  # a directory entered twice is a cycle (BadArchive)

    def warn(self, msg: str) -> None:
        self.stats.warnings.append(msg)
        self._warn(msg)

    def run(self, dest: str | bytes, start_ino: int | None = None) -> ExportStats:
        """Export the directory *start_ino* (default: the root) into *dest*.

        The start is checked before *dest* is made, so refusing it leaves nothing behind.
        A malformed archive met half-way is an ExportError naming the path it reached."""
        dest = os.fsencode(dest)
        ino = self.a.root_ino if start_ino is None else start_ino
        inode = self.a.inode(ino)
        if not inode.is_dir():
            raise ExportError("the exported path is not a directory")
        try:
            os.mkdir(dest, 0o700)
        except FileExistsError:
            if os.listdir(dest):
                raise ExportError(f"{os.fsdecode(dest)} is not empty; export only into a new or empty directory") from None
        except OSError as e:
            raise ExportError(f"{os.fsdecode(dest)}: {e.strerror}") from None
        fd = os.open(dest, _O_DIR)
        try:
            self._fill_dir(fd, ino, b"")
            self._set_meta_fd(fd, inode, is_dir=True)
        finally:
            os.close(fd)
            for kept, _ in self._done.values():
                os.close(kept)
            self._done.clear()
        return self.stats

    def _fill_dir(self, dfd: int, dir_ino: int, path: bytes) -> None:
        self.a.enter_dir(dir_ino, path, self._seen_dirs)
        self.stats.dirs += 1
        for d in self.a.readdir(dir_ino):
            child = path + b"/" + d.name if path else d.name
            try:
                check_name(d.name)
            except BadName:
                raise BadArchive(
                    f"archive {os.fsdecode(path) or '/'}: an entry has an impossible name "
                    f"{d.name.decode('utf-8', 'replace')!r}"
                ) from None
            try:
                self._entry(dfd, d.name, d.ino, child)
            except OSError as e:  # EFBIG for an absurd size, ENOSPC, ...: name the file
                raise ExportError(f"{os.fsdecode(child)}: {e.strerror or e}") from None
            except OverflowError as e:
                raise ExportError(f"{os.fsdecode(child)}: {e}") from None
        if self._progress is not None:
            self._progress(self.stats)

    def _entry(self, dfd: int, name: bytes, ino: int, path: bytes) -> None:
        first = self._done.get(ino)
        if first is not None:
            src_fd, src_name = first
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dfd, follow_symlinks=False)
            self.stats.links += 1
            return
        try:
            inode = self.a.inode(ino)
        except LookupError:
            raise BadArchive(
                f"archive entry {os.fsdecode(path)} names inode {ino}, which the archive lacks"
            ) from None
        kind = inode.kind
        if kind == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=dfd)
            cfd = os.open(name, _O_DIR, dir_fd=dfd)
            try:
                self._fill_dir(cfd, ino, path)
                self._set_meta_fd(cfd, inode, is_dir=True)
            finally:
                os.close(cfd)
            return
        if kind == stat.S_IFREG:
            self._file(dfd, name, inode)
        elif kind == stat.S_IFLNK:
            os.symlink(inode.inline, name, dir_fd=dfd)
            self.stats.symlinks += 1
        elif kind == stat.S_IFIFO:
            os.mkfifo(name, stat.S_IMODE(inode.mode), dir_fd=dfd)
            self.stats.others += 1
        elif kind in (stat.S_IFCHR, stat.S_IFBLK) and not self.same_owner:
            self.stats.devices_skipped += 1  # a device node is a privilege: only with consent
            return
        elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            try:
                os.mknod(name, inode.mode, inode.rdev, dir_fd=dfd)
                self.stats.others += 1
            except PermissionError:
                self.warn(f"cannot create device node {os.fsdecode(name)} (needs root); skipped")
                return
        else:
            self.warn(f"unknown file type {oct(kind)} for {os.fsdecode(name)}; skipped")
            return
        self._set_meta_at(dfd, name, inode)
        if inode.nlink > 1:
            # Keep a descriptor of this directory so later names can link to this one.
            self._done[ino] = (os.dup(dfd), name)

    def _file(self, dfd: int, name: bytes, inode: Inode) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            if inode.content != NULL_SCORE:
                r = self.a.open(0, inode)
                pos = 0
                for score, size in r.leaf_scores():
                    if score == NULL_SCORE:
                        pos += size
                        continue
                    data = r.store.get(score).data
                    os.pwrite(fd, data, pos)
                    pos += size
                    self.stats.bytes += size
            os.ftruncate(fd, inode.size)
            for k, v in inode.xattrs:
                try:
                    os.setxattr(fd, k, v)
                except OSError as e:
                    self.warn(f"xattr {k!r} on {os.fsdecode(name)}: {e.strerror}")
        finally:
            os.close(fd)
        self.stats.files += 1

    def _owner(self, inode: Inode) -> tuple[int, int] | None:
        if self._can_chown:
            return inode.uid, inode.gid
        return None

    def _set_meta_at(self, dfd: int, name: bytes, inode: Inode) -> None:
        own = self._owner(inode)
        if own is not None:
            try:
                os.chown(name, own[0], own[1], dir_fd=dfd, follow_symlinks=False)
            except OSError as e:
                self.warn(f"chown {os.fsdecode(name)}: {e.strerror}")
        if not inode.is_symlink():
            _chmod_at(dfd, name, self._mode(inode))
        if not inode.is_reg():  # regular files got theirs through their descriptor
            where = b"/proc/self/fd/%d/" % dfd + name
            for k, v in inode.xattrs:
                try:
                    os.setxattr(where, k, v, follow_symlinks=False)
                except OSError as e:
                    self.warn(f"xattr {k!r} on {os.fsdecode(name)}: {e.strerror}")
        os.utime(name, ns=(inode.atime_ns, inode.mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def _set_meta_fd(self, fd: int, inode: Inode, *, is_dir: bool) -> None:
        for k, v in inode.xattrs:
            try:
                os.setxattr(fd, k, v)
            except OSError as e:
                self.warn(f"xattr {k!r}: {e.strerror}")
        own = self._owner(inode)
        if own is not None:
            try:
                os.fchown(fd, own[0], own[1])
            except OSError as e:
                self.warn(f"chown: {e.strerror}")
        os.fchmod(fd, self._mode(inode))
        os.utime(fd, ns=(inode.atime_ns, inode.mtime_ns))

    def _mode(self, inode: Inode) -> int:
        """The permission bits to give: the archive's, without setuid/setgid on anything but
        a directory unless ``same_owner`` (a setgid directory only passes its group on)."""
        mode = stat.S_IMODE(inode.mode)
        if not self.same_owner and not inode.is_dir() and mode & (stat.S_ISUID | stat.S_ISGID):
            self.stats.stripped += 1
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode


def _chmod_at(dfd: int, name: bytes, mode: int) -> None:
    """chmod a non-symlink entry without following a symlink that raced into its place."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        return
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)
