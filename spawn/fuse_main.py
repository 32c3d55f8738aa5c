"""A FUSE mount process: one spawn, mounted at one place, served until unmounted.

    python -m spawn.fuse_main --connect SOCKET --spawn ID MOUNTPOINT [--log FILE]
    python -m spawn.fuse_main STORE_DIR OVERLAY_DIR MOUNTPOINT [--base blake3:HEX] [--owner UID]

The first form is what ``grid mount`` runs, as the calling user: it attaches to the spawn in
the node daemon (spawn.vfsrpc) and forwards every request there, so the daemon keeps owning
the engine. Only the spawn's owner (and root) may attach; a mount made by a user other than
root is usable by that user only (no ``allow_other``), one made by root admits the owner and
root, and the adapter refuses everyone else (spawn.fuse).

The second form opens a store and an overlay itself (creating the overlay over ``--base``
when new): for tests and debugging without a daemon.

Either way it prints ``ready`` on stdout once the kernel has the mount (then, with
``--log``, sends its output to FILE), and on SIGTERM or SIGINT, or when the daemon is gone
for good, unmounts and exits 0. pyfuse3 allows one mount per process, hence a process each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from spawn.engine import Engine
from spawn.fuse import MOUNT_OPTIONS, TIMEOUT, invalidate, serve
from spawn.vfsrpc import RemoteLink
from store.errors import BadScore, StoreError
from store.local import LocalStore
from store.score import parse_score


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m spawn.fuse_main", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="MOUNTPOINT with --connect; else STORE_DIR OVERLAY_DIR MOUNTPOINT")
    p.add_argument("--connect", metavar="SOCKET", help="the node daemon's socket")
    p.add_argument("--spawn", metavar="ID", help="the spawn to mount (with --connect)")
    p.add_argument("--grace", type=float, default=60.0,
                   help="seconds to wait for a restarting daemon (default %(default)s)")
    p.add_argument("--log", metavar="FILE", help="where output goes once mounted")
    p.add_argument("--base", help="root score (blake3:HEX) of a new spawn")
    p.add_argument("--owner", type=int, default=os.getuid(), help="uid that may use the mount (and root)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"kernel entry/attribute cache timeout, seconds (default {REMOTE_TIMEOUT:g} "
                        f"with --connect, where the daemon invalidates what other clients "
                        f"change; else {TIMEOUT:g})")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.connect:
        if len(a.paths) != 1 or not a.spawn:
            p.error("--connect takes --spawn ID and one MOUNTPOINT")
        a.mountpoint = a.paths[0]
    else:
        if len(a.paths) != 3:
            p.error("STORE_DIR OVERLAY_DIR MOUNTPOINT, or --connect SOCKET --spawn ID MOUNTPOINT")
        a.store, a.overlay, a.mountpoint = a.paths
    return a


#: Cache timeout of a mount attached to the daemon: other clients' changes are invalidated
#: as they happen, so this only bounds how long a missed invalidation could mislead.
REMOTE_TIMEOUT = 10.0


def _ready(log: str | None) -> Callable[[], None]:
    def ready() -> None:
        print("ready", flush=True)
        if log:  # the parent stops listening once we are up: later output goes to the log
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)

    return ready


def _may_allow_other() -> bool:
    """May this process mount with ``allow_other``? Root may; other users when
    /etc/fuse.conf says ``user_allow_other`` (scripts/setup.sh sets it). With it, root can
    reach a user's mount too and the adapter refuses everyone else; without it, the kernel
    admits only the user who mounted (so root cannot look in)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


async def _run_remote(a: argparse.Namespace) -> int:
    """Attach to the spawn in the daemon and serve it until unmounted or told to stop."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    mnt = os.path.abspath(a.mountpoint)
    link = RemoteLink(a.connect, a.spawn, mountpoint=mnt, grace=a.grace,
                      on_lost=lambda why: task.cancel(), on_invalidate=invalidate)
    try:
        info = await link.connect()
    except OSError as e:
        print(f"fuse_main: spawn {a.spawn}: {e.strerror or e}", file=sys.stderr)
        return 1
    options = MOUNT_OPTIONS if _may_allow_other() else tuple(o for o in MOUNT_OPTIONS if o != "allow_other")
    try:
        timeout = REMOTE_TIMEOUT if a.timeout is None else a.timeout
        await serve(link, mnt, int(info["uid"]), ready=_ready(a.log), options=options, timeout=timeout)
    except asyncio.CancelledError:
        pass  # a signal, or the daemon is gone: serve has unmounted
    finally:
        link.close()
    return 0


async def _run(engine: Engine, a: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)

    try:
        await serve(engine, a.mountpoint, a.owner, ready=_ready(a.log),
                    timeout=TIMEOUT if a.timeout is None else a.timeout)
    except asyncio.CancelledError:
        pass  # a signal: serve has unmounted


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="%(asctime)s fuse_main[%(process)d]: %(levelname)s %(name)s: %(message)s")
    if a.connect:
        try:
            return asyncio.run(_run_remote(a))
        except RuntimeError as e:  # the mount failed
            print(f"fuse_main: {e}", file=sys.stderr)
            return 1
    try:
        base = parse_score(a.base) if a.base else None
        store = LocalStore.open(a.store)
        try:
            engine = Engine(store, a.overlay, base)
            try:
                asyncio.run(_run(engine, a))
            finally:
                engine.close()
        finally:
            store.close()
    except (BadScore, StoreError, ValueError, RuntimeError) as e:  # RuntimeError: mount failed
        print(f"fuse_main: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
