"""Entry point of the `grid` command.

Start-up time matters (`grid spawn` should cost little more than the interpreter), so command
modules import only argparse at module level and pull in the store, ndb and the rest inside
their handlers. Every handler returns an exit status; user errors become one line on stderr,
``grid: <what failed>: <why>``, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Command-group modules under grid.cli; each defines register(subparsers).
COMMAND_MODULES: tuple[str, ...] = (
    "init_cmd",
    "store_cmd",
    "archive_cmd",
    "ndb_cmd",
    "names_cmd",
    "forget_cmd",
    "prune_cmd",
    "user_cmd",
    "peer_cmd",
    "spawn_cmd",
    "ninep_cmd",
    "replicate_cmd",
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grid",
        formatter_class=_Formatter,
        description="grid: a snapshot-spawning storage grid (venti + fossil style).",
        epilog=(
            "examples:\n"
            "  grid init                       create the grid home\n"
            "  grid import ~/src proj          a tree becomes the named snapshot proj\n"
            "  grid spawn proj --mount ~/w     a private writable copy of it, mounted\n"
            "  grid save 1                     snapshot spawn 1: proj moves to the new root\n"
            "  grid replicate                  send new blocks and names to the peers\n"
            "  grid store put big.iso          store a file, print its score\n"
            "\nThe grid home is $GRID_HOME, else ~/.local/share/grid; --home overrides both."
        ),
    )
    parser.add_argument("--home", metavar="DIR", help="grid home directory (default: $GRID_HOME)")
    from grid import __version__

    parser.add_argument("--version", action="version", version=f"grid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"grid.cli.{name}")
        module.register(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    """Error bases that are the user's to fix; anything else is a bug and keeps its traceback."""
    from grid.errors import UserError

    errors: list[type[BaseException]] = [UserError]
    for modname, attr in (
        ("store.errors", "StoreError"),
        ("ndb.errors", "NdbError"),
        ("replication.errors", "CertError"),
    ):
        mod = sys.modules.get(modname)
        if mod is not None:
            errors.append(getattr(mod, attr))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("grid: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        from grid.errors import UserError

        if isinstance(exc, UserError):
            print(f"grid: {exc.what}: {exc.why}", file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, _known_errors()):
            print(f"grid: {args.command}: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, OSError) and exc.filename is not None:
            import os

            print(f"grid: {os.fsdecode(exc.filename)}: {exc.strerror}", file=sys.stderr)
            return 1
        raise
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
