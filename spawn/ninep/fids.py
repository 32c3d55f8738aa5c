"""The 9P server's per-connection state: fids, and the order in which requests use them.

A fid is the client's name for a file in one connection. Ours remembers the path of inode
numbers (and names) from the attach root, because the engine keeps no parent pointers: ``..``
pops that path, Tremove and wstat's rename find the parent and the name there, and a 9P2000
stat needs the file's name. Another client may rename or remove the file behind our back;
the path is then stale, which costs a precise error (the server checks that the name still
leads to the fid's inode before removing or renaming by it), never another file.

Requests are answered out of order, each in its own task, but some orders matter: a clunk
must not overtake a read on the same fid, a walk that makes newfid must finish before a
request using newfid starts, a rewalk of a fid (newfid = fid) must finish before the next
read of it. :class:`Turns` keeps, per fid number, a first-come queue of turns taken when
each request is *received*: an exclusive turn (it changes the fid) waits for everything
before it on that fid, a shared turn (it only uses the fid) waits for the exclusive turns
before it. Reads and writes of one fid therefore run side by side, and since each is one
engine call issued in arrival order on the engine's one thread, the engine still sees them
in the client's order. Turns are taken in arrival order on every queue at once, so an
earlier request is ahead of a later one wherever both wait: there can be no cycle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from spawn.engine import Attr
from spawn.ninep.attachment import Attachment


@dataclass(slots=True)
class Opened:
    """How a fid was opened: the access it allows and what happens at clunk."""

    read: bool
    write: bool
    dir: bool = False  # a directory, read with Tread (9P2000) or Treaddir (.L)
    append: bool = False  # every write goes to the end of the file (OAPPEND, O_APPEND)
    rclose: bool = False  # ORCLOSE: remove the file when the fid is clunked
    counted: bool = False  # the engine counted an open handle: release it at clunk
    link: bool = False  # a symlink opened in 9P2000 (no symlinks there): reads give its target


@dataclass(slots=True)
class Listing:
    """A directory read in progress: a snapshot of the entries, taken when a read starts
    at offset 0, so that offsets and cookies stay valid while the directory changes."""

    entries: list[tuple[bytes, Attr]]
    index: int = 0  # 9P2000: the next entry to send
    offset: int = 0  # 9P2000: the byte offset the next read must ask for


@dataclass(slots=True)
class XattrRead:
    """A fid made by Txattrwalk: reads return slices of ``data`` (a value or the NUL
    terminated list of names), fixed when the walk happened."""

    data: bytes


@dataclass(slots=True)
class XattrWrite:
    """A fid turned by Txattrcreate into the value of one xattr, written by Twrite and set
    when the fid is clunked (diod's protocol.md: the engine's setxattr happens then). As in
    diod, ``data`` is the announced size from the start, zero-filled: writes past it are
    cut, and bytes never written are zeros."""

    name: bytes
    size: int
    flags: int
    data: bytearray = field(default_factory=bytearray)


@dataclass(slots=True, eq=False)
class Fid:
    """One fid of one connection. ``path`` runs from the attach root to this file:
    (inode number, name) pairs, the root named ``/``."""

    number: int
    att: Attachment
    path: list[tuple[int, bytes]]
    opened: Opened | None = None
    listing: Listing | None = None
    xattr: XattrRead | XattrWrite | None = None

    @property
    def ino(self) -> int:
        return self.path[-1][0]

    @property
    def name(self) -> bytes:
        return self.path[-1][1]

    @property
    def parent(self) -> int | None:
        """The directory the fid's file was reached from, None at the attach root."""
        return self.path[-2][0] if len(self.path) > 1 else None


class Turn:
    """A request's place in one fid's queue (see the module docstring)."""

    __slots__ = ("exclusive", "fid", "ready")

    def __init__(self, fid: int, exclusive: bool, ready: asyncio.Future[None]) -> None:
        self.fid = fid
        self.exclusive = exclusive
        self.ready = ready


class Turns:
    """Per-fid first-come queues of shared and exclusive turns."""

    def __init__(self) -> None:
        self._queues: dict[int, list[Turn]] = {}

    def take(self, fid: int, exclusive: bool) -> Turn:
        """Queue a turn now (when the request arrives); await ``turn.ready`` to use it."""
        loop = asyncio.get_running_loop()
        turn = Turn(fid, exclusive, loop.create_future())
        self._queues.setdefault(fid, []).append(turn)
        self._grant(fid)
        return turn

    def give_back(self, turn: Turn) -> None:
        """The request is done with the fid (or was never run): let the next ones go."""
        queue = self._queues.get(turn.fid)
        if queue is None or turn not in queue:
            return
        queue.remove(turn)
        if not turn.ready.done():
            turn.ready.cancel()
        if queue:
            self._grant(turn.fid)
        else:
            del self._queues[turn.fid]

    def _grant(self, fid: int) -> None:
        for i, turn in enumerate(self._queues[fid]):
            if turn.exclusive:
                if i == 0 and not turn.ready.done():
                    turn.ready.set_result(None)
                return  # nothing after an exclusive turn may start before it ends
            if not turn.ready.done():
                turn.ready.set_result(None)

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())


def fid_fields(msg: Any) -> tuple[tuple[int, bool], ...]:
    """The (fid number, exclusive) turns a request takes, from its type (see _ORDER)."""
    spec = _ORDER.get(type(msg).__name__, ())
    turns: dict[int, bool] = {}
    for name, exclusive in spec:
        number = getattr(msg, name)
        turns[number] = turns.get(number, False) or exclusive
    return tuple(turns.items())


_S, _X = False, True
#: For each request type, the fids it names and whether it changes them (exclusive).
_ORDER: dict[str, tuple[tuple[str, bool], ...]] = {
    "Tattach": (("fid", _X),),
    "Tauth": (("afid", _X),),
    "Twalk": (("fid", _S), ("newfid", _X)),
    "Topen": (("fid", _X),),
    "Tlopen": (("fid", _X),),
    "Tcreate": (("fid", _X),),
    "Tlcreate": (("fid", _X),),
    "Tread": (("fid", _S),),
    "Twrite": (("fid", _S),),
    "Tclunk": (("fid", _X),),
    "Tremove": (("fid", _X),),
    "Tstat": (("fid", _S),),
    "Twstat": (("fid", _X),),
    "Tstatfs": (("fid", _S),),
    "Tsymlink": (("fid", _S),),
    "Tmknod": (("dfid", _S),),
    "Trename": (("fid", _X), ("dfid", _S)),
    "Treadlink": (("fid", _S),),
    "Tgetattr": (("fid", _S),),
    "Tsetattr": (("fid", _S),),
    "Txattrwalk": (("fid", _S), ("newfid", _X)),
    "Txattrcreate": (("fid", _X),),
    "Treaddir": (("fid", _S),),
    "Tfsync": (("fid", _S),),
    "Tlock": (("fid", _S),),
    "Tgetlock": (("fid", _S),),
    "Tlink": (("dfid", _S), ("fid", _S)),
    "Tmkdir": (("dfid", _S),),
    "Trenameat": (("olddirfid", _S), ("newdirfid", _S)),
    "Tunlinkat": (("dirfid", _S),),
}
