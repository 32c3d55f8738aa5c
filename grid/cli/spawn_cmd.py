"""`grid serve`, `grid stop`, `grid spawn`, `grid spawns`, `grid mount`, `grid unmount`,
`grid save`, `grid kill`: the node daemon and the spawns it keeps.

Every spawn command is a request to the node daemon (grid.daemon), which owns the store and
the spawns; for the embedded default the first such command starts the daemon. `grid mount`
runs a FUSE mount process as the calling user, attached to the spawn in the daemon.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

_RAW = argparse.RawDescriptionHelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve", help="run the node daemon (foreground)",
        description=(
            "Run the node daemon for the grid home, in the foreground, until SIGTERM/SIGINT or\n"
            "`grid stop`. It owns the block store and the spawns, and listens on\n"
            "HOME/run/grid.sock (commands and mounts, every local user; each is known by its\n"
            "uid), HOME/run/9p.sock (9P, likewise) and HOME/run/blocks.sock (the block\n"
            "protocol, for the home's owner).\n"
            "Spawn commands start one in the background when none is running;\n"
            "docs/daemon.md has a systemd unit."
        ),
        epilog="examples:\n  grid serve\n  grid serve --spawnmax 4 --overlay-limit 8G",
        formatter_class=_RAW,
    )
    s.add_argument("--spawnmax", type=int, default=16, metavar="N",
                   help="live spawns per user, root excepted (default %(default)s)")
    s.add_argument("--overlay-limit", metavar="SIZE", type=_size,
                   help="changed data a spawn keeps locally before moving it into the block "
                        "store, e.g. 8G (default: no limit)")
    s.add_argument("--content-cache", metavar="SIZE", type=_size_or_off,
                   help="memory for decoded file contents served again without decoding "
                        "(9P reads go from it straight to the socket), e.g. 2G, or 0 for none "
                        "(default: a sixteenth of the machine's memory, at most 1G)")
    s.add_argument("--9p", dest="listen_9p", metavar="HOST:PORT",
                   help="also serve 9P on TCP with TLS and grid client certificates")
    s.add_argument("--blocks", dest="listen_blocks", metavar="HOST:PORT",
                   help="also serve the block protocol to peers (mutual TLS, grid CA)")
    s.add_argument("--ssh", dest="listen_ssh", metavar="HOST:PORT",
                   help="also serve SSH (SFTP and grid commands) with ndb's keys")
    s.add_argument("-v", "--verbose", action="store_true", help="log every request")
    s.set_defaults(func=run_serve)

    st = sub.add_parser("stop", help="stop the node daemon",
                        description="Ask the node daemon to shut down cleanly (root or its user).")
    st.set_defaults(func=run_stop)

    sp = sub.add_parser(
        "spawn", help="a private, writable copy of a snapshot, in constant time",
        description=(
            "Spawn NAME (or NAME@blake3:…, or a raw root score): a private copy-on-write\n"
            "filesystem, made at once whatever its size; blocks are fetched on first use.\n"
            "Prints the spawn's id. Only you (and root) can use it. With --mount, mount it."
        ),
        epilog="examples:\n  grid spawn myproject\n  grid spawn myproject --mount ~/work\n"
               "  id=$(grid spawn -q myproject)",
        formatter_class=_RAW,
    )
    sp.add_argument("ref", metavar="NAME[@SCORE]")
    sp.add_argument("--mount", metavar="DIR", help="mount the new spawn at DIR")
    sp.add_argument("-q", "--quiet", action="store_true", help="print the id only")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(func=run_spawn)

    ls = sub.add_parser("spawns", help="your spawns: root, changes, clients",
                        description="List your spawns (root sees everyone's).")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=run_spawns)

    m = sub.add_parser(
        "mount", help="mount a spawn with FUSE",
        description=(
            "Mount spawn ID at DIR (an existing directory), served by a background process\n"
            "attached to the node daemon. Several mounts of one spawn see each other's\n"
            "changes at once. Undo with `grid unmount DIR`."
        ),
        epilog="example:\n  grid mount 3 ~/work", formatter_class=_RAW,
    )
    m.add_argument("spawn", metavar="ID")
    m.add_argument("dir")
    m.set_defaults(func=run_mount)

    u = sub.add_parser("unmount", help="unmount a spawn mounted with grid mount",
                       description="Unmount DIR. The spawn and its changes stay.",
                       epilog="example:\n  grid unmount ~/work", formatter_class=_RAW)
    u.add_argument("dir")
    u.add_argument("--lazy", action="store_true",
                   help="detach now even if busy; finish when the last user leaves")
    u.set_defaults(func=run_unmount)

    sv = sub.add_parser(
        "save", help="snapshot a spawn as a new root and record its name",
        description=(
            "Write spawn ID's current state as a new root (only changed blocks are written;\n"
            "clients keep working meanwhile) and point NEWNAME, by default the name it was\n"
            "spawned from, at it, with prev = the root the spawn came from. Prints the score.\n"
            "The spawn carries on, now based on the new root."
        ),
        epilog="examples:\n  grid save 3\n  grid save 3 myproject-v2", formatter_class=_RAW,
    )
    sv.add_argument("spawn", metavar="ID")
    sv.add_argument("name", metavar="NEWNAME", nargs="?")
    sv.add_argument("--json", action="store_true", help="print JSON")
    sv.set_defaults(func=run_save)

    k = sub.add_parser(
        "kill", help="discard a spawn and its unsaved changes",
        description="Discard spawn ID: its mounts stop working and unsaved changes are lost.\n"
                    "Asks first on a terminal; --force to skip (required when not on one).",
        epilog="example:\n  grid kill 3 --force", formatter_class=_RAW,
    )
    k.add_argument("spawn", metavar="ID")
    k.add_argument("-f", "--force", action="store_true", help="do not ask")
    k.set_defaults(func=run_kill)

    for verb, what in (("share", "let a user or group into"), ("unshare", "stop sharing")):
        sh = sub.add_parser(
            verb, help=f"{what} a spawn" if verb == "unshare" else f"{what} a spawn of yours",
            description=(
                "Let USER (a login name, a grid user or a uid) or every member of @GROUP into\n"
                "spawn ID, through every exporter (FUSE mounts, 9P, SFTP), or no longer. A spawn\n"
                "is private to its owner (and root) until shared. Inside, the files' own modes\n"
                "and owners decide, as on any Unix filesystem: sharing admits, it grants nothing\n"
                "else. Only the spawn's owner or root shares it; saving and killing stay theirs.\n"
                "A mount of the spawn must be made with the mount's own allow_other (grid spawn\n"
                "--mount does) for other users to reach it through the owner's mount point."
                if verb == "share" else
                "Take USER or @GROUP off spawn ID's sharing: their next request is refused."),
            epilog=f"examples:\n  grid {verb} 3 alice\n  grid {verb} 3 @staff", formatter_class=_RAW,
        )
        sh.add_argument("spawn", metavar="ID")
        sh.add_argument("who", metavar="USER|@GROUP")
        sh.add_argument("--json", action="store_true", help="print the spawn's record as JSON")
        sh.set_defaults(func=run_share, remove=verb == "unshare")


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        n = float(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 8G)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive: {text!r}")
    return int(n * units[unit])


def _size_or_off(text: str) -> int:
    return 0 if text.strip() in ("0", "off") else _size(text)


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _home(args: argparse.Namespace):
    from grid.home import find_home

    return find_home(args.home)


def _client(args: argparse.Namespace):
    from grid.daemon.client import connect

    return connect(_home(args))


def _ask(client, op: str, *a, **kw):
    """A daemon request whose refusal is the user's to act on: printed as grid: op: why."""
    from grid.daemon.client import DaemonError
    from grid.errors import UserError

    try:
        return client.call(op, *a, **kw)
    except DaemonError as e:
        raise UserError(f"{op} {' '.join(map(str, a))}".strip(), e.strerror or str(e)) from None


