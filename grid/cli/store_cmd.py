"""`grid store ...`: put, cat, stat and check the node's block store directly."""

from __future__ import annotations

import argparse

_EPILOG = """\
examples:
  grid store put disk.img            store a file as a hash tree, print its score
  grid store cat blake3:9f…  > out   stream a hash tree back
  grid store stat --json             blocks, bytes stored vs logical, dedup
  grid store check                   verify every block and the index
  grid store check --rebuild         recreate the index from the log
  grid store check --names           which names' trees (and history entries) damage breaks
  grid store repair                  fetch every lost or absent block from the peers
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store", help="the block store: put, cat, stat, check",
        description="Work with the node's block store (append-only log + LMDB index).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ss = p.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)

    put = ss.add_parser("put", help="store a file as a hash tree and print its score",
                        description="Store FILE (or - for stdin) as a hash tree; print its score.",
                        epilog="example:\n  grid store put big.iso", formatter_class=argparse.RawDescriptionHelpFormatter)
    put.add_argument("file", help="the file to store, or - for standard input")
    put.add_argument("--chunker", choices=("cdc", "fixed"), default="cdc",
                     help="leaf boundaries: content-defined (default) or fixed 64 KiB")
    put.set_defaults(func=run_put)

    cat = ss.add_parser("cat", help="stream a hash tree (or one block) to stdout",
                        description="Write the bytes of the hash tree named by SCORE to stdout.",
                        epilog="example:\n  grid store cat blake3:<64 hex> > copy", formatter_class=argparse.RawDescriptionHelpFormatter)
    cat.add_argument("score", help="blake3:<64 hex digits>")
    cat.set_defaults(func=run_cat)

    stat = ss.add_parser("stat", help="block count, bytes stored and logical, dedup ratio")
    stat.add_argument("--json", action="store_true", help="print JSON")
    stat.set_defaults(func=run_stat)

    check = ss.add_parser("check", help="verify every block against its score, and the index",
                          description="Read the whole log, verify every block, compare with the index.\n"
                                      "With --rebuild, recreate the index from the log first.",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--rebuild", action="store_true", help="rebuild the index from the log")
    check.add_argument("--names", action="store_true",
                       help="also say which name records' trees a lost or absent block breaks")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=run_check)

    rep = ss.add_parser(
        "repair", help="heal lost or absent blocks from peers that hold them",
        description="Find every block that is lost (its only record damaged, or in a deleted\n"
                    "segment) or absent from a named or spawned tree, fetch each from the peers\n"
                    "(grid peer list) over mutual TLS, verify it by its score and append it to the\n"
                    "log. Without a peer that holds a block, say exactly which are lost.\n"
                    "The node daemon must be stopped (grid stop): repair takes the store's writer lock.",
        epilog="examples:\n  grid stop && grid store repair && grid serve\n"
               "  grid store repair --peer node2 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("--peer", action="append", metavar="NAME",
                     help="fetch only from this peer (repeatable; default: every peer, in order)")
    rep.add_argument("--json", action="store_true", help="print JSON")
    rep.set_defaults(func=run_repair)


def _open(args: argparse.Namespace, *, readonly: bool):
    from grid.home import find_home
    from grid.storeopen import open_store

    return open_store(find_home(args.home), readonly=readonly)


def run_put(args: argparse.Namespace) -> int:
    import os
    import sys
    import time

    from grid.progress import Progress, human_bytes
    from store.chunker import CdcChunker, FixedChunker
    from store.hashtree import TreeWriter
    from store.score import format_score

    chunker = CdcChunker() if args.chunker == "cdc" else FixedChunker()
    src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    total = None if args.file == "-" else os.fstat(src.fileno()).st_size
    t0 = time.monotonic()
    with _open(args, readonly=False) as store, src, Progress("put", total) as bar:
        before = store.statistics()
        w = TreeWriter(store, chunker)
        while chunk := src.read(8 << 20):
            w.write(chunk)
            bar.update(len(chunk))
        ref = w.finish()
        store.sync()
        after = store.statistics()
    dt = max(time.monotonic() - t0, 1e-9)
    print(format_score(ref.score))
    print(
        f"put {args.file}: {human_bytes(ref.size)} in {dt:.2f}s ({ref.size / dt / 1e6:.1f} MB/s), "
        f"{after.blocks - before.blocks} new blocks, {human_bytes(after.stored_bytes - before.stored_bytes)} written",
        file=sys.stderr,
    )
    return 0


def run_cat(args: argparse.Namespace) -> int:
    import sys

    from store.hashtree import TreeReader
    from store.score import parse_score

    score = parse_score(args.score)
    out = sys.stdout.buffer
    with _open(args, readonly=True) as store:
        r = TreeReader(store, score)
        for piece in r.iter_range(0):
            out.write(piece)
    out.flush()
    return 0


def run_stat(args: argparse.Namespace) -> int:
    import json

    from grid.progress import human_bytes
    from store.prune import read_stat

    with _open(args, readonly=True) as store:
        st = store.statistics()
        path = getattr(store, "path", None)
        segments = len(list((path / "segments").glob("*.seg"))) if path is not None else 0
        mark = read_stat(path) if path is not None else None
    ratio = st.logical_bytes / st.stored_bytes if st.stored_bytes else 1.0
    since = max(0, st.position - mark["position"]) if mark else None
    if args.json:
        print(json.dumps({"blocks": st.blocks, "stored_bytes": st.stored_bytes,
                          "logical_bytes": st.logical_bytes, "ratio": round(ratio, 4),
                          "position": st.position, "segments": segments,
                          "live_bytes": mark["live_bytes"] if mark else None,
                          "dead_bytes": mark["dead_bytes"] if mark else None,
                          "marked_at": mark["marked_at"] if mark else None,
                          "written_since_mark": since}))
    else:
        print(f"blocks         {st.blocks}")
        print(f"stored         {human_bytes(st.stored_bytes)} ({st.stored_bytes} bytes, with record headers)")
        print(f"logical        {human_bytes(st.logical_bytes)} ({st.logical_bytes} bytes of block payload)")
        print(f"compression    {ratio:.2f}x (logical / stored)")
        print(f"log position   {st.position} in {segments} segment(s)")
        if mark:
            import time

            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mark["marked_at"]))
            print(f"live           {human_bytes(mark['live_bytes'])} at the last mark ({when}; "
                  f"{human_bytes(since or 0)} written since, not yet classified)")
            print(f"dead           {human_bytes(mark['dead_bytes'])} reclaimable by `grid prune`")
        else:
            print("live / dead    unknown: run `grid prune --dry-run` to mark")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Verify the whole log and the index; with --rebuild, first recreate the index.

    The rebuild opens the store with ``rebuild=True``, so the old index is never mapped (a
    damaged data.mdb cannot stop it) and is replaced only once the new one is complete.
    The exit status is 0 only when nothing is damaged: a rebuild that had to skip records
    says so and exits 1, even though it kept everything that verifies."""
    import json
    import sys

    from grid.progress import Progress
    from store.local import describe_bad
    from store.score import format_score

    notes: list[str] = []
    lost_by_rebuild = 0
    if args.rebuild:  # only the store's own process may rebuild: not through the daemon
        from grid.home import find_home
        from store.local import LocalStore

        opened = LocalStore.open(find_home(args.home).store, rebuild=True)
        rep = opened.last_rebuild
        assert rep is not None
        lost_by_rebuild = rep.missing
        for bad, kept in rep.cut:
            notes.append(f"a torn end of the log at {bad.position} ({bad.length} bytes: {bad.reason}) "
                         f"was cut off; its bytes are kept in {kept}")
        if rep.missing:
            notes.append(f"{rep.missing} block(s) the old index listed are in no readable record of "
                         "the log (lost unless a peer holds them)")
        print(f"grid: store check: index rebuilt from the log: {rep.blocks} blocks from {rep.records} "
              f"records, {len(rep.bad)} damaged record(s) skipped", file=sys.stderr)
    else:
        opened = _open(args, readonly=True)
    with opened as store, Progress("check", store.position()) as bar:
        last = [0]

        def tick(pos: int) -> None:
            bar.update(pos - last[0])
            last[0] = pos

        report = store.check(progress=tick)
        broken = _broken_names(args, store, report) if args.names else None
    if args.json:
        print(json.dumps({
            "ok": report.ok and not lost_by_rebuild, "lost_by_rebuild": lost_by_rebuild, "records": report.records, "blocks": report.blocks,
            "index_entries": report.index_entries, "bad_records": report.bad_records,
            "lost_blocks": sorted(format_score(x) for x in report.lost),
            "unchecked_bytes": report.unchecked_bytes, "notes": notes, "errors": report.errors,
            "healed_records": report.healed_records,
            **({"names": broken} if broken is not None else {}),
            "segments": [
                {"segment": seg.name, "records": seg.records,
                 "bad": [{"position": b.position, "length": b.length, "reason": b.reason,
                          "score": format_score(b.score) if b.score is not None else None,
                          "torn": b.torn} for b in seg.bad],
                 "healed": [{"position": b.position, "length": b.length,
                             "score": format_score(b.score) if b.score is not None else None}
                            for b in seg.healed]}
                for seg in report.segments.values()
            ],
        }))
    else:
        for seg in report.segments.values():
            for b in seg.bad:
                print(f"grid: store check: {describe_bad(b, seg.name)}", file=sys.stderr)
        for e in report.errors:
            if " is damaged (" not in e:  # the damaged regions were printed per segment above
                print(f"grid: store check: {e}", file=sys.stderr)
        for x in sorted(report.lost):
            print(f"grid: store check: block {format_score(x)} is lost (its only record is damaged)",
                  file=sys.stderr)
        for n in notes:
            print(f"grid: store check: {n}", file=sys.stderr)
        for b in broken or ():
            which = "latest" if b["latest"] else "history entry"
            print(f"grid: store check: name {b['name']} ({which} {b['date']}, root {b['score']}): "
                  f"{b['blocks']} lost or absent block(s) in its tree, e.g. {b['broken'][0]}",
                  file=sys.stderr)
        if report.unchecked_bytes:
            print(f"grid: store check: {report.unchecked_bytes} bytes past the index's last commit "
                  "(the running writer's tail) were not checked", file=sys.stderr)
        ok = report.ok and not lost_by_rebuild and not broken
        state = "ok" if ok else f"{len(report.errors) + lost_by_rebuild + len(broken or ())} problem(s)"
        healed = f" ({report.healed_records} healed)" if report.healed_records else ""
        names = f", {len(broken)} name record(s) broken" if broken is not None else ""
        print(f"check: {report.records} records, {report.blocks} blocks, {report.index_entries} index "
              f"entries, {report.bad_records} damaged record(s){healed}, {len(report.lost)} block(s) "
              f"lost{names}: {state}")
    return 0 if report.ok and not lost_by_rebuild and not broken else 1


