"""`grid init`: create a grid home for a single node (the embedded default)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="create the grid home (store, ndb files)",
        description=(
            "Create a grid home: the block store, the ndb files (names, users, peers).\n"
            "Safe to run again: what exists is kept.\n\nexample:\n  GRID_HOME=/srv/grid grid init"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from grid.init import init_home

    home, created = init_home(args.home)
    print(f"grid home {home.root} {'created' if created else 'already exists'}")
    return 0
