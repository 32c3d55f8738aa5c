"""What a 9P attach resolves to: the spawn it reaches and who it acts as.

Kept apart from the session (spawn/ninep/session.py) because the fids of a connection
(spawn/ninep/fids.py) hold one too: both import it from here, neither from the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from spawn.cred import Cred
from spawn.engine import ROOT_INO
from spawn.ninep.locks import LockTable
from spawn.vfslink import EngineLink


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attach's view of a spawn, as the resolver grants it.

    ``link`` reaches the spawn's engine and ``root`` is the inode the attach starts at.
    ``uid``/``gid`` own the files this attach creates; a 9P2000.L create may ask for a gid
    in ``groups`` instead (root may ask for any). ``locks`` must be the one table of the
    spawn, shared by every session that serves it, for locks to work across clients.
    ``fsid`` is what statfs reports as the filesystem id.
    """

    link: EngineLink
    uid: int
    gid: int
    root: int = ROOT_INO
    groups: frozenset[int] = frozenset()
    locks: LockTable = field(default_factory=LockTable)
    fsid: int = 0
    cred: Cred = field(init=False)  # what every engine call of the attach carries

    def __post_init__(self) -> None:
        object.__setattr__(self, "cred", Cred(self.uid, self.gid, self.groups | {self.gid}))

    def as_gid(self, gid: int) -> Cred:
        """The attach's credentials acting with group *gid* (a 9P2000.L create's gid, which
        ``Server._gid`` has checked), as diod's setfsgid does."""
        return self.cred if gid == self.gid else Cred(self.uid, gid, self.cred.all_groups())


#: ``await resolve(uname, aname, n_uname)``: the Attachment, or PermissionError/LookupError.
Resolver = Callable[[bytes, bytes, int], Awaitable[Attachment]]
