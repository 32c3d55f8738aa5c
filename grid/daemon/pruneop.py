"""The daemon's ``prune`` request: `grid prune` while the node daemon runs.

The daemon holds the store's writer lock, so prune runs here, in a thread, beside the
daemon's writers (saves, spills, imports and pulls through the block socket): the store's
barrier (store.barrier, docs/store.md "Online prune") keeps every block they write or find.
The roots are the names' and the spawns' (grid.prune); an open spawn's overlay is read on
its own host thread, from its engine's view. Progress goes back to the client as notices
before the answer:

    [0, "progress", PHASE, DONE, TOTAL]     mark (blocks), copy (bytes)
    [0, "waiting", [WRITER, ...]]           writer sessions prune waits for
    [TAG, 0, REPORT]                        as `grid prune --json` prints it
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from spawn.vfsrpc import encode

if TYPE_CHECKING:
    from grid.daemon.server import Daemon

log = logging.getLogger("grid.daemon")

NOTICE_EVERY = 0.25  # seconds between progress notices of one phase


class PruneRefused(OSError):
    pass


def check_args(uid: int, kw: dict[str, Any]) -> tuple[bool, float]:
    """(dry_run, max_unused) from the request, or PruneRefused with errno and message."""
    if uid not in (0, os.geteuid()):
        raise PruneRefused(errno.EPERM, "only root or the daemon's user may prune the store")
    unknown = set(kw) - {"dry_run", "max_unused"}
    if unknown:
        raise PruneRefused(errno.EINVAL, f"prune: bad arguments (unknown {sorted(unknown)})")
    dry = kw.get("dry_run", False)
    mu = kw.get("max_unused", 10.0)
    if type(dry) is not bool:
        raise PruneRefused(errno.EINVAL, "prune: dry_run must be a bool")
    if type(mu) not in (int, float) or not 0 <= mu <= 100:
        raise PruneRefused(errno.EINVAL, "prune: max_unused is a percentage, 0 to 100")
    return dry, float(mu)


async def serve(daemon: Daemon, uid: int, tag: int, args: list[Any], kw: dict[str, Any],
                writer: asyncio.StreamWriter) -> None:
    """Run one prune for the connection, streaming notices, then answer *tag*."""
    from grid.prune import live_roots
    from spawn.roots import live_overlay_roots
    from store.errors import StoreError
    from store.prune import prune

    loop = asyncio.get_running_loop()
    try:
        if args:
            raise PruneRefused(errno.EINVAL, "prune takes no positional arguments")
        dry, max_unused = check_args(uid, kw)
        if daemon.pruning:
            raise PruneRefused(errno.EBUSY, "a prune is running already")
    except PruneRefused as e:
        writer.write(encode([tag, e.errno, e.strerror]))
        await writer.drain()
        return

    def send(msg: list[Any]) -> None:
        loop.call_soon_threadsafe(writer.write, encode(msg))

    last: dict[str, float] = {}

    def progress(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last.get(phase, 0.0) >= NOTICE_EVERY or (total and done >= total):
            last[phase] = now
            send([0, "progress", phase, done, total])

    def waiting(writers: list[str]) -> None:
        send([0, "waiting", writers])

    def live(sid: str) -> list[bytes] | None:
        one = daemon.live_spawns().get(sid)
        if one is None:
            return None
        try:
            return one.host.run(live_overlay_roots, one.engine)
        except Exception as e:  # killed meanwhile: its files say what is left, if anything
            log.info("prune: spawn %s: reading its files (%s)", sid, e)
            return None

    counts: dict[str, int] = {}

    def roots() -> list[bytes]:
        rs, c = live_roots(daemon.home, live)
        counts.update(c)
        return rs

    def work() -> Any:
        # The flag drops when the thread ends, not when this request does: a daemon being
        # stopped cancels the request, then waits for the flag before closing the store.
        try:
            return prune(daemon.store, roots, max_unused=max_unused, dry_run=dry,
                         progress=progress, waiting=waiting)
        finally:
            daemon.pruning = False

    daemon.pruning = True
    log.info("prune (uid %d)%s, max unused %g %%", uid, " dry run" if dry else "", max_unused)
    try:
        rep = await asyncio.to_thread(work)
        reply = [tag, 0, {**rep.as_dict(), **counts, "daemon_pid": os.getpid()}]
        log.info("prune: %d of %d blocks live, %d segment(s) compacted, %d bytes reclaimed in %.2f s",
                 rep.live_blocks, rep.blocks, len(rep.victims), rep.reclaimed_bytes, rep.seconds)
    except StoreError as e:
        reply = [tag, errno.EINVAL, str(e)]
    except Exception as e:
        log.exception("prune failed")
        reply = [tag, errno.EIO, f"prune failed: {e}"]
    writer.write(encode(reply))
    await writer.drain()
