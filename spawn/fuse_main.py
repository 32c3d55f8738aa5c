"""Mount one spawn with FUSE from the command line: for tests and debugging.

    python -m spawn.fuse_main STORE_DIR OVERLAY_DIR MOUNTPOINT [--base blake3:HEX] [--owner UID]

Opens the block store, opens the spawn's overlay (creating it over ``--base`` when it is new),
mounts, prints ``ready`` on stdout once the kernel has the mount, and on SIGTERM or SIGINT
unmounts, closes the engine (syncing the overlay) and exits 0. The daemon (grid/) wires the
same pieces itself; this entry exists so a test can run the exporter in its own process, as
pyfuse3 allows one mount per process, and kill it like a real daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from spawn.engine import Engine
from spawn.fuse import TIMEOUT, serve
from store.errors import BadScore, StoreError
from store.local import LocalStore
from store.score import parse_score


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m spawn.fuse_main", description=__doc__.split("\n")[0])
    p.add_argument("store", help="block store directory")
    p.add_argument("overlay", help="the spawn's overlay directory (created with --base)")
    p.add_argument("mountpoint")
    p.add_argument("--base", help="root score (blake3:HEX) of a new spawn")
    p.add_argument("--owner", type=int, default=os.getuid(), help="uid that may use the mount (and root)")
    p.add_argument("--timeout", type=float, default=TIMEOUT,
                   help="kernel entry/attribute cache timeout, seconds (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def _run(engine: Engine, a: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)

    def ready() -> None:
        print("ready", flush=True)

    try:
        await serve(engine, a.mountpoint, a.owner, ready=ready, timeout=a.timeout)
    except asyncio.CancelledError:
        pass  # a signal: serve has unmounted


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="fuse_main: %(levelname)s %(name)s: %(message)s")
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