# -- serve, stop -----------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os
    import sys

    from grid.daemon.server import Daemon, Settings

    home = _home(args)
    if args.spawnmax < 1:
        from grid.errors import UserError

        raise UserError("grid serve", "--spawnmax must be at least 1")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    daemon = Daemon(home, Settings(spawnmax=args.spawnmax, overlay_limit=args.overlay_limit,
                                   listen_9p=args.listen_9p, listen_blocks=args.listen_blocks,
                                   listen_ssh=args.listen_ssh,
                                   content_cache=args.content_cache))

    def ready() -> None:
        print(f"grid: node daemon for {home.root} ready on {daemon.sock_path} (pid {os.getpid()})",
              file=sys.stderr, flush=True)

    asyncio.run(daemon.run(ready))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    import sys
    import time

    from grid.daemon.client import connect

    home = _home(args)
    c = connect(home, start=False)
    pid = _ask(c, "stop")["pid"]
    c.close()
    # Done when the daemon has removed its socket (the last step of its shutdown); waiting on
    # the pid would wait for ever on a daemon that is our own unreaped child.
    deadline = time.monotonic() + 120
    while home.control_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"grid: stopped the node daemon (pid {pid})", file=sys.stderr)
    return 0


# -- spawn, spawns -----------------------------------------------------------------------------


