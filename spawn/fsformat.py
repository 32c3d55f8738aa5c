"""The filesystem archive format (vac, rethought): pure encode/decode, no I/O.

An archive is three kinds of structure over the block store (docs/archive.md has the bytes):

* the **root block** (ROOT): references the inode table; names the root directory's inode,
  the inode high-water mark, the snapshot's time, name, user and ``prev``;
* the **inode table**: a b-tree (store.btree, META nodes) keyed by the inode number as u64
  big-endian, whose values are inode records; an entry references the inode's content
  (a file's hash tree, a directory's b-tree);
* **directories**: b-trees (DIR nodes) keyed by the entry name's bytes, whose values are the
  inode number and the file type.

Names are looked up in O(log n) blocks; a changed file rewrites its hash tree leaves, its
inode-table path and the root, not its directory. Inode numbers live in the archive, so they
are stable across rename, save and respawn, and hard links are one inode under several names.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field

from store.errors import InvalidBlock
from store.score import NULL_SCORE, SCORE_SIZE, Score
from store.varint import decode_uvarint as _read_uvarint
from store.varint import encode_uvarint as _uvarint

FORMAT_VERSION = 1
NAME_MAX = 255

_INODE = struct.Struct(">BIIIIQqqqQB")  # version mode uid gid nlink size atime mtime ctime rdev content
_ROOT = struct.Struct(">BQQq32s")  # version root_ino ino_high time_ns prev
_DIRENT = struct.Struct(">QB")

CONTENT_NONE = 0
CONTENT_TREE = 1  # entry ref 0: a regular file's hash tree, or a directory's b-tree
CONTENT_INLINE = 2  # TAG_INLINE holds the bytes (symlink targets)

TAG_INLINE = 1
TAG_USER = 2
TAG_GROUP = 3
TAG_XATTR = 4
TAG_NAME = 5


class BadName(ValueError):
    """A directory entry name that no filesystem entry may have."""


def check_name(name: bytes) -> bytes:
    """A valid entry name: 1..255 bytes, no ``/`` or NUL, not ``.`` or ``..``."""
    if not name:
        raise BadName("empty name")
    if len(name) > NAME_MAX:
        raise BadName(f"name of {len(name)} bytes exceeds {NAME_MAX}")
    if b"/" in name or b"\0" in name:
        raise BadName(f"name {name!r} contains '/' or NUL")
    if name in (b".", b".."):
        raise BadName(f"name {name!r} is reserved")
    return name






def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _uvarint(len(value)) + value


def _read_tlvs(buf: bytes, pos: int) -> list[tuple[int, bytes]]:
    out = []
    while pos < len(buf):
        tag = buf[pos]
        n, pos = _read_uvarint(buf, pos + 1)
        if pos + n > len(buf):
            raise InvalidBlock("archive record: field overruns the record")
        out.append((tag, buf[pos : pos + n]))
        pos += n
    return out


@dataclass(frozen=True, slots=True)
class Inode:
    """One inode: metadata plus where its content is."""

    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    content: Score = NULL_SCORE  # hash tree (files) or b-tree (directories)
    inline: bytes = b""  # symlink target
    user: str = ""
    group: str = ""
    xattrs: tuple[tuple[bytes, bytes], ...] = field(default=())

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def refs(self) -> tuple[Score, ...]:
        return (self.content,) if self.content != NULL_SCORE else ()


def encode_inode(ino: Inode) -> bytes:
    if ino.content != NULL_SCORE:
        content = CONTENT_TREE
    elif ino.inline:
        content = CONTENT_INLINE
    else:
        content = CONTENT_NONE
    out = bytearray(
        _INODE.pack(
            FORMAT_VERSION, ino.mode, ino.uid, ino.gid, ino.nlink, ino.size,
            ino.atime_ns, ino.mtime_ns, ino.ctime_ns, ino.rdev, content,
        )
    )
    if ino.inline:
        out += _tlv(TAG_INLINE, ino.inline)
    if ino.user:
        out += _tlv(TAG_USER, ino.user.encode())
    if ino.group:
        out += _tlv(TAG_GROUP, ino.group.encode())
    for name, value in sorted(ino.xattrs):
        out += _tlv(TAG_XATTR, _uvarint(len(name)) + name + value)
    return bytes(out)


def decode_inode(buf: bytes, refs: tuple[Score, ...]) -> Inode:
    if len(buf) < _INODE.size:
        raise InvalidBlock("inode record truncated")
    (ver, mode, uid, gid, nlink, size, at, mt, ct, rdev, content) = _INODE.unpack_from(buf)
    if ver != FORMAT_VERSION:
        raise InvalidBlock(f"inode record version {ver} is not {FORMAT_VERSION}")
    inline = b""
    user = group = ""
    xattrs: list[tuple[bytes, bytes]] = []
    for tag, val in _read_tlvs(buf, _INODE.size):
        if tag == TAG_INLINE:
            inline = val
        elif tag == TAG_USER:
            user = val.decode()
        elif tag == TAG_GROUP:
            group = val.decode()
        elif tag == TAG_XATTR:
            n, p = _read_uvarint(val, 0)
            xattrs.append((val[p : p + n], val[p + n :]))
        # unknown tags are skipped: newer writers may add fields
    if content == CONTENT_TREE:
        if len(refs) != 1:
            raise InvalidBlock("inode record with tree content needs exactly one reference")
        score = refs[0]
    else:
        if refs:
            raise InvalidBlock("inode record without tree content has references")
        score = NULL_SCORE
    return Inode(mode, uid, gid, nlink, size, at, mt, ct, rdev, score, inline, user, group, tuple(xattrs))


def ino_key(ino: int) -> bytes:
    return ino.to_bytes(8, "big")


def key_ino(key: bytes) -> int:
    return int.from_bytes(key, "big")


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    ino: int
    dtype: int  # S_IFMT(mode) >> 12, as readdir's d_type


def encode_dirent(ino: int, mode: int) -> bytes:
    return _DIRENT.pack(ino, stat.S_IFMT(mode) >> 12)


def decode_dirent(name: bytes, value: bytes) -> DirEntry:
    if len(value) != _DIRENT.size:
        raise InvalidBlock("directory entry value has the wrong size")
    ino, dtype = _DIRENT.unpack(value)
    return DirEntry(name, ino, dtype)


@dataclass(frozen=True, slots=True)
class Root:
    inode_table: Score
    root_ino: int
    ino_high: int  # every inode number in the archive is below this
    time_ns: int
    name: str = ""
    user: str = ""
    prev: Score = NULL_SCORE


def encode_root(r: Root) -> tuple[list[Score], bytes]:
    """(references, body) of a ROOT block: pass to store.block.encode_refs."""
    body = bytearray(_ROOT.pack(FORMAT_VERSION, r.root_ino, r.ino_high, r.time_ns, r.prev))
    if r.name:
        body += _tlv(TAG_NAME, r.name.encode())
    if r.user:
        body += _tlv(TAG_USER, r.user.encode())
    return [r.inode_table], bytes(body)


def decode_root(refs: list[Score], body: bytes) -> Root:
    if len(refs) != 1 or len(body) < _ROOT.size:
        raise InvalidBlock("root block malformed")
    ver, root_ino, high, t, prev = _ROOT.unpack_from(body)
    if ver != FORMAT_VERSION:
        raise InvalidBlock(f"root block version {ver} is not {FORMAT_VERSION}")
    name = user = ""
    for tag, val in _read_tlvs(bytes(body), _ROOT.size):
        if tag == TAG_NAME:
            name = val.decode()
        elif tag == TAG_USER:
            user = val.decode()
    if len(prev) != SCORE_SIZE:
        raise InvalidBlock("root block prev malformed")
    return Root(refs[0], root_ino, high, t, name, user, Score(prev))
