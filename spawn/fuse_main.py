"""A FUSE mount of one spawn: mounts it, hands the channel to whoever serves it, holds on.

    python -m spawn.fuse_main --connect SOCKET --spawn ID MOUNTPOINT [--log FILE]
    python -m spawn.fuse_main STORE_DIR OVERLAY_DIR MOUNTPOINT [--base blake3:HEX] [--owner UID]

The first form is what ``grid mount`` runs, as the calling user. It mounts with fusermount3
(so the kernel's and fusermount's rules for that user apply), attaches to the spawn in the
node daemon and passes it the channel's descriptor: the daemon serves the mount on the
spawn's host thread (spawn.host, spawn.fusechan). This process keeps its own copy of the
descriptor, which keeps the kernel connection alive while no daemon serves it: if the daemon
dies, requests wait in the kernel (as on an NFS hard mount) while this process reconnects
and hands the channel to the next daemon, which asks the kernel to resend what the dead one
left unanswered. If the daemon serving it has the spawn killed, or the mount is unmounted,
this process ends. Only the spawn's owner (and root) may attach.

The second form serves a store and an overlay in this process (for tests and debugging):
a host thread of its own serves the channel.

Either way it prints ``ready`` on stdout once the kernel has the mount (then, with
``--log``, sends its output to FILE), and on SIGTERM or SIGINT unmounts (lazily) and exits 0.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from spawn.fusedev import MountError, mount, unmount
from spawn.vfswire import MAX_FRAME, FrameError, decode, encode

MOUNT_OPTIONS = ("fsname=grid", "subtype=grid", "default_permissions", "allow_other")
log = logging.getLogger("spawn.fuse_main")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m spawn.fuse_main", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="MOUNTPOINT with --connect; else STORE_DIR OVERLAY_DIR MOUNTPOINT")
    p.add_argument("--connect", metavar="SOCKET", help="the node daemon's socket")
    p.add_argument("--spawn", metavar="ID", help="the spawn to mount (with --connect)")
    p.add_argument("--restart", metavar="ARGV_JSON",
                   help="with --connect: a command (a JSON list) that starts the daemon; run "
                        "when the daemon died (not when it was stopped) and stays away")
    p.add_argument("--log", metavar="FILE", help="where output goes once mounted")
    p.add_argument("--base", help="root score (blake3:HEX) of a new spawn")
    p.add_argument("--owner", type=int, default=os.getuid(), help="uid that may use the mount (and root)")
    p.add_argument("--timeout", type=float, default=None,
                   help="kernel entry/attribute cache timeout, seconds (default 10: the server "
                        "invalidates what other clients change)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.connect:
        if len(a.paths) != 1 or not a.spawn:
            p.error("--connect takes --spawn ID and one MOUNTPOINT")
        a.mountpoint = a.paths[0]
    else:
        if len(a.paths) != 3:
            p.error("STORE_DIR OVERLAY_DIR MOUNTPOINT, or --connect SOCKET --spawn ID MOUNTPOINT")
        a.store, a.overlay, a.mountpoint = a.paths
    a.mountpoint = os.path.abspath(a.mountpoint)
    return a


def _ready(log_path: str | None) -> None:
    print("ready", flush=True)
    if log_path:  # the parent stops listening once we are up: later output goes to the log
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a log from an older grid may be 0644: it names paths and files
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def may_allow_other() -> bool:
    """May this process mount with ``allow_other``? Root may; other users when
    /etc/fuse.conf says ``user_allow_other`` (scripts/setup.sh sets it). With it, root can
    reach a user's mount too and the server refuses everyone else; without it, the kernel
    admits only the user who mounted (so root cannot look in)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def _options() -> tuple[str, ...]:
    return MOUNT_OPTIONS if may_allow_other() else tuple(o for o in MOUNT_OPTIONS if o != "allow_other")


