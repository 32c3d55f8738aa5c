"""`grid names`, `grid history NAME`, `grid name get|set|rm|chmod|chown|share|unshare`: the
score-name database.

Who may read and write the home's ndb files (root, the home's owner) works on them directly,
with every right; everyone else asks the node daemon, which applies the names' owners and
modes to the caller it knows by uid (grid.daemon.nameops; docs/daemon.md, "Names"). Both run
the same functions (nameops.LOCAL) and print the same way.
"""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "names",
        help="list names and the scores they resolve to",
        description=(
            "List every name you may read with its latest record (score, user, date,\n"
            "owner[:group], mode; a + after the mode: shared through an ACL).\n"
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
        description=(
            "Resolve, set or delete a name in the score-name database, or change who may\n"
            "read and write it (names are private to their owner until shared)."
        ),
        epilog=(
            "examples:\n"
            "  grid name get myproject\n"
            "  grid name set myproject blake3:<64 hex digits>\n"
            "  grid name rm myproject\n"
            "  grid name chmod 0644 myproject\n"
            "  grid name share myproject bob"
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
    c = ns.add_parser(
        "chmod",
        help="who may read (spawn) and write (save over) a name",
        description=(
            "Set NAME's mode, as chmod(1): octal (owner, group, others; r = list, spawn,\n"
            "read history; w = save over, set, delete) or symbolic (u+rw,g+r,o-rwx).\n"
            "New names are 0600: private to their owner. The owner or root may chmod;\n"
            "the change is a record of its own (same score), so it replicates."
        ),
        epilog="examples:\n  grid name chmod 0644 base\n  grid name chmod g+r,o= myproject",
        formatter_class=_RAW,
    )
    c.add_argument("mode")
    c.add_argument("name")
    c.set_defaults(func=run_chmod)
    o = ns.add_parser(
        "chown",
        help="give a name to another user, or set its group",
        description=(
            "Set NAME's owner and/or group. As in Unix, only root gives a name to another\n"
            "user; the owner may set the group to one of their own (ndb users' group=).\n"
            "An empty group (USER: or :) removes it."
        ),
        epilog="examples:\n  grid name chown alice base\n  grid name chown :staff myproject",
        formatter_class=_RAW,
    )
    o.add_argument("owner", metavar="USER[:GROUP]")
    o.add_argument("name")
    o.set_defaults(func=run_chown)
    sh = ns.add_parser(
        "share",
        help="let a user or a group read (and spawn) a name",
        description=(
            "Let USER, or every member of @GROUP, read NAME (list it, spawn it, read its\n"
            "history), and with --write save over it too: an acl= entry on the name's\n"
            "next record. The owner or root may share; unshare takes it back."
        ),
        epilog="examples:\n  grid name share myproject bob\n  grid name share base @staff --write",
        formatter_class=_RAW,
    )
    sh.add_argument("name")
    sh.add_argument("who", metavar="USER|@GROUP")
    sh.add_argument("--write", action="store_true", help="they may save over it as well")
    sh.set_defaults(func=run_share)
    u = ns.add_parser(
        "unshare",
        help="take back what share gave",
        description="Remove USER's or @GROUP's acl= entry from NAME.",
        epilog="example:\n  grid name unshare myproject bob",
        formatter_class=_RAW,
    )
    u.add_argument("name")
    u.add_argument("who", metavar="USER|@GROUP")
    u.set_defaults(func=run_unshare)


def _call(args: argparse.Namespace, op: str, what: str, *a: object,
          as_user: str | None = None, **kw: object):
    """Run name request *op*: on the files when this user may write them (with every
    right), else through the node daemon (with the caller's rights). *as_user*: the
    record's user for set and rm (the files only)."""
    import errno
    import os

    from grid.daemon import nameops
    from grid.errors import UserError
    from grid.home import find_home
    from ndb.nameaccess import Caller

    home = find_home(args.home)
    if os.access(home.names_db, os.R_OK | os.W_OK) or (
        os.access(home.ndb_dir, os.W_OK | os.X_OK) and not os.path.lexists(home.names_db)
    ):
        from ndb.names import NameDB
        from ndb.users import UserDB

        db = NameDB(home.names_db, users=UserDB(home.users_db))
        return nameops.LOCAL[op](db, Caller(as_user or _me(), privileged=True), *a, **kw)
    if as_user is not None:
        raise UserError(what, "--user: only root and the home's owner write records for others")
    from grid.daemon.client import DaemonError, connect

    with connect(home) as c:
        try:
            return c.call(op, *a, **kw)
        except DaemonError as e:
            if e.errno == errno.ENOENT:
                from ndb.errors import NdbNotFound

                raise NdbNotFound(e.strerror) from None
            raise UserError(what, e.strerror or str(e)) from None


def _me() -> str:
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _perms(d: dict) -> list[str]:
    owner = d["owner"] + (f":{d['group']}" if d.get("group") else "")
    return [owner, d["mode"] + ("+" if d.get("acl") else "")]


def _print_table(rows: list[list[str]]) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]).rstrip())


