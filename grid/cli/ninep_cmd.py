"""`grid 9p ADDR ls|cat|write|stat PATH` and `grid tunnel NODE`: 9P from the command line.

`grid 9p` is the project's own 9P client (spawn.ninep.client) on either transport of the
daemon's 9P service: a Unix socket path (the kernel tells the daemon who we are) or
HOST:PORT, where TLS with the user's certificate bundle says it. It speaks 9P2000.L.

`grid tunnel` is for clients that speak 9P but not TLS (Linux v9fs, diod's tools): a local
plain-TCP listener that forwards each connection into TLS to the node with the user's
certificate (ANTS's listen1 + tlsclient). Whoever can connect to the local port acts as the
certificate's user, so it listens on the loopback address unless told otherwise.
"""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter
DEFAULT_TUNNEL = "127.0.0.1:5640"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "9p", help="list, read, write or stat a file over 9P",
        description=(
            "Attach to a node's 9P service and do one thing. ADDR is the daemon's Unix socket\n"
            "(HOME/run/9p.sock: you are your uid) or HOST:PORT of its TLS listener (`grid\n"
            "serve --9p`: you are the user of your certificate bundle, HOME/certs/users/NAME/\n"
            "or --cert DIR). ANAME is a spawn id, or empty (the default) for your namespace:\n"
            "ctl, names and ID/{ctl,status,err,root/} per spawn (docs/9p.md). write copies\n"
            "standard input into PATH, creating or truncating it."
        ),
        epilog=("examples:\n  grid 9p ~/.grid/run/9p.sock -a 3 ls /\n"
                "  grid 9p ~/.grid/run/9p.sock cat /3/status\n"
                "  grid 9p node1:5640 -a 3 cat /etc/motd\n"
                "  echo hi | grid 9p node1:5640 --cert ~/grid-cert -a 3 write /hello"),
        formatter_class=_RAW,
    )
    p.add_argument("addr", metavar="ADDR", help="a Unix socket path, or HOST:PORT (TLS)")
    p.add_argument("op", choices=("ls", "cat", "write", "stat"))
    p.add_argument("path", metavar="PATH")
    p.add_argument("-a", "--aname", default="",
                   help="what to attach: a spawn id (default: your namespace)")
    p.add_argument("--cert", metavar="DIR", help="certificate bundle for TLS "
                   "(default: HOME/certs/users/<you>/)")
    p.set_defaults(func=run_9p)

    t = sub.add_parser(
        "tunnel", help="plain TCP on this machine, forwarded into TLS to a node's 9P",
        description=(
            "Listen on a local TCP address and forward each connection into TLS to NODE\n"
            "(HOST:PORT of `grid serve --9p`) with your certificate, for 9P clients that cannot\n"
            "speak TLS. Anyone who can connect to the local address acts as you: keep it on\n"
            "the loopback address. Prints the address it listens on, then runs until killed."
        ),
        epilog=("examples:\n  grid tunnel node1:5640\n"
                "  grid tunnel --listen 127.0.0.1:9564 node1:5640 &\n"
                "  diodls -s 127.0.0.1:9564 -a 3 -u $(id -u) /"),
        formatter_class=_RAW,
    )
    t.add_argument("node", metavar="NODE", help="HOST:PORT of the node's 9P TLS listener")
    t.add_argument("--listen", default=DEFAULT_TUNNEL, metavar="HOST:PORT",
                   help="local address (default %(default)s; port 0 picks one)")
    t.add_argument("--cert", metavar="DIR", help="certificate bundle "
                   "(default: HOME/certs/users/<you>/)")
    t.set_defaults(func=run_tunnel)


# -- addresses and credentials -------------------------------------------------------------------


def run_9p(args: argparse.Namespace) -> int:
    from grid.cli._ninep_impl import run_9p as run

    return run(args)


def run_tunnel(args: argparse.Namespace) -> int:
    from grid.cli._ninep_impl import run_tunnel as run

    return run(args)
