"""Permissions, once: the rules a Linux kernel filesystem applies, for every engine operation.

Every operation of the engine (spawn.engine) carries the caller's credentials (spawn.cred)
and asks here before it changes or reveals anything, so FUSE, 9P (all dialects), SFTP and raw
daemon sessions get one behaviour; adapters translate and check nothing. The FUSE mount keeps
the kernel's ``default_permissions`` as a second check. docs/spawn.md ("Permissions") states
the rules; they follow Linux's fs/namei.c and fs/attr.c, and where Linux and POSIX leave a
choice (which error first), the order is Linux's, so that tools written against ext4 see
what they expect:

* permission: the owner class wins (an owner without a bit is refused even when others have
  it); root passes every check, except execute of a file with no execute bit at all;
* a directory: search (x) to look a name up, write and search to add or remove one; in a
  sticky directory only the file's owner, the directory's owner or root removes or renames;
* attributes: chmod and explicit times by the owner or root (EPERM); both times set to now
  also by anyone who may write (EACCES), one of them alone not (EPERM); chown by root (the owner may "change" to the same uid),
  chgrp by the owner to a group of its own; a chmod by a non-member of the file's group drops
  setgid; any chown of a non-directory, even to the same owner, drops setuid (and setgid as
  a write does), for root too;
* writes and truncations by anyone but root drop setuid, and setgid when group-executable
  or when the writer is not in the file's group;
* device nodes (and whiteouts) by root only (EPERM); fifos, sockets and files by anyone;
* a hard link to another's file needs read and write on it and no setuid/setgid-exec
  (fs.protected_hardlinks, Debian's default);
* xattrs: ``trusted.`` is root's (others get EPERM to write, ENODATA to read, and do not see
  the names), ``security.`` is readable by all and written by root, ``user.`` only on files
  and directories and needs the file's permission; other namespaces are EOPNOTSUPP.

Errors are OSError: EACCES for permission bits, EPERM for ownership and privilege.
"""

from __future__ import annotations

import errno
import os
import stat

from spawn.cred import Cred
from spawn.fsformat import Inode

R, W, X = 4, 2, 1
#: Linux's __FMODE_EXEC in open flags (FUSE passes it on an open for execve): the open needs
#: execute permission, not read.
O_EXEC = 0o40


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


def allowed(cred: Cred, i: Inode, want: int) -> bool:
    """May *cred* do *want* (R|W|X bits) to inode *i*? (Linux's generic_permission.)"""
    if cred.root:
        return not (want & X and not i.is_dir() and not i.mode & 0o111)
    mode = i.mode
    if cred.uid == i.uid:
        have = (mode >> 6) & 7
    elif cred.in_group(i.gid):
        have = (mode >> 3) & 7
    else:
        have = mode & 7
    return want & ~have == 0


def check(cred: Cred, i: Inode, want: int, what: str = "") -> None:
    if not allowed(cred, i, want):
        raise _err(errno.EACCES, what)


def owner_or_root(cred: Cred, i: Inode) -> bool:
    return cred.root or cred.uid == i.uid


def search(cred: Cred, d: Inode) -> None:
    """Looking a name up in directory *d*."""
    check(cred, d, X)


def may_create(cred: Cred, d: Inode) -> None:
    """Adding a name to directory *d* (after the caller has found the name free)."""
    check(cred, d, W | X)


def may_delete(cred: Cred, d: Inode, victim: Inode) -> None:
    """Removing (or renaming away, or replacing) *victim*'s name in directory *d*."""
    check(cred, d, W | X)
    if d.mode & stat.S_ISVTX and not cred.root and cred.uid not in (d.uid, victim.uid):
        raise _err(errno.EPERM, "sticky directory")


def may_mknod(cred: Cred, mode: int) -> None:
    if stat.S_IFMT(mode) in (stat.S_IFCHR, stat.S_IFBLK) and not cred.root:
        raise _err(errno.EPERM, "device nodes are root's to make")


def may_whiteout(cred: Cred) -> None:
    if not cred.root:
        raise _err(errno.EPERM, "RENAME_WHITEOUT is root's")


def may_link(cred: Cred, i: Inode) -> None:
    """A hard link to *i* by someone not its owner (fs.protected_hardlinks)."""
    if owner_or_root(cred, i):
        return
    exec_sgid = i.mode & (stat.S_ISGID | stat.S_IXGRP) == (stat.S_ISGID | stat.S_IXGRP)
    if not i.is_reg() or i.mode & stat.S_ISUID or exec_sgid or not allowed(cred, i, R | W):
        raise _err(errno.EPERM, "hard link to another user's file")


def may_open(cred: Cred, i: Inode, flags: int) -> None:
    """open(2) of *i* with *flags* (O_ACCMODE, O_TRUNC)."""
    acc = flags & os.O_ACCMODE
    want = 0
    if flags & O_EXEC:
        want |= X
    elif acc in (os.O_RDONLY, os.O_RDWR):
        want |= R
    if acc in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
        want |= W
    if i.is_dir() and want & W:
        raise _err(errno.EISDIR)
    check(cred, i, want)


def new_owner(cred: Cred, d: Inode, mode: int) -> tuple[int, int, int]:
    """(uid, gid, mode) of a file *cred* makes in directory *d* (Linux's inode_init_owner):
    a setgid directory gives its group, and keeps a new directory setgid; a new setgid file
    of a group its maker is not in loses setgid."""
    gid = cred.gid
    if d.mode & stat.S_ISGID:
        gid = d.gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
        elif (mode & (stat.S_ISGID | stat.S_IXGRP) == (stat.S_ISGID | stat.S_IXGRP)
              and not cred.root and not cred.in_group(gid)):
            mode &= ~stat.S_ISGID
    return cred.uid, gid, mode


