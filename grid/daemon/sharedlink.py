"""A spawn's link for the daemon's own exporters (9P, SFTP), keeping FUSE mounts coherent.

A FUSE mount caches names and attributes and relies on the daemon to say what other clients
change (docs/daemon.md, "Cache invalidation"). Changes made through a mount's vfs session are
announced by spawn.vfsrpc.VfsSession; changes made by the daemon's in-process exporters go
through this link, which does the same before the change returns.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from spawn.vfsrpc import call_and_invalidate


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class SharedLink:
    """A spawn's link for a client that is not one of the daemon's vfs sessions: each change
    first has the spawn's caching mounts drop what it makes stale (spawn.vfsrpc.touched),
    before the change returns here, as VfsSession does for its peers. *sid* names the spawn
    (a rename or hard link must stay inside one)."""

    def __init__(self, live: Any) -> None:
        self.live = live
        self.sid: str = live.info.id

    async def call(self, op: str, *args: Any, **kw: Any) -> Any:
        try:
            return await call_and_invalidate(self.live.link, op, list(args), kw,
                                             [c.session for c in list(self.live.clients)])
        except RuntimeError:  # the engine's thread is gone: the spawn was killed meanwhile
            raise _err(errno.ESTALE, f"spawn {self.sid} is gone") from None
