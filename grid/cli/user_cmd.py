"""`grid user add|list|rm|cert`: the grid's users (ndb file `users`) and their certificates.

A user added on the node that holds the grid's CA key also gets a TLS client certificate:
a bundle (cert.pem, key.pem, ca.pem, all 0600) under certs/users/NAME/ that the user takes
away. See docs/certificates.md.
"""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "user",
        help="add, list and remove grid users",
        description=(
            "Grid users own names and spawns. A user is recognised by a local uid (Unix\n"
            "socket peer credentials), an SSH key (SFTP/SSH) or a TLS client certificate\n"
            "from the grid CA (`grid user add` issues one; `grid user cert` renews or copies it)."
        ),
        epilog=(
            "examples:\n  grid user add alice --uid 1000 --ssh-key ~/.ssh/id_ed25519.pub\n"
            "  grid user cert alice --out /tmp/alice-cert\n  grid user list"
        ),
        formatter_class=_RAW,
    )
    ss = p.add_subparsers(dest="user_command", metavar="SUBCOMMAND", required=True)

    a = ss.add_parser(
        "add",
        help="add a user",
        description=(
            "Add user NAME. --ssh-key reads a public key file (one key per line, as in\n"
            "authorized_keys without options); give it once per file. On the node that holds\n"
            "the grid's CA key, NAME also gets a TLS client certificate: a bundle (cert.pem,\n"
            "key.pem, ca.pem; mode 0600) in certs/users/NAME/ of the grid home, printed at the\n"
            "end. Hand it to the user over a safe channel."
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

    c = ss.add_parser(
        "cert",
        help="renew or export a user's certificate bundle",
        description=(
            "Print where user NAME's certificate bundle is (cert.pem, key.pem, ca.pem), issuing\n"
            "a new one when NAME has none or it is no longer valid (expired, another CA).\n"
            "--renew issues a new key and certificate in any case. --out DIR also copies the\n"
            "bundle into DIR (created 0700; files 0600). Issuing needs the grid's CA key."
        ),
        epilog=(
            "examples:\n  grid user cert alice --out /media/usb/alice\n"
            "  grid user cert alice --renew"
        ),
        formatter_class=_RAW,
    )
    c.add_argument("name")
    c.add_argument("--out", metavar="DIR", help="also write the bundle into DIR")
    c.add_argument("--renew", action="store_true", help="issue a new key and certificate")
    c.set_defaults(func=run_cert)

    k = ss.add_parser(
        "key",
        help="add or remove a user's SSH public keys",
        description=(
            "Add or remove SSH public keys of user NAME (ndb sshkey=): the keys the node's\n"
            "SSH service (grid serve --ssh) accepts for NAME. FILE holds one key per line, as\n"
            "in authorized_keys without options. Keys are compared without their comments.\n"
            "The change counts at the next login."
        ),
        epilog=(
            "examples:\n  grid user key add alice ~alice/.ssh/id_ed25519.pub\n"
            "  grid user key rm alice old_key.pub"
        ),
        formatter_class=_RAW,
    )
    ks = k.add_subparsers(dest="key_command", metavar="add|rm", required=True)
    for verb, what in (("add", "add the keys in FILE"), ("rm", "remove the keys in FILE")):
        kp = ks.add_parser(verb, help=what, description=f"{what.capitalize()} for user NAME.")
        kp.add_argument("name")
        kp.add_argument("files", metavar="FILE", nargs="+", help="public key file")
        kp.set_defaults(func=run_key, key_verb=verb)


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


def _issuer(home):
    """(CA with its key, None), or (None, why no certificate can be issued on this node)."""
    from grid.init import ca_dir, cert_error
    from replication import certs

    if not (ca_dir(home) / certs.CERT_FILE).exists():
        return None, "this grid home has no CA (run `grid init` to create one)"
    try:
        ca = certs.load_ca(ca_dir(home), need_key=False)
    except certs.CertError as e:
        raise cert_error(e) from None
    if ca.key is None:
        return None, "this node joined the grid and has no CA key; issue it on the CA node"
    return ca, None


def _install(home, name: str, creds):
    from grid.init import cert_error, user_cert_dir
    from replication import certs

    try:
        return certs.write_bundle(user_cert_dir(home, name), creds, replace=True)
    except certs.CertError as e:
        raise cert_error(e) from None


def run_add(args: argparse.Namespace) -> int:
    from grid.home import find_home
    from ndb.users import User, UserDB
    from replication import certs

    home = find_home(args.home)
    keys = [k for path in args.ssh_keys for k in _read_keys(path)]
    user = User(name=args.name, uid=args.uid, sshkeys=tuple(keys), groups=tuple(args.groups))
    users = UserDB(home.users_db)
    if users.get(user.name) is None:  # (add() checks again, under its lock)
        ca, why = _issuer(home)
    else:
        ca, why = None, None
    creds = certs.issue_user_cert(ca, user.name) if ca is not None else None
    users.add(user)
    print(f"user {user.name} added")
    if creds is None:
        print(f"no certificate issued: {why}")
        return 0
    try:
        where = _install(home, user.name, creds)
    except BaseException:
        users.remove(user.name)
        raise
    print(f"certificate bundle in {where} (cert.pem, key.pem, ca.pem; mode 0600)")
    return 0


def _current_bundle(home, name: str):
    """The user's bundle when it is still good (valid now, from this home's CA), else None."""
    from grid.init import ca_dir, user_cert_dir
    from replication import certs

    try:
        creds = certs.load_bundle(user_cert_dir(home, name), expect=certs.USER)
        ca = certs.load_ca(ca_dir(home), need_key=False)
    except certs.CertError:
        return None  # missing, expired, damaged: a new one is issued
    if creds.identity.name != name or creds.ca_cert != ca.cert:
        return None
    return creds


def run_cert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grid.errors import UserError
    from grid.home import find_home
    from grid.init import cert_error, user_cert_dir
    from ndb.errors import NdbNotFound
    from ndb.users import UserDB
    from replication import certs

    home = find_home(args.home)
    if UserDB(home.users_db).get(args.name) is None:
        raise NdbNotFound(f"no user {args.name!r}")
    bundle = user_cert_dir(home, args.name)
    creds = None if args.renew else _current_bundle(home, args.name)
    if creds is None:
        ca, why = _issuer(home)
        if ca is None:
            raise UserError(f"certificate for {args.name}", why)
        creds = certs.issue_user_cert(ca, args.name)
        _install(home, args.name, creds)
        print(f"issued a new certificate for {args.name}: bundle in {bundle}")
    else:
        print(f"certificate bundle of {args.name} in {bundle}")
    print(f"valid until {creds.cert.not_valid_after_utc:%Y-%m-%d}, {certs.fingerprint(creds.cert)}")
    if args.out:
        try:
            out = certs.export_bundle(Path(args.out).expanduser(), creds)
        except certs.CertError as e:
            raise cert_error(e) from None
        print(f"bundle copied to {out} (cert.pem, key.pem, ca.pem; mode 0600)")
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
    import shutil

    from grid.home import find_home
    from grid.init import user_cert_dir

    user = _users(args).remove(args.name)
    print(f"user {user.name} removed")
    bundle = user_cert_dir(find_home(args.home), user.name)
    if bundle.is_dir():
        shutil.rmtree(bundle)
        print(f"certificate bundle {bundle} removed")
    return 0


def run_key(args: argparse.Namespace) -> int:
    """Rewrite user NAME's entry with its new key list, under the users file's lock (so a
    concurrent `grid user` change is not lost). The entry moves to the end of the file:
    ndb.document edits by removing and appending whole entries, keeping every other byte."""
    import dataclasses

    from grid.errors import UserError
    from ndb.document import Document
    from ndb.errors import NdbNotFound
    from ndb.users import KIND, User

    keys = [k for path in args.files for k in _read_keys(path)]
    users = _users(args)
    with users.file.locked() as f:
        doc = Document.parse(f.read(), users.file.name)
        found = [e for e in doc.entries if e.kind == KIND and e.lines[0][0].value == args.name]
        if not found:
            raise NdbNotFound(f"no user {args.name!r}")
        old = User.from_entry(found[0], users.file.name)
        have = list(old.sshkeys)
        same = {tuple(k.split()[:2]) for k in keys}
        if args.key_verb == "add":
            have += [k for k in keys if tuple(k.split()[:2]) not in
                     {tuple(h.split()[:2]) for h in have}]
        else:
            missing = same - {tuple(h.split()[:2]) for h in have}
            if missing:
                raise UserError(f"user key rm {args.name}",
                                f"{len(missing)} of the keys given are not {args.name}'s")
            have = [h for h in have if tuple(h.split()[:2]) not in same]
        new = dataclasses.replace(old, sshkeys=tuple(have))
        rest = Document.parse(doc.without(lambda e: e is found[0]), users.file.name)
        f.replace(rest.with_appended([new.to_entry()]))
    print(f"user {args.name}: {len(have)} SSH key{'s' if len(have) != 1 else ''}")
    return 0
