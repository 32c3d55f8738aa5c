"""`grid names`, `grid history NAME`, `grid name get|set|rm`: the score-name database."""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "names",
        help="list names and the scores they resolve to",
        description=(
            "List every name with its latest record (score, user, date).\n"
            "Deleted names (whose latest record is a tombstone) only with --all."
        ),
        epilog="examples:\n  grid names\n  grid names --user alice --json\n  grid names --all",
        formatter_class=_RAW,
    )
    p.add_argument("--user", metavar="U", help="only names whose latest record is by user U")
    p.add_argument("--all", action="store_true", help="include deleted names")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_names)

    h = sub.add_parser(
        "history",
        help="every record of a name, latest first",
        description=(
            "Show every record of NAME, latest first: saves (score, prev=), deletions\n"
            "(tombstones), and concurrent saves merged in from other nodes."
        ),
        epilog="example:\n  grid history myproject",
        formatter_class=_RAW,
    )
    h.add_argument("name")
    h.add_argument("--json", action="store_true", help="print JSON")
    h.set_defaults(func=run_history)

    n = sub.add_parser(
        "name",
        help="get, set or delete one name",
        description="Resolve, set or delete a name in the score-name database.",
        epilog=(
            "examples:\n"
            "  grid name get myproject\n"
            "  grid name set myproject blake3:<64 hex digits>\n"
            "  grid name rm myproject"
        ),
        formatter_class=_RAW,
    )
    ns = n.add_subparsers(dest="name_command", metavar="SUBCOMMAND", required=True)
    g = ns.add_parser(
        "get",
        help="print the score a name resolves to",
        description="Print the score NAME resolves to; exit 1 when it is unknown or deleted.",
        epilog="example:\n  grid name get myproject",
        formatter_class=_RAW,
    )
    g.add_argument("name")
    g.add_argument("--json", action="store_true", help="print the whole record as JSON")
    g.set_defaults(func=run_get)
    s = ns.add_parser(
        "set",
        help="point a name at a score (append a record)",
        description=(
            "Append a record NAME -> SCORE, dated now, with prev= the score it replaces.\n"
            "A plain record append: the blocks of SCORE should already be in the store\n"
            "(`grid import` and `grid save` see to that)."
        ),
        epilog="example:\n  grid name set myproject blake3:9f0e…(64 hex digits) --user alice",
        formatter_class=_RAW,
    )
    s.add_argument("name")
    s.add_argument("score", help="blake3:<64 lowercase hex digits>")
    s.add_argument(
        "--user", metavar="U", help="the record's user (default: you; must be a grid user)"
    )
    s.set_defaults(func=run_set)
    r = ns.add_parser(
        "rm",
        help="delete a name (append a tombstone)",
        description=(
            "Delete NAME by appending a tombstone record: the name stops resolving, its\n"
            "history stays, and the deletion replicates like any record."
        ),
        epilog="example:\n  grid name rm myproject",
        formatter_class=_RAW,
    )
    r.add_argument("name")
    r.add_argument("--user", metavar="U", help="the tombstone's user (default: you)")
    r.set_defaults(func=run_rm)


def _names(args: argparse.Namespace):
    from grid.home import find_home
    from ndb.names import NameDB
    from ndb.users import UserDB

    home = find_home(args.home)
    return NameDB(home.names_db, users=UserDB(home.users_db))


def _me() -> str:
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _record_dict(r) -> dict[str, object]:
    return {
        "name": r.name,
        "score": r.score,
        "deleted": r.tombstone,
        "user": r.user,
        "date": r.date,
        "prev": r.prev,
        "node": r.node,
        "extra": {p.attr: p.value for p in r.extra},
    }


def _print_table(rows: list[list[str]]) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]).rstrip())


def run_names(args: argparse.Namespace) -> int:
    import json

    records = _names(args).list(user=args.user, include_deleted=args.all)
    if args.json:
        print(json.dumps([_record_dict(r) for r in records], indent=2, ensure_ascii=False))
        return 0
    _print_table([[r.name, r.score or "(deleted)", r.user, r.date] for r in records])
    return 0


def run_history(args: argparse.Namespace) -> int:
    import json

    from grid.errors import UserError
    from ndb.values import check_name

    check_name(args.name)
    records = _names(args).history(args.name)
    if not records:
        raise UserError(f"history {args.name}", "no such name")
    if args.json:
        print(json.dumps([_record_dict(r) for r in records], indent=2, ensure_ascii=False))
        return 0
    rows = []
    for r in records:
        rows.append(
            [
                r.date,
                "deleted" if r.tombstone else (r.score or ""),
                r.user,
                f"prev={r.prev}" if r.prev else "",
            ]
        )
    _print_table(rows)
    return 0


def run_get(args: argparse.Namespace) -> int:
    import json

    from grid.errors import UserError
    from ndb.values import check_name

    check_name(args.name)
    r = _names(args).resolve(args.name)
    if r is None:
        raise UserError(f"name get {args.name}", "no such name (unknown or deleted)")
    print(json.dumps(_record_dict(r), indent=2, ensure_ascii=False) if args.json else r.score)
    return 0


def run_set(args: argparse.Namespace) -> int:
    r = _names(args).set(args.name, args.score, args.user or _me())
    print(f"{r.name} {r.score} {r.date}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    r = _names(args).delete(args.name, args.user or _me())
    print(f"{r.name} deleted {r.date}")
    return 0