def _check_mountpoint(what: str, directory: str) -> str:
    """The absolute mount point, or a clear error before anything is made."""
    import os

    from grid.errors import UserError

    mnt = os.path.abspath(directory)
    if not os.path.isdir(mnt):
        raise UserError(what, "not a directory" if os.path.exists(mnt) else "no such directory")
    if mnt in _grid_mounts():
        raise UserError(what, f"a spawn is mounted there already (grid unmount {directory})")
    return mnt


def run_spawn(args: argparse.Namespace) -> int:
    import json

    if args.mount:
        _check_mountpoint(f"spawn {args.ref} --mount {args.mount}", args.mount)
    with _client(args) as c:
        d = _ask(c, "spawn", args.ref)
    if args.mount:
        _mount(args, d["id"], args.mount)
        d["mounts"] = [args.mount]
    if args.json:
        print(json.dumps(d, indent=2))
    elif args.quiet:
        print(d["id"])
    else:
        print(f"spawn {d['id']}: {d['name']} ({d['root']})")
        if args.mount:
            print(f"  mounted at {args.mount}; unmount with: grid unmount {args.mount}")
        else:
            print(f"  mount it:  grid mount {d['id']} DIR")
        print(f"  save it:   grid save {d['id']} [NEWNAME]     discard it: grid kill {d['id']}")
    return 0


def run_spawns(args: argparse.Namespace) -> int:
    import json
    import os

    with _client(args) as c:
        rows = _ask(c, "spawns")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no spawns (make one: grid spawn NAME)")
        return 0
    others = os.getuid() == 0 and any(r["uid"] != 0 for r in rows)
    table = [["ID", *(["OWNER"] if others else []), "NAME", "ROOT", "CHANGED", "CLIENTS", "MOUNTED AT"]]
    for r in rows:
        root = (r["base"] or r["root"]).removeprefix("blake3:")[:12]
        table.append([r["id"], *([r["owner"]] if others else []), r["name"], root,
                      human(r["changed_bytes"] or 0), str(r["clients"]), " ".join(r["mounts"]) or "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


# -- mount, unmount ----------------------------------------------------------------------------


def _grid_mounts() -> dict[str, str]:
    """Mount point -> filesystem type, of FUSE mounts made by grid (fsname 'grid')."""
    import re

    out = {}
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if dev == b"grid":
                path = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), mnt)
                out[path.decode(errors="surrogateescape")] = fstype.decode()
    return out


def _mount_log(home_root: os.PathLike[str], sid: str) -> str:
    """Where a mount process writes: in the grid home (HOME/run/log, root's) for root, else
    in the user's own log directory, in a folder for that home (spawn numbers are per home)."""
    import hashlib
    import os

    import platformdirs

    home = os.path.abspath(os.fspath(home_root))
    if os.geteuid() == 0:
        logdir = os.path.join(home, "run", "log")
    else:
        tag = hashlib.blake2b(home.encode(), digest_size=4).hexdigest()
        logdir = os.path.join(platformdirs.user_log_dir("grid"), f"{os.path.basename(home)}-{tag}")
    os.makedirs(logdir, mode=0o700, exist_ok=True)
    return os.path.join(logdir, f"mount-{sid}.log")