def killed(cred: Cred, i: Inode, mode: int) -> int:
    """*mode* (of file *i*) without setuid, and without setgid when it is group-executable or
    *cred* is neither in the file's group nor root (Linux's setattr_should_drop_sgid: a
    setgid file without group execute is kept for its group's members)."""
    drop = stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not (cred.root or cred.in_group(i.gid))):
        drop |= stat.S_ISGID
    return mode & ~drop


def after_write(cred: Cred, i: Inode) -> int | None:
    """The mode a write or truncation by *cred* leaves (None: unchanged)."""
    if cred.root or not i.is_reg() or not i.mode & (stat.S_ISUID | stat.S_ISGID):
        return None
    m = killed(cred, i, i.mode)
    return m if m != i.mode else None


NOW = -1  # a time in setattr: "the current time", as utimensat's UTIME_NOW


def setattr_changes(cred: Cred, i: Inode, *, mode: int | None, uid: int | None, gid: int | None,
                    size: int | None, atime_ns: int | None, mtime_ns: int | None,
                    handle: bool, chown: bool = False) -> dict[str, int]:
    """Check a setattr by *cred* and return the mode it leaves beside the asked changes
    (``{"mode": m}`` or empty), as Linux's setattr_prepare and notify_change do.

    *handle*: the size change comes through a file handle opened for writing (ftruncate):
    no permission check on the file, as the open made it. *chown*: drop setuid/setgid as a
    chown does, with no owner or group change: ``chown(f, -1, -1)``, or FUSE's bare setattr
    before a write by someone who may write (where ext4 would refuse a stranger's chown of a
    setuid file with EPERM, a stranger who may write the file gets the drop: FUSE does not
    say which of the two it is).
    """
    extra: dict[str, int] = {}
    owner = owner_or_root(cred, i)
    if uid is not None and uid != i.uid and not cred.root:
        raise _err(errno.EPERM, "chown is root's")
    if uid is not None and uid == i.uid and not owner:
        raise _err(errno.EPERM, "chown of another user's file")
    if gid is not None and not cred.root and (
            cred.uid != i.uid or (gid != i.gid and not cred.in_group(gid))):
        raise _err(errno.EPERM, "chgrp to a group not one's own")
    if mode is not None and not owner:
        raise _err(errno.EPERM, "chmod of another user's file")
    explicit = [t for t in (atime_ns, mtime_ns) if t is not None and t != NOW]
    # Linux's ATTR_TIMES_SET: only utimensat's NULL or (NOW, NOW) is a "touch" a writer may
    # do; one time set to now and the other left alone is a change of times, the owner's
    # (a truncation's own time update excepted)
    lone_now = (atime_ns == NOW) != (mtime_ns == NOW) and size is None
    if (explicit or lone_now) and not owner:
        raise _err(errno.EPERM, "setting times of another user's file")
    if (atime_ns == NOW or mtime_ns == NOW) and not explicit and not owner:
        check(cred, i, W, "setting times to now")
    if size is not None:
        if i.is_dir():
            raise _err(errno.EISDIR)
        if not handle:
            check(cred, i, W)
    new = None
    if mode is not None:
        new = stat.S_IFMT(i.mode) | stat.S_IMODE(mode)
        group = gid if gid is not None else i.gid
        if new & stat.S_ISGID and not cred.root and not cred.in_group(group):
            new &= ~stat.S_ISGID
    chowned = (uid is not None or gid is not None or chown) and not i.is_dir()
    truncated_by_user = size is not None and not cred.root and i.is_reg()
    if chowned or truncated_by_user:
        new = killed(cred, i, i.mode if new is None else new)
        if chowned and new != i.mode and not owner and not allowed(cred, i, W):
            # The kernel makes the drop a mode change, which is the owner's (or root's); a
            # bare drop by a writer is FUSE's way of saying a write is coming (see fusechan)
            raise _err(errno.EPERM, "chown of another user's setuid/setgid file")
    if new is not None and (new != i.mode or mode is not None):
        extra["mode"] = new  # also when the drop gives back the old mode: it overrides *mode*
    return extra


def xattr_name_class(name: bytes) -> str:
    for prefix in (b"trusted.", b"security.", b"system.", b"user."):
        if name.startswith(prefix):
            return prefix[:-1].decode()
    return ""


def may_xattr(cred: Cred, i: Inode, name: bytes, write: bool) -> None:
    """Reading (write False) or changing xattr *name* of *i* (Linux's xattr_permission)."""
    cls = xattr_name_class(name)
    if not cls:
        raise _err(errno.EOPNOTSUPP, "xattr namespace")
    if cls == "trusted":
        if not cred.root:
            raise _err(errno.EPERM if write else errno.ENODATA)
        return
    if cls == "system":
        if write and not owner_or_root(cred, i):
            raise _err(errno.EPERM)
        return
    if cls == "user":
        if not (i.is_reg() or i.is_dir()):
            raise _err(errno.EPERM if write else errno.ENODATA)
        if write and i.is_dir() and i.mode & stat.S_ISVTX and not owner_or_root(cred, i):
            raise _err(errno.EPERM)
    if cls == "security":  # commoncap: writing security.* takes CAP_SYS_ADMIN / CAP_SETFCAP
        if write and not cred.root:
            raise _err(errno.EPERM)
        return
    check(cred, i, W if write else R)


def visible_xattr(cred: Cred, name: bytes) -> bool:
    """Does listxattr show *name* to *cred*? (trusted.* only to root.)"""
    return cred.root or not name.startswith(b"trusted.")
