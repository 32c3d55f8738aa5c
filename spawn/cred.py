"""Who is asking: the credentials every engine operation carries (docs/spawn.md, "Permissions").

Its own small module, with no grid imports, so that every exporter (FUSE, 9P, SFTP, raw daemon
sessions) can build one from what its transport says without loading the engine.

A FUSE request carries uid, gid and the caller's pid but not its supplementary groups; they
are read from /proc only when a check needs them (``in_group`` of a gid other than the
primary one), which most requests never do. 9P and SFTP sessions know their user's name, and
take the groups from the system's group database once per session (``of_user``).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, eq=False)
class Cred:
    """A caller: filesystem uid and gid and supplementary groups. uid 0 is root, holding the
    capabilities a kernel filesystem checks (DAC override, fowner, chown, fsetid, mknod)."""

    uid: int
    gid: int
    groups: frozenset[int] | None = None  # None: not known yet, ask ``load_groups``
    load_groups: Callable[[], frozenset[int]] | None = field(default=None, repr=False)
    _cache: list[frozenset[int]] = field(default_factory=list, repr=False, compare=False)

    @property
    def root(self) -> bool:
        return self.uid == 0

    def all_groups(self) -> frozenset[int]:
        """The primary gid and every supplementary group."""
        if self.groups is not None:
            return self.groups | {self.gid}
        if not self._cache:
            extra = frozenset()
            if self.load_groups is not None:
                try:
                    extra = self.load_groups()
                except OSError:
                    extra = frozenset()
            self._cache.append(extra | {self.gid})
        return self._cache[0]

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.all_groups()

    @classmethod
    def of_user(cls, uid: int, gid: int | None = None) -> Cred:
        """The credentials a login of *uid* would have: its primary group and the groups the
        group database lists it in (an unknown uid: *gid* alone, or the uid as its gid)."""
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            g = uid if gid is None else gid
            return cls(uid, g, frozenset({g}))
        g = pw.pw_gid if gid is None else gid
        try:
            groups = frozenset(os.getgrouplist(pw.pw_name, g))
        except OSError:
            groups = frozenset({g})
        return cls(uid, g, groups)

    @classmethod
    def of_process(cls, uid: int, gid: int, pid: int) -> Cred:
        """The credentials a FUSE request names: supplementary groups from /proc/PID/status,
        read on first need (the process may be gone by then: primary gid only)."""
        return cls(uid, gid, None, lambda: _proc_groups(pid))


def _proc_groups(pid: int) -> frozenset[int]:
    if pid <= 0:
        return frozenset()
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Groups:"):
                return frozenset(int(x) for x in line.split()[1:])
    return frozenset()


def group_id(name: str) -> int:
    """A group's gid by name or number (KeyError: no such group)."""
    return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid


#: The engine's own callers (save, import, tests of the engine itself): root.
ROOT = Cred(0, 0, frozenset({0}))
