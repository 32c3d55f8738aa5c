"""`grid prune`: reclaim the space of blocks nothing holds any more (after `grid forget`)."""

from __future__ import annotations

import argparse

_EPILOG = """\
examples:
  grid forget myproject --keep-last 5
  grid prune --dry-run               what would be reclaimed
  grid prune                         compact segments over 10 % dead
  grid prune --max-unused 0 --json   compact every segment with any dead block
The node daemon must be stopped (`grid stop`): prune needs the store to itself.
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
    from grid.progress import Progress, human_bytes
    from grid.prune import live_roots
    from store.errors import StoreError, StoreLocked
    from store.local import LocalStore
    from store.prune import prune

    if not 0 <= args.max_unused <= 100:
        raise UserError("prune", "--max-unused is a percentage, 0 to 100")
    home = find_home(args.home)
    try:
        store = LocalStore.open(home.store)
    except StoreLocked as e:
        raise UserError("prune", f"{e}; prune needs the store to itself: stop the node daemon "
                        "(`grid stop`) and run it again") from None
    bars: dict[str, Progress] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for b in bars.values():
                b.close()
            bar = bars[phase] = Progress(phase, total or None, unit="B" if phase == "copy" else "blk")
        bar.update(done - bar.n)

    try:
        with store:
            roots, counts = live_roots(home)
            rep = prune(store, roots, max_unused=args.max_unused, dry_run=args.dry_run,
                        progress=progress)
    except StoreError as e:
        raise UserError("prune", str(e)) from None
    finally:
        for b in bars.values():
            b.close()
    if args.json:
        print(json.dumps({**rep.as_dict(), **counts}))
        return 0
    verb = "would reclaim" if args.dry_run else "reclaimed"
    print(f"prune: {counts['name_records']} name records, {counts['spawns']} spawn(s): "
          f"{rep.live_blocks} of {rep.blocks} blocks live ({human_bytes(rep.live_bytes)}), "
          f"{human_bytes(rep.dead_bytes)} dead; {len(rep.victims)} segment(s) compacted, "
          f"{rep.copied_records} records ({human_bytes(rep.copied_bytes)}) copied, "
          f"{verb} {human_bytes(rep.reclaimed_bytes)} in {rep.seconds:.1f}s "
          f"(mark set {human_bytes(rep.mark_set_bytes)})")
    return 0
