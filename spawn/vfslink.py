"""How an exporter reaches a spawn's engine: in this process, or in the node daemon.

Every exporter (FUSE now, 9P and SFTP in the daemon) talks to the engine through a *link*:
one awaitable ``call(op, *args, **kw)`` per engine operation. Keeping exporters to that one
door has two uses:

* the engine stays owned by one thread (invariant 8): :class:`LocalLink` runs every call on
  the spawn's single-thread executor, which all exporters of the spawn share;
* the daemon's spawn host (spawn.host.SpawnHost) is the same interface for its in-process
  exporters (9P, SFTP), and announces their changes to the spawn's mounts.

``OPS`` is the whole surface: an operation not named there cannot be called through a
link, so a remote client cannot reach anything but the filesystem (no save, no close).
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Protocol

from spawn.cred import Cred
from spawn.engine import Engine

#: The engine operations a link carries, each with the engine method's own signature.
OPS = frozenset({
    "getattr", "lookup", "readdir", "create", "mkdir", "mknod", "symlink", "readlink", "link",
    "unlink", "rmdir", "rename", "open", "release", "read", "write", "setattr", "getxattr",
    "listxattr", "setxattr", "removexattr", "fsync", "statfs", "fallocate",
})


class EngineLink(Protocol):
    async def call(self, op: str, cred: Cred, *args: Any, **kw: Any) -> Any:
        """Run engine operation *op* as *cred* (the engine checks it: spawn.access); an
        OSError carries the engine's errno."""

    def close(self) -> None:
        """Release what the link holds (threads, a connection)."""


class LocalLink:
    """An engine in this process, run on its one owner thread.

    Pass the spawn's executor when other exporters share the engine; without one the link
    makes (and on ``close`` stops) its own single thread.
    """

    def __init__(self, engine: Engine, executor: Executor | None = None) -> None:
        self.engine = engine
        self._own = executor is None
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="grid-engine")

    async def call(self, op: str, cred: Cred, *args: Any, **kw: Any) -> Any:
        if op not in OPS:
            raise ValueError(f"no engine operation {op!r}")
        fn = functools.partial(getattr(self.engine, op), cred, *args, **kw)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def close(self) -> None:
        """Commit the engine's journal on its owner thread (spawn.overlay: only the thread
        that began the transaction may end it), so another thread may close the engine."""
        try:
            self.executor.submit(self.engine.checkpoint).result()
        except RuntimeError:
            pass  # the executor is shut down already
        if self._own:
            self.executor.shutdown(wait=True)
