"""The FUSE kernel protocol (linux/fuse.h, protocol 7.x), as bytes: a pure codec.

grid speaks to /dev/fuse itself rather than through libfuse (docs/spawn.md, "FUSE without
libfuse" says why: one process serves every mount of every spawn, on the spawn's own host
thread, and a mount outlives the process serving it). This module only turns the kernel's
request bytes into fields and replies into bytes; nothing here touches a descriptor.

A request is a 40-byte header (``InHeader``) and an opcode-specific body; a reply is a
16-byte header (length, negative errno, the request's ``unique``) and a body. Notifications
(server to kernel, unasked) use ``unique`` 0 and the notification code in the error field.
All integers are little-endian (the kernel's native order on every machine grid runs on).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

KERNEL_MAJOR = 7
KERNEL_MINOR = 31  # what we speak; the kernel's may be higher (it then speaks ours)

# -- opcodes -----------------------------------------------------------------------------------
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR = 17, 18, 20, 21, 22, 23, 24
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 25, 26, 27, 28, 29, 30
GETLK, SETLK, SETLKW, ACCESS, CREATE, INTERRUPT, BMAP, DESTROY = 31, 32, 33, 34, 35, 36, 37, 38
IOCTL, POLL, NOTIFY_REPLY, BATCH_FORGET, FALLOCATE, READDIRPLUS = 39, 40, 41, 42, 43, 44
RENAME2, LSEEK, COPY_FILE_RANGE, SYNCFS, TMPFILE, STATX = 45, 46, 47, 50, 51, 52

NAMES = {v: k for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)
         and k not in ("KERNEL_MAJOR", "KERNEL_MINOR")}

# -- INIT flags ----------------------------------------------------------------------------------
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28

# -- notifications -----------------------------------------------------------------------------
NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3
NOTIFY_RESEND = 7

# -- other flags -------------------------------------------------------------------------------
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1 << 4, 1 << 5, 1 << 6
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_LOCKOWNER, FATTR_CTIME = 1 << 7, 1 << 8, 1 << 9, 1 << 10
FATTR_KILL_SUIDGID = 1 << 11
FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE = 1 << 0, 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
OPEN_KILL_SUIDGID = 1 << 0
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1 << 0, 1 << 1, 1 << 2

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # 88 bytes
ENTRY_HEAD = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid (+nsec)
ATTR_OUT_HEAD = struct.Struct("<QII")
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (flags2 and more follow)
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # 64 bytes
GETATTR_IN = struct.Struct("<IIQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")  # 88 bytes
MKNOD_IN = struct.Struct("<IIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")
OPEN_OUT = struct.Struct("<QIi")
CREATE_IN = struct.Struct("<IIII")
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags pad
WRITE_IN = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags pad
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
SETXATTR_IN = struct.Struct("<II")
GETXATTR_IN = struct.Struct("<II")
GETXATTR_OUT = struct.Struct("<II")
ACCESS_IN = struct.Struct("<II")
INTERRUPT_IN = struct.Struct("<Q")
FALLOCATE_IN = struct.Struct("<QQQII")
STATFS_OUT = struct.Struct("<QQQQQIII4x24x")  # 80 bytes
DIRENT_HEAD = struct.Struct("<QQII")  # ino off namelen type
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")

assert ATTR.size == 88 and SETATTR_IN.size == 88 and INIT_OUT.size == 64 and STATFS_OUT.size == 80


class ProtocolError(Exception):
    """The kernel sent something we cannot parse (a short or inconsistent request)."""


@dataclass(frozen=True, slots=True)
class Request:
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: memoryview  # the opcode's arguments


def parse(buf: memoryview) -> Request:
    """One request, as read from /dev/fuse (each read returns exactly one)."""
    if len(buf) < IN_HEADER.size:
        raise ProtocolError(f"short request ({len(buf)} bytes)")
    n, opcode, unique, nodeid, uid, gid, pid, extlen, _ = IN_HEADER.unpack_from(buf)
    if n != len(buf):
        raise ProtocolError(f"request length {n} but {len(buf)} bytes read")
    end = n - extlen * 8  # extensions (security context, supplementary group) at the end
    return Request(opcode, unique, nodeid, uid, gid, pid, buf[IN_HEADER.size : max(end, IN_HEADER.size)])


def cstr(body: memoryview, start: int = 0) -> tuple[bytes, int]:
    """A NUL-terminated name at *start*: (name, offset after the NUL)."""
    raw = bytes(body[start:])
    i = raw.find(b"\0")
    if i < 0:
        raise ProtocolError("name without a terminating NUL")
    return raw[:i], start + i + 1


def reply(unique: int, body: bytes = b"") -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), 0, unique) + body


def reply_error(unique: int, errno_: int) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size, -errno_, unique)


def notify(code: int, body: bytes) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), code, 0) + body


def _split(ns: int) -> tuple[int, int]:
    s, n = divmod(ns, 1_000_000_000)
    return s, n


def attr(ino: int, mode: int, nlink: int, uid: int, gid: int, rdev: int, size: int,
         blocks: int, atime_ns: int, mtime_ns: int, ctime_ns: int, blksize: int) -> bytes:
    a, an = _split(atime_ns)
    m, mn = _split(mtime_ns)
    c, cn = _split(ctime_ns)
    return ATTR.pack(ino, size, blocks, a & 0xFFFFFFFFFFFFFFFF, m & 0xFFFFFFFFFFFFFFFF,
                     c & 0xFFFFFFFFFFFFFFFF, an, mn, cn, mode, nlink, uid, gid,
                     rdev & 0xFFFFFFFF, blksize, 0)


def _valid(seconds: float) -> tuple[int, int]:
    s = int(seconds)
    return s, int((seconds - s) * 1e9)


def entry_out(nodeid: int, attr_bytes: bytes, timeout: float) -> bytes:
    s, ns = _valid(timeout)
    return ENTRY_HEAD.pack(nodeid, 0, s, s, ns, ns) + attr_bytes


def attr_out(attr_bytes: bytes, timeout: float) -> bytes:
    s, ns = _valid(timeout)
    return ATTR_OUT_HEAD.pack(s, ns, 0) + attr_bytes


def dirent(ino: int, off: int, name: bytes, dtype: int) -> bytes:
    rec = DIRENT_HEAD.pack(ino, off, len(name), dtype) + name
    return rec + b"\0" * (-len(rec) % 8)


def direntplus(entry: bytes, ino: int, off: int, name: bytes, dtype: int) -> bytes:
    return entry + dirent(ino, off, name, dtype)