def _checked(name: str) -> str:
    from ndb.values import check_name

    return check_name(name)


def run_names(args: argparse.Namespace) -> int:
    import json

    records = _call(args, "names", "names", user=args.user, all=args.all)
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    _print_table([[r["name"], r["score"] or "(deleted)", r["user"], r["date"], *_perms(r)]
                  for r in records])
    return 0


def run_history(args: argparse.Namespace) -> int:
    import json

    from grid.errors import UserError
    from ndb.errors import NdbNotFound

    try:
        records = _call(args, "history", f"history {args.name}", _checked(args.name))
    except NdbNotFound:
        raise UserError(f"history {args.name}", "no such name") from None
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    rows = []
    for r in records:
        rows.append(
            [
                r["date"],
                "deleted" if r["deleted"] else (r["score"] or ""),
                r["user"],
                *_perms(r),
                f"prev={r['prev']}" if r["prev"] else "",
            ]
        )
    _print_table(rows)
    return 0


def run_get(args: argparse.Namespace) -> int:
    import json

    from grid.errors import UserError
    from ndb.errors import NdbNotFound

    what = f"name get {args.name}"
    try:
        r = _call(args, "name_get", what, _checked(args.name))
    except NdbNotFound:
        raise UserError(what, "no such name (unknown or deleted)") from None
    print(json.dumps(r, indent=2, ensure_ascii=False) if args.json else r["score"])
    return 0


def _check_root(args: argparse.Namespace, text: str) -> None:
    """A name may point only at a root that is there (DESIGN invariant: names point at present
    roots): not the zero score, not a score whose block this store lacks."""
    import os

    from grid.errors import UserError
    from grid.home import find_home
    from ndb.errors import NdbValueError
    from ndb.values import check_score
    from store.score import NULL_SCORE, parse_score

    try:
        score = parse_score(check_score(text))
    except NdbValueError as e:
        raise UserError(f"name set {args.name}", str(e)) from None
    if score == NULL_SCORE:
        raise UserError(f"name set {args.name}", "the zero score names no tree")
    home = find_home(args.home)
    if not os.access(home.store, os.R_OK | os.X_OK):
        return  # the daemon checks presence for those who cannot read the store
    from grid.storeopen import open_store
    from store.client import RemoteError, RemoteStore

    # With the daemon up, ask its store: a block found there is kept by a prune running now
    # (docs/store.md, "Online prune"); a read-only look of our own would not tell it.
    store = None
    if home.blocks_socket.exists():
        try:
            store = RemoteStore.connect_unix(str(home.blocks_socket), name="grid")
        except (OSError, RemoteError):
            store = None  # no daemon behind a stale socket: read the store ourselves
    with store if store is not None else open_store(home, readonly=True) as store:
        if store.missing([score]):
            raise UserError(f"name set {args.name}",
                            f"{text} is not in this node's store (import or replicate it first)")


def run_set(args: argparse.Namespace) -> int:
    _check_root(args, args.score)
    r = _call(args, "name_set", f"name set {args.name}", args.name, args.score,
              as_user=args.user)
    print(f"{r['name']} {r['score']} {r['date']}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    r = _call(args, "name_rm", f"name rm {args.name}", args.name, as_user=args.user)
    print(f"{r['name']} deleted {r['date']}")
    return 0


def _print_perms(r: dict) -> None:
    acl = f" acl={','.join(r['acl'])}" if r["acl"] else ""
    owner, mode = _perms(r)
    print(f"{r['name']} {owner} {mode.rstrip('+')}{acl} {r['date']}")


def run_chmod(args: argparse.Namespace) -> int:
    _print_perms(_call(args, "name_chmod", f"name chmod {args.name}", args.name, args.mode))
    return 0


def run_chown(args: argparse.Namespace) -> int:
    _print_perms(_call(args, "name_chown", f"name chown {args.name}", args.name, args.owner))
    return 0


def run_share(args: argparse.Namespace) -> int:
    _print_perms(_call(args, "name_share", f"name share {args.name}", args.name, args.who,
                       write=args.write))
    return 0


def run_unshare(args: argparse.Namespace) -> int:
    _print_perms(_call(args, "name_unshare", f"name unshare {args.name}", args.name, args.who))
    return 0
