"""`grid ndb ...`: query and check the grid's ndb files as Plan 9's ndb/query does."""

from __future__ import annotations

import argparse

_QUERY_EPILOG = """\
Prints, as Plan 9's ndb/query:
  without RATTR   every entry holding ATTR=VALUE (lines kept, continuation lines indented)
  with RATTR      the first RATTR value of the first matching entry that has one,
                  preferring the line of the matched pair
  -m RATTR        every RATTR value of that first entry
  -a RATTR        every RATTR value of every matching entry

examples:
  grid ndb query name myproject                 the records of a name
  grid ndb query name myproject score           its first score
  grid ndb query -a user alice sshkey           all of alice's ssh keys
  grid ndb query -f /lib/ndb/local sys helix    any ndb file (and its database= chain)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ndb",
        help="query and check the ndb files (names, users, peers)",
        description="Query and check the grid's ndb(6) files.",
        epilog="examples:\n  grid ndb query user alice\n  grid ndb check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ss = p.add_subparsers(dest="ndb_command", metavar="SUBCOMMAND", required=True)

    q = ss.add_parser(
        "query",
        help="look up attr=value, as Plan 9's ndb/query",
        description="Search the database for entries holding ATTR=VALUE.",
        epilog=_QUERY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("-a", dest="all", action="store_true", help="all RATTR values of all matches")
    q.add_argument(
        "-m", dest="multiple", action="store_true", help="all RATTR values of the first match"
    )
    q.add_argument(
        "-f", dest="file", metavar="FILE", help="ndb file (default: the grid home's root ndb file)"
    )
    q.add_argument(
        "--json",
        action="store_true",
        help="print JSON (entries as lists of lines of [attr, value])",
    )
    q.add_argument("attr")
    q.add_argument("value")
    q.add_argument("rattr", nargs="?")
    q.set_defaults(func=run_query)

    c = ss.add_parser(
        "check",
        help="parse every file of the database chain and report problems",
        description=(
            "Parse the root ndb file and every file its database= entry chains; report\n"
            "syntax errors (file:line) and incomplete last lines left by a killed writer."
        ),
        epilog="example:\n  grid ndb check\n  grid ndb check -f ./my.ndb",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "-f", dest="file", metavar="FILE", help="ndb file (default: the grid home's root ndb file)"
    )
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=run_check)


def _root(args: argparse.Namespace):
    from pathlib import Path

    if args.file:
        return Path(args.file)
    from grid.home import find_home

    return find_home(args.home).ndb_main


def run_query(args: argparse.Namespace) -> int:
    import json
    import sys

    from ndb.database import Database
    from ndb.query import ndbquery

    db = Database(_root(args))
    matches = list(db.search(args.attr, args.value))
    if args.json:
        if args.rattr is None:
            out: object = [[[list(p) for p in line] for line in m.entry.lines] for m in matches]
        else:
            out = ndbquery(matches, args.rattr, all=args.all, multiple=args.multiple)
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    lines = ndbquery(matches, args.rattr, all=args.all, multiple=args.multiple)
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


def run_check(args: argparse.Namespace) -> int:
    import json

    from ndb.database import Database, NdbFile
    from ndb.errors import NdbError

    root = _root(args)
    try:
        files = Database(root).files()
    except NdbError as e:
        files = [NdbFile(root)]
        root_error: str | None = str(e)
    else:
        root_error = None
    report = []
    for f in files:
        item: dict[str, object] = {"file": f.name, "exists": f.path.exists(), "error": None}
        try:
            parsed = f.parse()
        except NdbError as e:
            item["error"] = str(e)
        else:
            item["entries"] = len(parsed.entries)
            item["incomplete_last_line"] = parsed.torn.decode("utf-8", "replace") or None
        if root_error and f.path == root:
            item["error"] = root_error
        report.append(item)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for r in report:
            if r["error"]:
                print(r["error"])
            elif not r["exists"]:
                print(f"{r['file']}: missing")
            else:
                print(f"{r['file']}: {r['entries']} entries")
            if r.get("incomplete_last_line"):
                print(f"{r['file']}: incomplete last line (ignored): {r['incomplete_last_line']!r}")
    return 1 if any(r["error"] for r in report) else 0
