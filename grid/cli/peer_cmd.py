"""`grid peer add|list|rm`: the nodes this node replicates with (ndb file `peers`)."""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "peer",
        help="add, list and remove peers (other nodes)",
        description="Peers are the nodes this node replicates names and blocks with.",
        epilog="examples:\n  grid peer add node2 node2.example.org:17010 --cert node2.pem\n  grid peer list",
        formatter_class=_RAW,
    )
    ss = p.add_subparsers(dest="peer_command", metavar="SUBCOMMAND", required=True)

    a = ss.add_parser(
        "add",
        help="add a peer",
        description=(
            "Add peer NAME listening at HOST:PORT. --cert copies the peer's PEM certificate\n"
            "into the grid home (certs/peers/NAME.pem) and records its path."
        ),
        epilog="example:\n  grid peer add node2 node2.example.org:17010 --cert node2.pem",
        formatter_class=_RAW,
    )
    a.add_argument("name")
    a.add_argument("addr", metavar="HOST:PORT")
    a.add_argument("--cert", metavar="FILE", help="the peer's certificate (PEM)")
    a.set_defaults(func=run_add)

    ls = ss.add_parser(
        "list",
        help="list peers",
        description="List the peers.",
        epilog="example:\n  grid peer list --json",
        formatter_class=_RAW,
    )
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_list)

    rm = ss.add_parser(
        "rm",
        help="remove a peer",
        description="Remove peer NAME (and the certificate copy grid made for it).",
        epilog="example:\n  grid peer rm node2",
        formatter_class=_RAW,
    )
    rm.add_argument("name")
    rm.set_defaults(func=run_rm)


def _peer_cert_dir(home):
    return home.certs / "peers"


def run_add(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from grid.errors import UserError
    from grid.home import find_home
    from ndb.errors import NdbConflict
    from ndb.peers import Peer, PeerDB

    home = find_home(args.home)
    peers = PeerDB(home.peers_db)
    # Validate everything before anything is written.
    Peer(name=args.name, addr=args.addr)
    if peers.get(args.name) is not None:
        raise NdbConflict(f"peer {args.name!r} exists")
    cert_path = None
    if args.cert:
        try:
            pem = Path(args.cert).expanduser().read_bytes()
        except OSError as e:
            raise UserError(f"certificate {args.cert}", e.strerror or str(e)) from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise UserError(f"certificate {args.cert}", "not a PEM certificate")
        d = _peer_cert_dir(home)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path = d / f"{args.name}.pem"
        tmp = cert_path.with_suffix(".pem.tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, cert_path)
    try:
        peers.add(
            Peer(name=args.name, addr=args.addr, cert=None if cert_path is None else str(cert_path))
        )
    except BaseException:
        if cert_path is not None:
            cert_path.unlink(missing_ok=True)
        raise
    print(f"peer {args.name} added")
    return 0


def run_list(args: argparse.Namespace) -> int:
    import json

    from grid.home import find_home
    from ndb.peers import PeerDB

    peers = PeerDB(find_home(args.home).peers_db).list()
    if args.json:
        print(json.dumps([p.as_dict() for p in peers], indent=2, ensure_ascii=False))
        return 0
    if peers:
        w0 = max(len(p.name) for p in peers)
        w1 = max(len(p.addr) for p in peers)
        for p in peers:
            print(f"{p.name.ljust(w0)}  {p.addr.ljust(w1)}  {p.cert or '-'}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grid.home import find_home
    from ndb.peers import PeerDB

    home = find_home(args.home)
    peer = PeerDB(home.peers_db).remove(args.name)
    if peer.cert and Path(peer.cert).parent == _peer_cert_dir(home):
        Path(peer.cert).unlink(missing_ok=True)
    print(f"peer {peer.name} removed")
    return 0
