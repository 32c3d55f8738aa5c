"""Snapshot a directory tree's full state (for comparing an exported tree with its source)."""

from __future__ import annotations

import hashlib
import os
import stat


def _extents(path: bytes, size: int) -> list[tuple[int, int]]:
    """Data extents by SEEK_DATA/SEEK_HOLE: where the file really has blocks."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h))
            pos = h
    finally:
        os.close(fd)
    return out


def _walk(top: bytes):
    """Like os.walk, but listing with O_NOATIME so that looking does not change atimes."""
    stack = [top]
    while stack:
        d = stack.pop()
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOATIME", 0))
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(fd))
        finally:
            os.close(fd)
        yield d, names
        for n in names:
            p = os.path.join(d, n)
            if stat.S_ISDIR(os.lstat(p).st_mode):
                stack.append(p)


def data_bytes(path: bytes | str) -> int:
    """Bytes of a file that are data rather than holes."""
    st = os.stat(path)
    return sum(b - a for a, b in _extents(os.fsencode(path), st.st_size))


def snapshot(top: bytes | str, *, content: bool = True, atime: bool = True) -> dict:
    top = os.fsencode(top)
    meta: dict[bytes, dict] = {}
    groups: dict[tuple[int, int], list[bytes]] = {}
    for dirpath, names in _walk(top):
        for name in names + ([b""] if dirpath == top else []):
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            m = {
                "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                "mtime": st.st_mtime_ns,
                "xattrs": sorted((n, os.getxattr(p, n, follow_symlinks=False)) for n in os.listxattr(p, follow_symlinks=False)),
            }
            if atime and not stat.S_ISLNK(st.st_mode):
                m["atime"] = st.st_atime_ns
            if not stat.S_ISDIR(st.st_mode):
                m["size"] = st.st_size
                m["nlink"] = st.st_nlink
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                m["rdev"] = st.st_rdev
            if stat.S_ISLNK(st.st_mode):
                m["target"] = os.readlink(p)
            if not stat.S_ISDIR(st.st_mode):
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
            meta[rel] = m
    # Contents after metadata (reading changes atime where O_NOATIME is not used).
    for rel, m in meta.items():
        if stat.S_ISREG(m["mode"]):
            p = os.path.join(top, rel)
            if content:
                h = hashlib.blake2b()
                fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
                try:
                    while chunk := os.read(fd, 1 << 20):
                        h.update(chunk)
                finally:
                    os.close(fd)
                m["digest"] = h.hexdigest()
    links = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    return {"meta": meta, "links": links}
