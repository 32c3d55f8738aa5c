"""POSIX byte-range locks for the 9P server (Tlock, Tgetlock), one table per spawn.

The engine keeps no locks: they are state of the clients that are connected now, not of the
filesystem, and they die with the connection that took them. So the table lives beside the
server, and the node daemon shares one table between every 9P session of a spawn (the
``locks`` field of :class:`spawn.ninep.attachment.Attachment`), which is what makes a lock taken
through one session conflict with another session's (invariant 8 asks for POSIX locks across
clients; FUSE mounts would need the same table to join in).

Semantics are fcntl(2)'s record locks, because that is what Linux v9fs translates both
``fcntl(F_SETLK)`` and ``flock(2)`` into:

* an owner is ``(session, client_id, proc_id)``: Linux sends the process id and its node
  name; the session keeps two machines with the same node name apart;
* a range is ``[start, start + length)``, length 0 meaning "to the end of any file";
* an owner's locks never conflict with each other: a new lock replaces the owner's lock
  type over its range, splitting and merging as fcntl does; unlocking splits too;
* read locks of different owners share, a write lock conflicts with any other owner's lock.

Waiting (F_SETLKW): a blocked request waits for a change of the file's locks and tries
again (:meth:`LockTable.changed`); the server makes that wait cancellable by Tflush.
Deadlock detection (EDEADLK) is not done.

The table belongs to one asyncio event loop (the daemon's); it is not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from spawn.ninep.messages import LockType

EOF = 1 << 64  # the end of a lock of length 0: past any offset a u64 can name


@dataclass(frozen=True, slots=True)
class Lock:
    """One held range. ``end`` is exclusive (EOF for "to the end"); ``token`` names what the
    lock was taken through (the server passes its fid), so a clunk can drop its locks."""

    owner: Hashable
    type: LockType
    start: int
    end: int
    token: object = None
    proc_id: int = 0
    client_id: bytes = b""

    @property
    def length(self) -> int:
        """As the wire says it: 0 for a lock to the end of the file."""
        return 0 if self.end >= EOF else self.end - self.start


def span(start: int, length: int) -> tuple[int, int]:
    """The [start, end) of a wire (start, length) pair; length 0 means to the end."""
    if length == 0:
        return start, EOF
    return start, min(start + length, EOF)


def _conflicts(a: LockType, b: LockType) -> bool:
    return a == LockType.WRLCK or b == LockType.WRLCK


class LockTable:
    """The locks of one spawn, by inode number. See the module docstring."""

    def __init__(self) -> None:
        self._locks: dict[int, list[Lock]] = {}
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    def held(self, ino: int) -> list[Lock]:
        """The locks on *ino*, sorted by start (a copy)."""
        return list(self._locks.get(ino, ()))

    def count(self) -> int:
        return sum(len(v) for v in self._locks.values())

    def conflict(self, ino: int, owner: Hashable, type: LockType, start: int,
                 end: int) -> Lock | None:
        """The first lock of another owner that a *type* lock on [start, end) would collide
        with, or None. An unlock never conflicts."""
        if type == LockType.UNLCK:
            return None
        for lk in self._locks.get(ino, ()):
            overlaps = lk.start < end and start < lk.end
            if lk.owner != owner and overlaps and _conflicts(lk.type, type):
                return lk
        return None

    def set(self, ino: int, owner: Hashable, type: LockType, start: int, end: int, *,
            token: object = None, proc_id: int = 0, client_id: bytes = b"") -> bool:
        """Lock or unlock [start, end) for *owner*, as F_SETLK: False (and nothing changed)
        when another owner's lock is in the way."""
        if start >= end:
            return True
        if self.conflict(ino, owner, type, start, end) is not None:
            return False
        kept: list[Lock] = []
        mine: list[Lock] = []
        for lk in self._locks.get(ino, ()):
            if lk.owner != owner or lk.end < start or end < lk.start:
                kept.append(lk)  # another owner's, or ours but neither overlapping nor touching
                continue
            if lk.type == type and type != LockType.UNLCK:
                start, end = min(start, lk.start), max(end, lk.end)  # merge with a same-type one
                continue
            if lk.start < start:  # the part of ours before the new range stays
                mine.append(_part(lk, lk.start, start))
            if end < lk.end:  # and the part after it
                mine.append(_part(lk, end, lk.end))
        if type != LockType.UNLCK:
            mine.append(Lock(owner, type, start, end, token, proc_id, client_id))
        locks = sorted(kept + mine, key=lambda lk: (lk.start, lk.end))
        if locks:
            self._locks[ino] = locks
        else:
            self._locks.pop(ino, None)
        self._wake(ino)
        return True

    def release(self, drop_if: Callable[[Lock], bool]) -> int:
        """Drop every lock *drop_if* selects (a session's at its end, a fid's at its clunk);
        the number dropped. Waiters on the files concerned are woken."""
        dropped = 0
        for ino in list(self._locks):
            before = self._locks[ino]
            after = [lk for lk in before if not drop_if(lk)]
            if len(after) != len(before):
                dropped += len(before) - len(after)
                if after:
                    self._locks[ino] = after
                else:
                    del self._locks[ino]
                self._wake(ino)
        return dropped

    def changed(self, ino: int) -> asyncio.Future[None]:
        """A future resolved at the next change of *ino*'s locks (await it, then retry).

        Each caller gets its own future, so that cancelling one waiter (a Tflush) leaves
        the others waiting."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = [f for f in self._waiters.get(ino, ()) if not f.done()]
        waiting.append(fut)
        self._waiters[ino] = waiting
        return fut

    def waiting(self) -> int:
        """Requests waiting for a change, over all files."""
        return sum(not f.done() for v in self._waiters.values() for f in v)

    def _wake(self, ino: int) -> None:
        for fut in self._waiters.pop(ino, ()):
            if not fut.done():
                fut.set_result(None)


def _part(lk: Lock, start: int, end: int) -> Lock:
    return Lock(lk.owner, lk.type, start, end, lk.token, lk.proc_id, lk.client_id)
