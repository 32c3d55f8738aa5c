"""`grid import`, `grid export`, `grid ls`, `grid cat`, `grid diff`: trees in and out of the grid."""

from __future__ import annotations

import argparse

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="store a directory tree as a named snapshot",
        description=(
            "Store the tree under DIR in the block store and point NAME at its root score.\n"
            "Unchanged files (by device, inode, size, mtime, ctime) are not read again.\n"
            "Unreadable files are skipped with a warning and the exit status is 1.\n"
            "Stays on DIR's filesystem unless --cross-filesystems."
        ),
        epilog="examples:\n  grid import ~/src myproject\n  grid import /srv/data dataset --user alice",
        formatter_class=_RAW,
    )
    p.add_argument("dir")
    p.add_argument("name")
    p.add_argument("--user", help="record the name for this user (root only; default: you)")
    p.add_argument("--cross-filesystems", action="store_true", help="descend into other mounted filesystems")
    p.add_argument("--no-cache", action="store_true", help="read every file, ignoring the files cache")
    p.add_argument("--workers", type=int, default=2, help="threads hashing and compressing (default 2)")
    p.set_defaults(func=run_import)

    e = sub.add_parser(
        "export", help="write a snapshot out as a directory tree",
        description=(
            "Materialise NAME (or NAME@blake3:…, or a raw blake3: score) under DIR, which must\n"
            "be new or empty, with contents, modes, times, links, xattrs and holes. Nothing is\n"
            "written outside DIR: symlinks are created, never followed.\n\n"
            "As tar does for ordinary users, and for root too: the files are yours, setuid and\n"
            "setgid bits of files are dropped and device nodes skipped (a snapshot may hold\n"
            "files other users made). --same-owner restores owners, those bits and devices\n"
            "(owners and devices need root)."
        ),
        epilog="examples:\n  grid export myproject /tmp/restore\n  grid export myproject@blake3:9f… /tmp/old\n"
               "  grid export --same-owner rootfs /srv/rootfs",
        formatter_class=_RAW,
    )
    e.add_argument("ref", metavar="NAME[@SCORE]")
    e.add_argument("--same-owner", action="store_true",
                   help="restore owners, setuid/setgid bits and device nodes as the snapshot has them")
    e.add_argument("dir")
    e.set_defaults(func=run_export)

    ls = sub.add_parser(
        "ls", help="list a directory of a snapshot",
        description="List NAME's root directory, or the PATH inside it.",
        epilog="examples:\n  grid ls myproject\n  grid ls -l myproject:src\n  grid ls --json blake3:…:etc",
        formatter_class=_RAW,
    )
    ls.add_argument("ref", metavar="NAME[:PATH]")
    ls.add_argument("-l", "--long", action="store_true", help="mode, owner, size, time")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_ls)

    cat = sub.add_parser(
        "cat", help="write a file of a snapshot to stdout",
        epilog="example:\n  grid cat myproject:README.md", formatter_class=_RAW,
    )
    cat.add_argument("ref", metavar="NAME:PATH")
    cat.set_defaults(func=run_cat)

    d = sub.add_parser(
        "diff", help="paths added, removed and changed between two snapshots",
        description="Compare two snapshots: '+' added, '-' removed, 'M' content changed, 'm' metadata only.",
        epilog="example:\n  grid diff myproject@blake3:… myproject", formatter_class=_RAW,
    )
    d.add_argument("a", metavar="NAME1")
    d.add_argument("b", metavar="NAME2")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(func=run_diff)