def _mount(args: argparse.Namespace, sid: str, directory: str) -> int:
    """Start the mount process for spawn *sid* at *directory*; its pid once mounted."""
    import json
    import os
    import select
    import subprocess
    import sys
    import time

    from grid.daemon.client import socket_path
    from grid.errors import UserError

    what = f"mount {sid} {directory}"
    mnt = _check_mountpoint(what, directory)
    log = _mount_log(_home(args).root, sid)
    # If the daemon dies and stays away, the mount process starts it again with the CLI's
    # own autostart (which refuses users who may not start this home's daemon).
    restart = [sys.executable, "-m", "grid.cli.main", "--home", os.fspath(_home(args).root),
               "spawns", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "spawn.fuse_main", "--connect", socket_path(_home(args)),
         "--spawn", str(sid), "--log", log, "--restart", json.dumps(restart), mnt],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + 30
    line = b""
    while time.monotonic() < deadline and b"\n" not in line:
        r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(proc.stdout.fileno(), 64)
        if not chunk:
            break
        line += chunk
    if line.strip() != b"ready":
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        why = err[-1].removeprefix("fuse_main: ") if err else "the mount process did not start"
        raise UserError(what, why)
    proc.stdout.close()
    proc.stderr.close()
    return proc.pid


def run_mount(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = _ask(c, "status", args.spawn)  # a clear error before any process starts
    pid = _mount(args, d["id"], args.dir)
    print(f"spawn {d['id']} ({d['name']}) mounted at {args.dir} (pid {pid}); "
          f"unmount with: grid unmount {args.dir}")
    return 0


def run_unmount(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from grid.errors import UserError

    mnt = os.path.abspath(args.dir)
    if mnt not in _grid_mounts():
        raise UserError(f"unmount {args.dir}", "not a grid mount")
    cmd = ["fusermount3", "-u", *(["-z"] if args.lazy else []), mnt]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"fusermount3 exit {r.returncode}"
        if "busy" in why.lower():
            why += " (something is using it; --lazy detaches it now)"
        raise UserError(f"unmount {args.dir}", why.removeprefix("fusermount3: "))
    return 0


# -- save, kill --------------------------------------------------------------------------------


def run_save(args: argparse.Namespace) -> int:
    import json
    import sys

    with _client(args) as c:
        d = _ask(c, "save", args.spawn, args.name)
    if args.json:
        print(json.dumps(d, indent=2))
        return 1 if d.get("name_error") else 0
    print(d["score"])
    if d.get("name_error"):
        print(f"grid: save {args.spawn}: saved, but the name was not recorded: {d['name_error']}",
              file=sys.stderr)
        return 1
    if d["name"]:
        print(f"saved spawn {args.spawn} as {d['name']} in {d['seconds']:.2f} s "
              f"(prev {d['prev']})", file=sys.stderr)
    else:
        print(f"saved spawn {args.spawn} in {d['seconds']:.2f} s; no name recorded (it was "
              f"spawned from a score): grid save {args.spawn} NEWNAME names it", file=sys.stderr)
    return 0


def run_share(args: argparse.Namespace) -> int:
    import json
    import sys

    with _client(args) as c:
        d = _ask(c, "share", args.spawn, args.who, remove=args.remove)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    verb = "unshared spawn {} from {}" if args.remove else "shared spawn {} with {}"
    print(verb.format(d["id"], args.who), file=sys.stderr)
    return 0


def run_kill(args: argparse.Namespace) -> int:
    import sys

    from grid.errors import UserError

    with _client(args) as c:
        d = _ask(c, "status", args.spawn)
        if not args.force:
            if not sys.stdin.isatty():
                raise UserError(f"kill {args.spawn}", "not on a terminal: confirm with --force")
            clients = f", {d['clients']} attached" if d["clients"] else ""
            answer = input(f"discard spawn {d['id']} ({d['name']}, "
                           f"{human(d['changed_bytes'] or 0)} of changed data{clients})? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not killed", file=sys.stderr)
                return 1
        _ask(c, "kill", args.spawn)
    print(f"killed spawn {d['id']}", file=sys.stderr)
    return 0