def _broken_names(args: argparse.Namespace, store, report) -> list[dict]:
    """check --names: the name records whose trees a lost or absent block breaks."""
    from grid.home import find_home
    from grid.repair import broken_names
    from ndb.names import NameDB

    if not hasattr(store, "locate"):
        from grid.errors import UserError

        raise UserError("store check --names", "needs the store's files (not a remote store)")
    names = NameDB(find_home(args.home).names_db).all()
    return broken_names(store, names, set(report.lost))


def run_repair(args: argparse.Namespace) -> int:
    """Heal the store from its peers (grid/repair.py); exit 0 only when the store checks
    clean afterwards and nothing wanted was left unrecovered."""
    import json
    import sys

    from grid.errors import UserError
    from grid.home import find_home
    from grid.init import node_dir
    from grid.prune import live_roots
    from grid.repair import Fetcher, repair
    from ndb.peers import PeerDB
    from store.errors import StoreError, StoreLocked
    from store.local import LocalStore
    from store.score import format_score

    home = find_home(args.home)
    peers = PeerDB(home.peers_db).list()
    if args.peer:
        unknown = sorted(set(args.peer) - {p.name for p in peers})
        if unknown:
            raise UserError("store repair", f"no such peer: {', '.join(unknown)} (grid peer add NAME HOST:PORT)")
        order = {n: i for i, n in enumerate(args.peer)}
        peers = sorted((p for p in peers if p.name in order), key=lambda p: order[p.name])
    ctx, me = None, ""
    if peers:
        from replication import certs

        d = node_dir(home)
        try:
            ctx = certs.client_context(d / certs.CERT_FILE, d / certs.KEY_FILE, d / certs.CA_FILE)
            me = certs.load_bundle(d, expect=certs.NODE).identity.name
        except (OSError, ValueError) as e:
            raise UserError("store repair", f"this node's certificates are unusable ({e})") from None
    try:
        store = LocalStore.open(home.store)
    except StoreLocked as e:
        raise UserError("store repair", f"{e}. Repair appends to the log itself, so stop the node "
                        "daemon (`grid stop`), run `grid store repair`, then start it again "
                        "(`grid serve`); `grid store check` works while it runs") from None
    except StoreError as e:
        raise UserError("store repair", f"{e}; then run `grid store repair`") from None
    roots, _counts = live_roots(home)
    fetcher = Fetcher([(p.name, p.addr) for p in peers], ctx, me)

    def progress(what: str, n: int) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"\rrepair: {n} block(s) {what}", end="", file=sys.stderr, flush=True)

    try:
        with store:
            rep = repair(store, roots, fetcher, progress=progress)
    finally:
        fetcher.close()
    assert rep.before is not None and rep.after is not None
    if args.json:
        print(json.dumps({
            "ok": rep.ok, "lost_before": len(rep.before.lost), "wanted": rep.wanted,
            "restored": len(rep.restored), "peers": rep.peers, "peer_errors": rep.peer_errors,
            "unrecoverable": [{"score": format_score(s), "why": why}
                              for s, why in sorted(rep.unrecoverable.items())],
            "healed_regions": rep.healed_regions, "errors_after": rep.after.errors,
            "lost_after": sorted(format_score(x) for x in rep.after.lost),
        }))
    else:
        if sys.stderr.isatty() and rep.restored:
            print(file=sys.stderr)
        for e in rep.peer_errors:
            print(f"grid: store repair: peer {e}", file=sys.stderr)
        if not peers:
            print("grid: store repair: no peers to fetch from (grid peer add NAME HOST:PORT)",
                  file=sys.stderr)
        for s, why in sorted(rep.unrecoverable.items()):
            print(f"grid: store repair: block {format_score(s)} is lost: {why}", file=sys.stderr)
        for e in rep.after.errors:
            print(f"grid: store repair: still damaged: {e}", file=sys.stderr)
        src = ", ".join(f"{n} {c}" for n, c in rep.peers.items()) or "no peer"
        state = "ok: the store checks clean" if rep.ok else \
            f"{len(rep.unrecoverable)} block(s) lost, {len(rep.after.errors)} problem(s) left"
        print(f"repair: {len(rep.before.lost)} lost block(s) found, {rep.wanted} wanted, "
              f"{len(rep.restored)} restored (from {src}), {rep.healed_regions} damaged region(s) "
              f"accounted for: {state}")
    return 0 if rep.ok else 1