def _on_signals(fn: Callable[[], None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        fn()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


# -- the daemon's mount ------------------------------------------------------------------------


class _Gone(Exception):
    """The daemon will not serve this mount any more (the spawn is gone, or unmounted)."""


def _send(sock: socket.socket, msg: Any, fds: list[int] | None = None) -> None:
    data = encode(msg)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket) -> Any:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise FrameError(f"frame of {n} bytes")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    return decode(body)


def _hold(fd: int, seconds: float) -> None:
    """While no daemon serves the mount: answer what must not wait for one, for up to
    *seconds*. A FLUSH (every close(2)) gets ENOSYS, which tells the kernel never to send
    one again: a process closing descriptors while the daemon restarts (the restart's own
    fork, say) must not wait for it. Every other request is left unanswered: the next
    daemon asks the kernel to resend it (NOTIFY_RESEND) and answers it then."""
    import select

    from spawn import fuseproto as fp

    deadline = time.monotonic() + seconds
    buf = bytearray(1 << 21)
    while (left := deadline - time.monotonic()) > 0:
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return
        try:
            n = os.readv(fd, [buf])
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise _Gone("unmounted") from None
            time.sleep(max(0.0, deadline - time.monotonic()))
            return
        if n < fp.IN_HEADER.size:
            continue
        _len, opcode, unique, *_ = fp.IN_HEADER.unpack_from(buf)
        if opcode == fp.FLUSH:
            try:
                os.write(fd, fp.reply_error(unique, errno.ENOSYS))
            except OSError:
                pass


class _Restarter:
    """Starts the daemon again when it died, as an NFS hard mount's server comes back: the
    mount waits meanwhile, whoever restarts it. Only after a loss without the daemon's
    "stopping" notice (``grid stop`` means stopped), once it has stayed away ``GRACE``
    seconds (a supervisor or a test may be starting it), and at most every ``EVERY``
    seconds. The command is the CLI's own autostart (serialised by the home's start lock;
    it refuses when this user may not start the home's daemon, and the mount then waits)."""

    GRACE = 2.0
    EVERY = 10.0

    def __init__(self, argv_json: str | None) -> None:
        import json

        self.argv: list[str] | None = json.loads(argv_json) if argv_json else None
        self.down_since: float | None = None  # when an unannounced loss began
        self.stopping = False  # the daemon serving us said it is being stopped
        self.last = 0.0

    def served(self) -> None:
        self.down_since = None
        self.stopping = False

    def stopped(self) -> None:
        self.stopping = True

    def lost(self) -> None:
        if not self.stopping:
            self.down_since = time.monotonic()

    def poll(self, spawn: str) -> None:
        now = time.monotonic()
        if (self.argv is None or self.down_since is None or now - self.down_since < self.GRACE
                or now - self.last < self.EVERY):
            return
        import subprocess

        self.last = now
        log.warning("spawn %s: the daemon died and is not back: starting it", spawn)
        try:
            subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError as e:
            log.warning("spawn %s: starting the daemon: %s", spawn, e)


def _serve_through_daemon(a: argparse.Namespace, fd: int) -> int:
    """Hand the channel to the daemon, again after every restart of it, until the mount
    ends. Returns the exit status."""
    init: dict[str, int] | None = None
    first = True
    delay = 0.05
    restart = _Restarter(a.restart)
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(a.connect)
        except OSError as e:
            sock.close()
            if first:
                print(f"fuse_main: spawn {a.spawn}: {e.strerror or e}", file=sys.stderr)
                return 1
            if not os.path.isdir(os.path.dirname(a.connect)):
                log.warning("spawn %s: the grid home is gone; unmounting", a.spawn)
                unmount(a.mountpoint, lazy=True)
                return 0
            restart.poll(a.spawn)
            try:
                _hold(fd, delay)  # the daemon is restarting: requests wait in the kernel
            except _Gone:
                return 0
            delay = min(delay * 2, 1.0)
            continue
        try:
            _send(sock, [1, "attach", [a.spawn], {"mountpoint": a.mountpoint, "fuse": True,
                                                   "init": init}])
            reply = _recv(sock)
            if reply is None:
                raise ConnectionResetError(errno.ECONNRESET, "the daemon closed the connection")
            if reply[1]:
                if first:
                    print(f"fuse_main: spawn {a.spawn}: {reply[2]}", file=sys.stderr)
                    return 1
                raise _Gone(f"the daemon refused to re-attach: {reply[2]}")
            _send(sock, [0, "channel", [], {}], [fd])
            if first:
                _ready(a.log)
                first = False
            else:
                log.warning("spawn %s: handed the mount to the restarted daemon", a.spawn)
            delay = 0.05
            restart.served()
            while True:
                msg = _recv(sock)
                if msg is None:
                    restart.lost()  # it died (a stopped daemon says so first)
                    break  # find the next one
                if msg[1] == "init":
                    init = msg[2]
                elif msg[1] == "stopping":
                    restart.stopped()
                elif msg[1] == "gone":
                    raise _Gone(str(msg[2]))
        except _Gone as e:
            log.warning("spawn %s: %s", a.spawn, e)
            if str(e) != "unmounted":
                unmount(a.mountpoint, lazy=True)
            return 0
        except (OSError, FrameError) as e:
            if first:
                print(f"fuse_main: spawn {a.spawn}: {e}", file=sys.stderr)
                return 1
            log.warning("spawn %s: link to the daemon: %s", a.spawn, e)
        finally:
            sock.close()


def _run_remote(a: argparse.Namespace) -> int:
    try:
        fd = mount(a.mountpoint, _options())
    except MountError as e:
        print(f"fuse_main: {e}", file=sys.stderr)
        return 1

    def stop() -> None:
        unmount(a.mountpoint, lazy=True)
        os._exit(0)

    _on_signals(stop)
    try:
        status = _serve_through_daemon(a, fd)
    finally:
        os.close(fd)
    if status:
        unmount(a.mountpoint, lazy=True)
    return status


# -- in this process ----------------------------------------------------------------------------


def _run_local(a: argparse.Namespace) -> int:
    from spawn.engine import Engine
    from spawn.host import SpawnHost
    from store.errors import BadScore, StoreError
    from store.local import LocalStore
    from store.score import parse_score

    try:
        base = parse_score(a.base) if a.base else None
        store = LocalStore.open(a.store)
    except (BadScore, StoreError, ValueError) as e:
        print(f"fuse_main: {e}", file=sys.stderr)
        return 1
    try:
        try:
            engine = Engine(store, a.overlay, base)
        except (StoreError, ValueError) as e:
            print(f"fuse_main: {e}", file=sys.stderr)
            return 1
        owner = a.owner
        host = SpawnHost(engine, "local", admits=lambda c: c.root or c.uid == owner)
        try:
            try:
                fd = mount(a.mountpoint, _options())
            except MountError as e:
                print(f"fuse_main: {e}", file=sys.stderr)
                return 1
            kw = {} if a.timeout is None else {"timeout": a.timeout}
            done = host.serve_fuse(fd, uid=os.getuid(),
                                   mountpoint=a.mountpoint, **kw)
            _on_signals(lambda: unmount(a.mountpoint, lazy=True))
            _ready(a.log)
            while True:
                try:
                    done.result(timeout=0.5)
                    break
                except TimeoutError:
                    continue
        finally:
            host.close()
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="%(asctime)s fuse_main[%(process)d]: %(levelname)s %(name)s: %(message)s")
    return _run_remote(a) if a.connect else _run_local(a)


if __name__ == "__main__":
    sys.exit(main())
