"""A spawn's link for the daemon's own exporters (9P, SFTP), keeping FUSE mounts coherent.

A FUSE mount caches names and attributes and relies on the daemon to say what other clients
change (docs/daemon.md, "Cache invalidation"). Changes made through a mount's vfs session are
announced by spawn.vfsrpc.VfsSession; changes made by the daemon's in-process exporters go
through this link, which does the same before the change returns.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any

from spawn.vfsrpc import ACK_TIMEOUT, RETRYABLE, touched, touched_before


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
        link = self.live.link
        others = [c.session for c in list(self.live.clients)
                  if getattr(c.session, "caching", False)] \
            if op not in RETRYABLE else []
        before = await touched_before(link, op, list(args)) if others else []
        try:
            value = await link.call(op, *args, **kw)
        except RuntimeError:  # the engine's thread is gone: the spawn was killed meanwhile
            raise _err(errno.ESTALE, f"spawn {self.sid} is gone") from None
        if others:
            items = touched(op, list(args), kw, value, before)
            if items:
                await asyncio.wait([asyncio.ensure_future(s.invalidate(items)) for s in others],
                                   timeout=ACK_TIMEOUT)
        return value