def _me() -> str:
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def run_import(args: argparse.Namespace) -> int:
    import os
    import sys

    from grid.errors import UserError
    from grid.home import find_home
    from grid.progress import Progress, human_bytes
    from grid.storeopen import open_store
    from ndb.names import NameDB
    from ndb.users import UserDB
    from ndb.values import check_new_name
    from spawn.archive import Archive
    from spawn.filescache import FilesCache
    from spawn.importer import Importer
    from store.score import NULL_SCORE, format_score, parse_score

    home = find_home(args.home)
    user = args.user or _me()
    if args.user and os.getuid() != 0 and args.user != _me():
        raise UserError("import", f"only root may record names for another user ({args.user})")
    try:
        check_new_name(args.name)
    except ValueError as e:
        raise UserError(f"name {args.name!r}", str(e)) from None
    if not os.path.isdir(args.dir):
        raise UserError(args.dir, "not a directory")
    names = NameDB(home.names_db, users=UserDB(home.users_db))
    if UserDB(home.users_db).get(user) is None:
        raise UserError("import", f"unknown user {user!r} (add it with `grid user add {user}`)")
    with open_store(home) as store:
        prev = names.resolve(args.name)
        prev_score, high = NULL_SCORE, 0
        if prev is not None:
            prev_score = parse_score(prev.score)
            if store.has(prev_score):
                high = Archive(store, prev_score).root.ino_high
        cache = None if args.no_cache else FilesCache(home.root / "cache" / "files")
        before = store.statistics()
        warnings: list[str] = []
        with Progress(f"import {args.name}", None) as bar:
            last = [0]

            def progress(st) -> None:
                bar.update(st.done_bytes - last[0])
                last[0] = st.done_bytes
                now = store.statistics()
                puts = now.puts - before.puts
                dups = now.dup_puts - before.dup_puts
                bar.note(files=f"{st.done_files}/{st.files}", dedup=f"{100 * dups / puts:.0f}%" if puts else "-")

            def warn(msg: str) -> None:
                warnings.append(msg)
                print(f"grid: import: {msg}", file=sys.stderr)

            imp = Importer(
                store, cache=cache, cache_name=args.name, one_file_system=not args.cross_filesystems,
                workers=max(1, args.workers), prev_ino_high=high, progress=progress, warn=warn,
            )
            score = imp.run(args.dir, name=args.name, user=user, prev=prev_score)
            store.sync()
        names.set(args.name, format_score(score), user)
        if cache is not None:
            cache.update(args.name, imp.cache_files, imp.cache_inos)
            cache.close()
        after = store.statistics()
    s = imp.stats
    dt = max(s.seconds, 1e-9)
    print(format_score(score))
    print(
        f"import {args.name}: {s.files} files, {s.dirs} dirs, {s.symlinks} symlinks, {human_bytes(s.bytes)} "
        f"in {dt:.2f}s ({s.bytes / dt / 1e6:.1f} MB/s); read {human_bytes(s.read_bytes)} "
        f"({s.cached_files} files unchanged); added {after.blocks - before.blocks} blocks, "
        f"{human_bytes(after.stored_bytes - before.stored_bytes)}"
        + (f"; {len(s.skipped)} skipped" if s.skipped else ""),
        file=sys.stderr,
    )
    return 1 if s.skipped else 0


def _archive_errors(run):
    """Every way a malformed archive can fail becomes one line, ``grid: CMD REF: why``.

    Blocks that pass closure can come from any peer, so ls, cat, export and diff meet
    hostile archives; spawn.archive turns decode failures into BadArchive, and this is the
    net for the rest (a bound no decoder checked, a cycle met by recursion)."""
    import functools

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        from grid.errors import UserError
        from spawn.archive import BadArchive
        from spawn.export import ExportError

        what = f"{args.command} {getattr(args, 'ref', None) or getattr(args, 'a', '')}".strip()
        try:
            return run(args)
        except (BadArchive, ExportError) as e:
            raise UserError(what, _one_line(str(e))) from None
        except (ValueError, LookupError, OverflowError, RecursionError) as e:
            raise UserError(what, f"the archive is malformed: {_one_line(str(e)) or type(e).__name__}") from None

    return wrapped


def _one_line(text: str) -> str:
    return " ".join(text.replace("\n", " ").split()).strip("'\"")


def _open_archive(args: argparse.Namespace, text: str):
    from grid.home import find_home
    from grid.refs import resolve, split_path
    from spawn.archive import Archive
    from store.local import LocalStore

    home = find_home(args.home)
    reftext, path = split_path(text)
    ref = resolve(home, reftext)
    store = LocalStore.open(home.store, readonly=True)
    try:
        return store, Archive(store, ref.score), path
    except BaseException:
        store.close()
        raise


