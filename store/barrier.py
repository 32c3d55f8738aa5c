"""What lets prune run beside writers (docs/store.md, "Online prune"): writer sessions, the
late set, and the put gate.

* **Writer sessions.** A writer that puts blocks now and names them later (a save records a
  name after its root is synced; an import through the block socket sets its name before it
  hangs up; a spill journals its tree after writing it) opens a session around the whole of
  it. Sessions are numbered; prune notes the next number when it starts and, before it
  finalises, waits for every older session to end: their blocks may have been written before
  prune started and be named only by a root they write at the end.
* **The late set.** From prune's start to its end, every put (a fresh block or a dedup hit)
  and every ``has`` that answers yes (a writer that found a block may name it without
  putting it: an import's file cache, replication's ``missing``) adds its score to a set. Prune's final mark starts from it, so a block written or re-used
  during prune is kept with everything under it. Cost: a Python ``set`` of 32-byte ``bytes``,
  about 100 bytes per block put during one prune (1 million puts: about 100 MB).
* **The gate.** Puts (and, while prune runs, ``has``) hold it shared; prune's finalisation (last mark, copy, index switch,
  unlink) holds it exclusive, so no put interleaves with the copies (closure, children
  first) and no put dedups against a record being removed. Reads never take it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class Gate:
    """A shared/exclusive lock that lets an exclusive holder in as soon as the shared holders
    it found have left (new shared holders wait behind a waiting exclusive one)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        self._mine = threading.local()  # this thread's shared depth: a put's own has() nests

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._mine, "depth", 0)
        if depth:
            self._mine.depth = depth + 1
            try:
                yield
            finally:
                self._mine.depth = depth
            return
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        self._mine.depth = 1
        try:
            yield
        finally:
            self._mine.depth = 0
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class WriterSessions:
    """Numbered writer sessions (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0
        self._open: dict[int, str] = {}

    def begin(self, what: str = "writer") -> int:
        with self._cond:
            n = self._next
            self._next += 1
            self._open[n] = what
            return n

    def end(self, n: int) -> None:
        with self._cond:
            self._open.pop(n, None)
            self._cond.notify_all()

    @contextlib.contextmanager
    def session(self, what: str = "writer") -> Iterator[None]:
        n = self.begin(what)
        try:
            yield
        finally:
            self.end(n)

    def cutoff(self) -> int:
        """The number the next session gets: sessions below it began before now."""
        with self._cond:
            return self._next

    def older(self, cutoff: int) -> list[str]:
        with self._cond:
            return [w for n, w in sorted(self._open.items()) if n < cutoff]

    def wait_older(self, cutoff: int, note: Callable[[list[str]], None] | None = None,
                   every: float = 1.0, cancelled: Callable[[], bool] | None = None) -> bool:
        """Return True once every session numbered below *cutoff* has ended, calling *note*
        with the ones still open now and then (at once, then every *every* seconds); False
        as soon as *cancelled* says so."""
        told = 0.0
        with self._cond:
            while True:
                left = [w for n, w in sorted(self._open.items()) if n < cutoff]
                if not left:
                    return True
                if cancelled is not None and cancelled():
                    return False
                now = time.monotonic()
                if note is not None and now - told >= every:
                    told = now
                    self._cond.release()
                    try:
                        note(left)
                    finally:
                        self._cond.acquire()
                    continue
                self._cond.wait(every)


def writer_session(store: object, what: str = "writer") -> contextlib.AbstractContextManager[None]:
    """A writer session on *store* when it has sessions (a LocalStore), else nothing: a
    remote store's server opens its own, a memory store has no prune."""
    sessions = getattr(store, "writers", None)
    if isinstance(sessions, WriterSessions):
        return sessions.session(what)
    return contextlib.nullcontext()
