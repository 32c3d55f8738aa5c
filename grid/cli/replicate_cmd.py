"""`grid replicate`: push (or pull) new blocks and names to the peers, safe from cron."""

from __future__ import annotations

import argparse
import re

_RAW = argparse.RawDescriptionHelpFormatter

EXIT_BUSY = 75  # EX_TEMPFAIL: another run holds the lock; cron may simply try again later

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(text: str) -> float:
    """``500k``, ``10M``, ``1G`` (bytes per second, binary multiples as curl's --limit-rate)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b(?:/s)?)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: want e.g. 500k, 10M, 1G (bytes/s)")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: want e.g. 30s, 5m, 2h, 1d")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replicate",
        help="push new blocks and names to peers (or pull them) over mutual TLS",
        description=(
            "For each peer (grid peer list), send the blocks written since its cursor that it\n"
            "lacks, wait for its sync, move the cursor, then send the name records it lacks.\n"
            "--pull fetches from the peers instead. Safe from cron: one run at a time (an\n"
            f"overlapping run exits {EXIT_BUSY} at once), resumable after a kill, idempotent.\n"
            "One summary line per peer; exit status 1 if any peer failed.\n"
            "Peers must run `grid serve --blocks HOST:PORT` and list this node as a peer."
        ),
        epilog=(
            "examples:\n"
            "  grid replicate\n"
            "  grid replicate --peer node2 --limit-rate 20M\n"
            "  grid replicate --pull --every 5m\n"
            "crontab:\n"
            "  */5 * * * * GRID_HOME=/srv/grid grid replicate"
        ),
        formatter_class=_RAW,
    )
    p.add_argument("--peer", action="append", metavar="NAME",
                   help="only this peer (repeatable; default: every peer)")
    p.add_argument("--pull", action="store_true", help="fetch from the peers instead of pushing")
    p.add_argument("--every", type=parse_duration, metavar="DURATION",
                   help="run again every DURATION (30s, 5m, 1h) until interrupted")
    p.add_argument("--limit-rate", type=parse_rate, metavar="RATE",
                   help="at most RATE bytes/s per peer (500k, 10M)")
    p.add_argument("--full", action="store_true",
                   help="start from the beginning of the log (the peer's has-answers skip "
                        "what it holds): after a peer's store was replaced")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    while True:
        code = _run_once(args)
        if args.every is None:
            return code
        time.sleep(args.every)


def _run_once(args: argparse.Namespace) -> int:
    import json
    import sys

    from grid.errors import UserError
    from grid.home import find_home
    from grid.init import node_dir
    from grid.progress import Progress
    from grid.storeopen import open_store
    from ndb.names import NameDB
    from ndb.peers import PeerDB
    from replication import certs
    from replication.replicate import (
        PULL,
        PUSH,
        Busy,
        Cursors,
        RateLimit,
        ReplicationError,
        replicate_peer,
        run_lock,
    )

    home = find_home(args.home)
    peers = PeerDB(home.peers_db).list()
    if args.peer:
        unknown = sorted(set(args.peer) - {p.name for p in peers})
        if unknown:
            raise UserError("grid replicate", f"no such peer: {', '.join(unknown)} "
                            "(grid peer add NAME HOST:PORT)")
        peers = [p for p in peers if p.name in set(args.peer)]
    if not peers:
        raise UserError("grid replicate", "no peers (grid peer add NAME HOST:PORT)")
    d = node_dir(home)
    ctx = certs.client_context(d / certs.CERT_FILE, d / certs.KEY_FILE, d / certs.CA_FILE)
    me = certs.load_bundle(d, expect=certs.NODE).identity.name
    rdir = home.root / "replication"
    cursors = Cursors(rdir / "cursors")
    names = NameDB(home.names_db)
    mode = PULL if args.pull else PUSH
    failed = 0
    try:
        with run_lock(rdir / "lock"):
            for peer in peers:
                bar = Progress(f"{'pull from' if args.pull else 'push to'} {peer.name}")
                try:
                    stats = replicate_peer(
                        peer.name, peer.addr, ctx, mode=mode, store_path=home.store,
                        writer=lambda: open_store(home), names=names, cursors=cursors, me=me,
                        full=args.full, progress=bar.update, limit=RateLimit(args.limit_rate))
                except (ReplicationError, UserError) as e:
                    failed += 1
                    print(f"grid: replicate {peer.name}: {e}", file=sys.stderr)
                    continue
                finally:
                    bar.close()
                print(json.dumps(stats.as_dict()) if args.json else stats.line(), flush=True)
    except Busy as e:
        print(f"grid: replicate: {e}", file=sys.stderr)
        return EXIT_BUSY
    return 1 if failed else 0
