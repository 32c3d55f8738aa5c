"""`grid init`: create a grid home (a first node, or one joining a grid with a bundle), and
`grid join-bundle`: on the CA node, issue the bundle another node joins with.

Both live here because they are the two halves of setting a node up; see
docs/certificates.md.
"""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="create the grid home (store, ndb files, certificates)",
        description=(
            "Create a grid home: the block store, the ndb files (names, users, peers) and\n"
            "the certificates (certs/). A first node creates the grid's CA and its own node\n"
            "certificate; a node joining a grid installs the bundle the CA node made for it\n"
            "(`grid join-bundle`). Safe to run again: what exists is kept, and the CA is never\n"
            "overwritten."
        ),
        epilog=(
            "examples:\n"
            "  GRID_HOME=/srv/grid grid init\n"
            "  grid init --node-name node1 --host node1.example.org --grid-name lab\n"
            "  grid init --join node2.bundle        # on node2, with the CA node's bundle"
        ),
        formatter_class=_RAW,
    )
    p.add_argument("--node-name", metavar="N", help="this node's name (default: the host name)")
    p.add_argument(
        "--host",
        dest="hosts",
        metavar="H",
        action="append",
        default=[],
        help="a DNS name or IP address peers reach this node by (repeatable)",
    )
    p.add_argument("--grid-name", metavar="G", help="the grid's name (default: the node name)")
    p.add_argument(
        "--join",
        metavar="BUNDLE",
        help="join a grid: install the bundle from `grid join-bundle` (- reads stdin)",
    )
    p.set_defaults(func=run)

    j = sub.add_parser(
        "join-bundle",
        help="issue the bundle another node joins the grid with",
        description=(
            "On the node that holds the grid's CA key: issue a certificate for node NODE and\n"
            "write it, with its private key and the CA certificate (never the CA key), as one\n"
            "file. Carry it to NODE and run `grid init --join FILE` there, then delete it.\n"
            "The file is created 0600 and never overwrites anything."
        ),
        epilog=(
            "examples:\n"
            "  grid join-bundle node2 --host node2.example.org -o node2.bundle\n"
            "  grid join-bundle node2 -o - | ssh node2 grid init --join -"
        ),
        formatter_class=_RAW,
    )
    j.add_argument("node", metavar="NODE")
    j.add_argument(
        "--host",
        dest="hosts",
        metavar="H",
        action="append",
        default=[],
        help="a DNS name or IP address of NODE (repeatable)",
    )
    j.add_argument(
        "-o", "--out", required=True, metavar="FILE", help="where to write (- for stdout)"
    )
    j.set_defaults(func=run_join_bundle)


def _read_join(source: str):
    """The checked credentials in the bundle at *source* (``-``: stdin)."""
    import sys
    from pathlib import Path

    from grid.errors import UserError
    from grid.init import cert_error
    from replication import certs

    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).expanduser().read_bytes()
    except OSError as e:
        raise UserError(f"join bundle {source}", e.strerror or str(e)) from None
    try:
        return certs.read_join_bundle(data, where=source if source != "-" else "<stdin>")
    except certs.CertError as e:
        raise cert_error(e) from None


def run(args: argparse.Namespace) -> int:
    from grid.init import cert_status, init_home

    join = _read_join(args.join) if args.join else None
    home, created = init_home(
        args.home,
        node_name=args.node_name,
        hosts=args.hosts,
        grid_name=args.grid_name,
        join=join,
    )
    print(f"grid home {home.root} {'created' if created else 'already exists'}")
    st = cert_status(home)
    holds = "this node holds the CA key" if st.has_ca_key else "joined: no CA key here"
    print(f"grid {st.grid_name}: CA {st.ca_fingerprint} ({holds})")
    print(
        f"node {st.node_name}: certificate in {home.certs / 'node'}, valid until {st.node_expires}"
    )
    return 0


def run_join_bundle(args: argparse.Namespace) -> int:
    import os
    import sys

    from grid.errors import UserError
    from grid.home import find_home
    from grid.init import ca_dir, cert_error
    from replication import certs

    home = find_home(args.home)
    try:
        ca = certs.load_ca(ca_dir(home))
        data = certs.export_join_bundle(ca, args.node, args.hosts)
    except certs.CertError as e:
        raise cert_error(e) from None
    except ValueError as e:
        raise UserError("grid join-bundle", str(e)) from None
    if args.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(args.out, "exists; refusing to overwrite it") from None
    except OSError as e:
        raise UserError(args.out, e.strerror or str(e)) from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    print(
        f"join bundle for node {args.node} written to {args.out}: it holds a private key; "
        f"run `grid init --join {args.out}` on {args.node}, then delete it",
        file=sys.stderr,
    )
    return 0