def _lookup(archive, path: str, what: str) -> int:
    from grid.errors import UserError

    try:
        return archive.resolve(path)
    except LookupError as e:  # NotFound and NotADirectory are LookupErrors
        raise UserError(what, str(e).strip("'\"")) from None


@_archive_errors
def run_export(args: argparse.Namespace) -> int:
    import sys

    from grid.errors import UserError
    from spawn.export import Exporter, ExportError

    store, archive, path = _open_archive(args, args.ref)
    with store:
        ino = _lookup(archive, path, args.ref) if path else None
        try:
            st = Exporter(archive, same_owner=args.same_owner,
                          warn=lambda m: print(f"grid: export: {m}", file=sys.stderr)).run(args.dir, ino)
        except ExportError as e:
            raise UserError("export", str(e)) from None
    print(f"export {args.ref}: {st.files} files, {st.dirs} dirs, {st.symlinks} symlinks, "
          f"{st.links} hard links, {st.bytes} bytes of data into {args.dir}", file=sys.stderr)
    if st.stripped or st.devices_skipped:
        print(f"export {args.ref}: setuid/setgid dropped from {st.stripped} files, "
              f"{st.devices_skipped} device nodes skipped (--same-owner keeps them)", file=sys.stderr)
    return 1 if st.warnings else 0


def _fmt_time(ns: int) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


@_archive_errors
def run_ls(args: argparse.Namespace) -> int:
    import json
    import os
    import stat

    store, archive, path = _open_archive(args, args.ref)
    with store:
        ino = _lookup(archive, path, args.ref)
        inode = archive.inode(ino)
        if inode.is_dir():
            items = [(d.name, d.ino, archive.inode(d.ino)) for d in archive.readdir(ino)]
        else:
            items = [(os.fsencode(path.rsplit("/", 1)[-1]), ino, inode)]
    if args.json:
        print(json.dumps([
            {"name": os.fsdecode(n), "ino": i, "mode": stat.filemode(x.mode), "uid": x.uid, "gid": x.gid,
             "user": x.user, "group": x.group, "size": x.size, "mtime_ns": x.mtime_ns,
             **({"target": os.fsdecode(x.inline)} if x.is_symlink() else {})}
            for n, i, x in items
        ]))
        return 0
    for n, _i, x in items:
        name = os.fsdecode(n)
        if args.long:
            target = f" -> {os.fsdecode(x.inline)}" if x.is_symlink() else ""
            print(f"{stat.filemode(x.mode)} {x.nlink:>3} {x.user or x.uid:<8} {x.group or x.gid:<8} "
                  f"{x.size:>12} {_fmt_time(x.mtime_ns)} {name!s}{target}")
        else:
            print(name)
    return 0


@_archive_errors
def run_cat(args: argparse.Namespace) -> int:
    import sys

    from grid.errors import UserError

    store, archive, path = _open_archive(args, args.ref)
    with store:
        ino = _lookup(archive, path, args.ref)
        inode = archive.inode(ino)
        if not inode.is_reg():
            raise UserError(args.ref, "not a regular file")
        out = sys.stdout.buffer
        for piece in archive.open(ino, inode).iter_range(0):
            out.write(piece)
        out.flush()
    return 0


@_archive_errors
def run_diff(args: argparse.Namespace) -> int:
    import json
    import os

    from grid.home import find_home
    from grid.refs import resolve
    from spawn.archive import Archive
    from spawn.diff import diff_archives

    store, a, _ = _open_archive(args, args.a)
    with store:
        b = Archive(store, resolve(find_home(args.home), args.b).score)
        changes = list(diff_archives(a, b))
    if args.json:
        print(json.dumps([{"change": c, "path": os.fsdecode(p)} for c, p in changes]))
    else:
        for c, p in changes:
            print(f"{c} {os.fsdecode(p)}")
    return 0
