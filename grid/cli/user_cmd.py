"""`grid user add|list|rm`: the grid's users (ndb file `users`)."""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "user",
        help="add, list and remove grid users",
        description=(
            "Grid users own names and spawns. A user is recognised by a local uid (Unix\n"
            "socket peer credentials), an SSH key (SFTP/SSH) or, later, a TLS client\n"
            "certificate from the grid CA."
        ),
        epilog="examples:\n  grid user add alice --uid 1000 --ssh-key ~/.ssh/id_ed25519.pub\n  grid user list",
        formatter_class=_RAW,
    )
    ss = p.add_subparsers(dest="user_command", metavar="SUBCOMMAND", required=True)

    a = ss.add_parser(
        "add",
        help="add a user",
        description=(
            "Add user NAME. --ssh-key reads a public key file (one key per line, as in\n"
            "authorized_keys without options); give it once per file. Certificates come\n"
            "with the grid CA: the cert= attribute is reserved for them."
        ),
        epilog=(
            "example:\n"
            "  grid user add alice --uid 1000 --ssh-key ~/.ssh/id_ed25519.pub --group staff"
        ),
        formatter_class=_RAW,
    )
    a.add_argument("name")
    a.add_argument("--uid", type=int, help="local Unix uid that maps to this user")
    a.add_argument(
        "--ssh-key",
        dest="ssh_keys",
        metavar="FILE",
        action="append",
        default=[],
        help="public key file (repeatable)",
    )
    a.add_argument(
        "--group",
        dest="groups",
        metavar="G",
        action="append",
        default=[],
        help="group (repeatable)",
    )
    a.set_defaults(func=run_add)

    ls = ss.add_parser(
        "list",
        help="list users",
        description="List the grid's users.",
        epilog="example:\n  grid user list --json",
        formatter_class=_RAW,
    )
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_list)

    rm = ss.add_parser(
        "rm",
        help="remove a user",
        description="Remove user NAME's entry; the rest of the file, comments included, is kept.",
        epilog="example:\n  grid user rm alice",
        formatter_class=_RAW,
    )
    rm.add_argument("name")
    rm.set_defaults(func=run_rm)


def _users(args: argparse.Namespace):
    from grid.home import find_home
    from ndb.users import UserDB

    return UserDB(find_home(args.home).users_db)


def _read_keys(path: str) -> list[str]:
    from pathlib import Path

    from grid.errors import UserError
    from ndb.errors import NdbValueError
    from ndb.values import check_ssh_key

    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"ssh key {path}", getattr(e, "strerror", None) or str(e)) from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(check_ssh_key(line))
        except NdbValueError as e:
            raise UserError(f"ssh key {path}:{n}", str(e)) from None
    if not keys:
        raise UserError(f"ssh key {path}", "no public key in the file")
    return keys


def run_add(args: argparse.Namespace) -> int:
    from ndb.users import User

    keys = [k for path in args.ssh_keys for k in _read_keys(path)]
    user = User(name=args.name, uid=args.uid, sshkeys=tuple(keys), groups=tuple(args.groups))
    _users(args).add(user)
    print(f"user {user.name} added")
    return 0


def run_list(args: argparse.Namespace) -> int:
    import json

    users = _users(args).list()
    if args.json:
        print(json.dumps([u.as_dict() for u in users], indent=2, ensure_ascii=False))
        return 0
    rows = [
        [
            u.name,
            "-" if u.uid is None else str(u.uid),
            ",".join(u.groups) or "-",
            f"{len(u.sshkeys)} ssh key(s)",
        ]
        for u in users
    ]
    if rows:
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3])
    return 0


def run_rm(args: argparse.Namespace) -> int:
    user = _users(args).remove(args.name)
    print(f"user {user.name} removed")
    return 0
