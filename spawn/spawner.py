"""The spawner: the node's registry of spawns, who owns each, and their engines.

Each spawn lives in its own directory under the spawns root::

    spawns/
      next            the next spawn number (flock'ed while allocating)
      17/
        info.json     id, owner, uid, the name and root it was spawned from, when
        overlay/      the engine's LMDB overlay (spawn.overlay)

Spawning writes info.json and opens the engine, which reads the root block only: O(1)
whatever the size of the tree. After a restart, engines are reopened lazily from their
overlays, with every committed change. Privacy is decided here, once, for every exporter:
a spawn is visible only to its owner and to root; to anyone else it does not exist.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from spawn.engine import Engine
from spawn.save import save
from store.base import BlockStore
from store.score import Score, format_score


class SpawnError(Exception):
    """A spawn request that cannot be done (unknown spawn, limit reached, ...)."""


class SpawnNotFound(SpawnError, LookupError):
    pass


class SpawnLimit(SpawnError):
    pass


@dataclass(frozen=True, slots=True)
class SpawnInfo:
    id: str
    owner: str
    uid: int
    name: str  # what was spawned: a name, or a raw score
    root: str  # blake3:… of the root it was spawned from
    created: str  # RFC 3339, UTC
    shared_uids: list[int] = field(default_factory=list)  # ``grid share ID USER``
    shared_gids: list[int] = field(default_factory=list)  # ``grid share ID @GROUP``

    def admits(self, uid: int, groups: Iterable[int] | Callable[[], Iterable[int]] = ()) -> bool:
        """May *uid* (in *groups*) enter this spawn at all? Its owner, root, and those it
        is shared with; within, the files' own permissions apply (spawn.access). *groups*
        may be a function, asked only when a group share could decide (for FUSE requests,
        whose groups cost a read of /proc)."""
        if uid == 0 or uid == self.uid or uid in self.shared_uids:
            return True
        if not self.shared_gids:
            return False
        return any(g in self.shared_gids for g in (groups() if callable(groups) else groups))


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class Spawner:
    def __init__(self, store: BlockStore, root: str | os.PathLike[str], *, max_per_user: int = 16,
                 engine_options: dict[str, Any] | None = None) -> None:
        self.store = store
        self.engine_options = dict(engine_options or {})  # e.g. overlay_limit, for every engine
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_per_user = max_per_user
        self._engines: dict[str, Engine] = {}
        # Counting a user's spawns and making one is one step: without it, concurrent
        # requests (the daemon runs each in a thread) all count below spawnmax and all make
        # one (issue 14 saw 20 under spawnmax 16). Spawning is O(1), so holding it is short.
        self._spawning = threading.Lock()

    # -- registry ------------------------------------------------------------------------

    def _alloc_id(self) -> str:
        fd = os.open(self.root / "next", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 32, 0).strip()
            n = int(raw) if raw else 1
            while (self.root / str(n)).exists():
                n += 1
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{n + 1}\n".encode(), 0)
            os.fsync(fd)
            return str(n)
        finally:
            os.close(fd)

    def _info_path(self, sid: str) -> Path:
        if not sid.isdigit():
            raise SpawnNotFound(f"no spawn {sid!r}")
        return self.root / sid / "info.json"

    def _read(self, sid: str) -> SpawnInfo:
        try:
            data = json.loads(self._info_path(sid).read_text())
        except FileNotFoundError:
            raise SpawnNotFound(f"no spawn {sid!r}") from None
        return SpawnInfo(**data)

    def list(self, uid: int | None = None, groups: Iterable[int] = ()) -> list[SpawnInfo]:
        """The spawns *uid* (in *groups*) may see (all for None or root), by number: its
        own and those shared with it."""
        groups = frozenset(groups)
        out = []
        for d in self.root.iterdir():
            if d.name.isdigit() and (d / "info.json").is_file():
                try:
                    info = self._read(d.name)
                except SpawnNotFound:
                    continue  # killed meanwhile
                if uid is None or info.admits(uid, groups):
                    out.append(info)
        return sorted(out, key=lambda i: int(i.id))

    def get(self, sid: str, uid: int | None = None, groups: Iterable[int] = ()) -> SpawnInfo:
        """The spawn, if *uid* (in *groups*) may use it; to other users it does not exist."""
        info = self._read(sid)
        if uid is not None and not info.admits(uid, groups):
            raise SpawnNotFound(f"no spawn {sid!r}")
        return info

    def share(self, sid: str, *, uid: int | None = None, gid: int | None = None,
              remove: bool = False) -> SpawnInfo:
        """Let user *uid* or group *gid* into the spawn (*remove*: no longer); the record is
        replaced atomically, so a crash leaves the old sharing or the new one."""
        info = self._read(sid)
        uids, gids = list(info.shared_uids), list(info.shared_gids)
        for items, x in ((uids, uid), (gids, gid)):
            if x is None:
                continue
            if remove and x in items:
                items.remove(x)
            elif not remove and x not in items:
                items.append(x)
        new = replace(info, shared_uids=sorted(uids), shared_gids=sorted(gids))
        self._write(new)
        return new

    def _write(self, info: SpawnInfo) -> None:
        d = self.root / info.id
        tmp = d / "info.json.tmp"
        tmp.write_text(json.dumps(asdict(info)))
        os.replace(tmp, d / "info.json")

    # -- life ----------------------------------------------------------------------------

    def spawn(self, name: str, root: bytes, *, owner: str, uid: int) -> SpawnInfo:
        """Make a spawn of *root* for *owner*: reads the root block and nothing more. The
        spawnmax check and the new spawn's info.json are one step for this spawner (one
        per home: the daemon's)."""
        with self._spawning:
            return self._spawn(name, root, owner=owner, uid=uid)

    def _spawn(self, name: str, root: bytes, *, owner: str, uid: int) -> SpawnInfo:
        mine = [i for i in self.list(uid) if i.uid == uid]
        if uid != 0 and len(mine) >= self.max_per_user:
            raise SpawnLimit(
                f"{owner} has {len(mine)} spawns, the most allowed (spawnmax {self.max_per_user}); "
                "save or kill one first"
            )
        sid = self._alloc_id()
        d = self.root / sid
        d.mkdir(mode=0o700)
        try:
            engine = Engine(self.store, d / "overlay", root, **self.engine_options)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        info = SpawnInfo(sid, owner, uid, name, format_score(root), _now())
        self._write(info)
        self._engines[sid] = engine
        return info

    def engine(self, sid: str) -> Engine:
        e = self._engines.get(sid)
        if e is None:
            self._read(sid)
            e = Engine(self.store, self.root / sid / "overlay", **self.engine_options)
            self._engines[sid] = e
        return e

    def save(self, sid: str, *, name: str, user: str) -> Score:
        """Snapshot the spawn; the caller records *name* -> the returned root afterwards."""
        return save(self.engine(sid), name=name, user=user)

    def base(self, sid: str) -> Score:
        return self.engine(sid).base

    def kill(self, sid: str) -> None:
        """Discard the spawn and every unsaved change."""
        self._read(sid)
        e = self._engines.pop(sid, None)
        if e is not None:
            e.close()
        d = self.root / sid
        os.unlink(d / "info.json")  # first: a half-removed spawn is no spawn
        shutil.rmtree(d)

    def changed_bytes(self, sid: str) -> int:
        """Bytes of local state the spawn holds (its overlay on disk)."""
        d = self.root / sid / "overlay"
        return sum(f.stat().st_size for f in d.iterdir() if f.is_file())

    def close(self) -> None:
        for e in self._engines.values():
            e.close()
        self._engines.clear()
