"""A spawn's link for the daemon's own exporters (9P, SFTP), keeping FUSE mounts coherent.

A FUSE mount caches names and attributes and relies on the daemon to say what other clients
change (docs/daemon.md, "Cache invalidation"). Changes made through a mount's vfs session are
announced by the spawn's host (spawn.host) to the other mounts before the change returns; the
daemon's in-process exporters (9P, SFTP) reach the engine through the same host.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from spawn.cred import Cred
from spawn.host import HostClosed
from store.plaincache import PlainRange


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class SharedLink:
    """A spawn's link for a client that is not an attached mount: each change first has the
    spawn's caching mounts drop what it makes stale (spawn.host), before the change returns
    here. *sid* names the spawn (a rename or hard link must stay inside one)."""

    def __init__(self, live: Any) -> None:
        self.live = live
        self.sid: str = live.info.id

    def snapshot(self) -> int | None:
        """Which committed state of the spawn a read now sees, or None when there are
        changes not yet committed. While this stays the same number nothing in the spawn has
        changed: every completed change leaves the overlay uncommitted (None) until a
        checkpoint, and each checkpoint counts (spawn.overlay: ``clean``, ``checkpoints``).
        SFTP's read-ahead uses it to know its buffer is still the file's content."""
        ov = self.live.engine.ov
        return ov.checkpoints if ov.clean and not ov.closed else None

    def read_plain(self, cred: Cred, ino: int, offset: int, size: int) -> PlainRange | None:
        """A read the kernel can serve from a decoded content, or None (spawn.host)."""
        return self.live.host.read_plain(cred, ino, offset, size)

    async def call(self, op: str, cred: Cred, *args: Any, **kw: Any) -> Any:
        try:
            return await self.live.host.call(op, cred, *args, **kw)
        except HostClosed:  # the spawn was killed meanwhile
            raise _err(errno.ESTALE, f"spawn {self.sid} is gone") from None
