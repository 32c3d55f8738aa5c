"""`grid prune`: reclaim the space of blocks nothing holds any more (after `grid forget`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grid.home import GridHome

ProgressFn = Callable[[str, int, int], None]

_EPILOG = """\
examples:
  grid forget myproject --keep-last 5
  grid prune --dry-run               what would be reclaimed
  grid prune                         compact segments over 10 % dead
  grid prune --max-unused 0 --json   compact every segment with any dead block
With the node daemon running, the daemon prunes (its writers and mounts go on working);
otherwise this command opens the store itself.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="remove blocks no name or spawn holds; compact the store's segments",
        description=(
            "Mark every block reachable from the names' records (forgotten ones excepted)\n"
            "and from every spawn (its base, spilled and rebased files), then copy the live\n"
            "records of each segment more than --max-unused percent dead to the end of the\n"
            "log and remove the segment. Crash-safe: a kill at any point loses no live block,\n"
            "and the next prune finishes the job (docs/store.md, \"Prune\")."
        ),
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dry-run", "-n", action="store_true", help="mark and report; change nothing")
    p.add_argument("--max-unused", type=float, default=10.0, metavar="PERCENT",
                   help="compact segments whose dead fraction exceeds PERCENT (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    import json

    from grid.errors import UserError
    from grid.home import find_home
    from grid.progress import Progress

    if not 0 <= args.max_unused <= 100:
        raise UserError("prune", "--max-unused is a percentage, 0 to 100")
    home = find_home(args.home)
    bars: dict[str, Progress] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for b in bars.values():
                b.close()
            bar = bars[phase] = Progress(phase, total or None, unit="B" if phase == "copy" else "blk")
        bar.update(done - bar.n)

    try:
        rep = _through_daemon(home, args, progress)
        if rep is None:
            rep = _here(home, args, progress)
    finally:
        for b in bars.values():
            b.close()
    if args.json:
        print(json.dumps(rep))
        return 0
    print(summary(rep))
    return 0


def summary(rep: dict) -> str:
    """One line saying what prune found and reclaimed."""
    from grid.progress import human_bytes

    verb = "would reclaim" if rep["dry_run"] else "reclaimed"
    late = f", {rep['late_blocks']} written meanwhile kept" if rep.get("late_blocks") else ""
    return (f"prune: {rep['name_records']} name records, {rep['spawns']} spawn(s): "
            f"{rep['live_blocks']} of {rep['blocks']} blocks live ({human_bytes(rep['live_bytes'])}), "
            f"{human_bytes(rep['dead_bytes'])} dead{late}; {len(rep['victims'])} segment(s) "
            f"compacted, {rep['copied_records']} records ({human_bytes(rep['copied_bytes'])}) "
            f"copied, {verb} {human_bytes(rep['reclaimed_bytes'])} in {rep['seconds']:.1f}s "
            f"(mark set {human_bytes(rep['mark_set_bytes'])})")


def _here(home: GridHome, args: argparse.Namespace, progress: ProgressFn) -> dict:
    """Prune in this process: no daemon holds the store."""
    from grid.errors import UserError
    from grid.prune import live_roots
    from store.errors import StoreError, StoreLocked
    from store.local import LocalStore
    from store.prune import prune

    try:
        store = LocalStore.open(home.store)
    except StoreLocked as e:
        raise UserError("prune", f"{e}, and its node daemon does not answer on "
                        f"{home.control_socket}; try again once it has started or stopped") from None
    counts: dict[str, int] = {}

    def roots() -> list[bytes]:
        rs, c = live_roots(home)
        counts.update(c)
        return rs

    try:
        with store:
            rep = prune(store, roots, max_unused=args.max_unused, dry_run=args.dry_run,
                        progress=progress)
    except StoreError as e:
        raise UserError("prune", str(e)) from None
    return {**rep.as_dict(), **counts}


def _through_daemon(home: GridHome, args: argparse.Namespace, progress: ProgressFn) -> dict | None:
    """Ask the running node daemon to prune (grid.daemon.pruneop); None when none runs."""
    import sys

    from grid.daemon.client import DaemonError, connect
    from grid.errors import UserError

    try:
        client = connect(home, start=False)
    except UserError:
        return None  # no daemon answers: prune here
    told = False

    def notice(msg: list) -> None:
        nonlocal told
        if msg and msg[0] == "progress" and len(msg) == 4:
            progress(str(msg[1]), int(msg[2]), int(msg[3]))
        elif msg and msg[0] == "waiting" and len(msg) == 2:
            if not told or not args.json:
                print(f"prune: waiting for {len(msg[1])} writer(s) that began before it: "
                      f"{', '.join(map(str, msg[1]))}…", file=sys.stderr)
            told = True

    with client:
        try:
            return client.call_with_notices("prune", notice, dry_run=bool(args.dry_run),
                                            max_unused=float(args.max_unused))
        except DaemonError as e:
            raise UserError("prune", e.strerror or str(e)) from None
