"""`grid forget NAME... --keep-*`: apply a retention policy to names' histories.

Each forgotten snapshot gets a forget record in the names file (docs/ndb.md, "Forgetting"),
which replicates like every name record; the blocks only it used are reclaimed by
`grid prune`. Like `grid name`, it works on the files when this user may write them, and
through the daemon (with the caller's rights: the name's owner or root) otherwise.
"""

from __future__ import annotations

import argparse

_EPILOG = """\
examples:
  grid forget myproject --keep-last 5
  grid forget myproject other --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run
  grid forget myproject --keep-within 30d --json
  grid forget oldname                      (a deleted name: forgotten whole)
then reclaim the space with `grid prune`.
"""


def _count(text: str) -> int:
    from ndb.retention import UNLIMITED

    if text == "unlimited":
        return UNLIMITED
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count or 'unlimited'") from None
    if n < 0:
        raise argparse.ArgumentTypeError("a count is >= 0 (or 'unlimited')")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forget", help="forget old snapshots of names by a retention policy (then grid prune)",
        description=(
            "Apply restic's retention policy to each NAME's history. A snapshot is kept if any\n"
            "--keep option keeps it; the name's latest save is always kept. A deleted name\n"
            "with no --keep option is forgotten whole. Only a name's owner (or root) may\n"
            "forget. Forgetting writes forget records (replicated to peers); `grid prune`\n"
            "then reclaims the blocks nothing else uses."
        ),
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    for rule, what in (("last", "the N newest"), ("hourly", "one per hour, N hours"),
                       ("daily", "one per day, N days"), ("weekly", "one per ISO week, N weeks"),
                       ("monthly", "one per month, N months"), ("yearly", "one per year, N years")):
        p.add_argument(f"--keep-{rule}", type=_count, metavar="N", help=f"keep {what} ('unlimited')")
    p.add_argument("--keep-within", metavar="DURATION",
                   help="keep every snapshot newer than the latest minus DURATION (1y5m7d2h)")
    p.add_argument("--dry-run", "-n", action="store_true", help="say what would go; write nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_forget)


def run_forget(args: argparse.Namespace) -> int:
    import json

    from grid.cli.names_cmd import _call, _checked
    from grid.errors import UserError
    from ndb.errors import NdbNotFound, NdbValueError
    from ndb.retention import Within

    if args.keep_within:
        try:
            Within.parse(args.keep_within)
        except NdbValueError as e:
            raise UserError("forget", str(e)) from None
    keep = {f"keep_{r}": getattr(args, f"keep_{r}")
            for r in ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")}
    keep = {k: v for k, v in keep.items() if v is not None}
    plans = []
    for name in args.names:
        what = f"forget {name}"
        try:
            plans.append(_call(args, "name_forget", what, _checked(name), dry_run=args.dry_run, **keep))
        except NdbNotFound:
            raise UserError(what, "no such name") from None
        except NdbValueError as e:
            raise UserError(what, str(e)) from None
    if args.json:
        print(json.dumps(plans, indent=2, ensure_ascii=False))
        return 0
    verb = "would forget" if args.dry_run else "forgot"
    for plan in plans:
        for r in plan["keep"]:
            print(f"{plan['name']}  keep    {r['date']}  {r['score'] or 'deleted'}  "
                  f"({', '.join(r['reasons'])})")
        for r in plan["forget"]:
            print(f"{plan['name']}  forget  {r['date']}  {r['score'] or 'deleted'}")
        print(f"{plan['name']}: kept {len(plan['keep'])}, {verb} {len(plan['forget'])}")
    return 0
