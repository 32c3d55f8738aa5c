"""How the CLI reaches the node daemon, starting one for the embedded default when none runs.

Commands that need the daemon (spawn, spawns, save, kill, mount) call :func:`connect`. When
nothing answers on the home's socket and the caller may write the home, a daemon is started
in the background (``grid serve`` in a new session, its log in ``run/daemon.log``) and the
command says so on stderr; a user who cannot start one is told who can.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from grid.errors import UserError
from grid.home import GridHome
from spawn.vfswire import MAX_FRAME, FrameError, decode, encode

START_TIMEOUT = 30.0


class DaemonError(OSError):
    """The daemon refused or failed a request: its errno and message."""


class DaemonClient:
    """A blocking connection to the daemon's control socket (one request at a time)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> None:
        self.path = os.fspath(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except BaseException:
            self.sock.close()
            raise
        self._tag = 0

    def call(self, op: str, *args: Any, **kw: Any) -> Any:
        self._tag += 1
        self.sock.sendall(encode([self._tag, op, list(args), kw]))
        head = self._recv(4)
        n = int.from_bytes(head, "big")
        if n > MAX_FRAME:
            raise FrameError(f"reply of {n} bytes")
        _tag, code, value = decode(self._recv(n))
        if code:
            raise DaemonError(code, value)
        return value

    def call_with_notices(self, op: str, notice: Callable[[list[Any]], None], *args: Any,
                          **kw: Any) -> Any:
        """Like ``call``, for a request the daemon answers after notices ``[0, KIND, ...]``
        (``prune``): each goes to *notice* as it comes."""
        self._tag += 1
        self.sock.sendall(encode([self._tag, op, list(args), kw]))
        while True:
            n = int.from_bytes(self._recv(4), "big")
            if n > MAX_FRAME:
                raise FrameError(f"reply of {n} bytes")
            msg = decode(self._recv(n))
            if msg[0] == 0:
                notice(msg[1:])
                continue
            _tag, code, value = msg
            if code:
                raise DaemonError(code, value)
            return value

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "the node daemon closed the connection")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def socket_path(home: GridHome) -> str:
    return os.fspath(home.control_socket)


def _try(home: GridHome) -> DaemonClient | None:
    try:
        c = DaemonClient(socket_path(home))
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        raise UserError(f"grid home {home.root}",
                        "you may not reach its node daemon's socket (ask the home's owner to "
                        "make the home traversable: chmod 711)") from None
    try:
        c.call("ping")
    except (OSError, FrameError):
        c.close()
        return None
    return c


def connect(home: GridHome, *, start: bool = True) -> DaemonClient:
    """A connection to the home's daemon, starting one if none answers and *start* (and
    ``GRID_AUTOSTART`` is not ``0``: for scripts that must never start one)."""
    c = _try(home)
    if c is not None:
        return c
    if os.environ.get("GRID_AUTOSTART", "1") == "0":
        start = False
    if not start:
        raise UserError(f"grid home {home.root}", "no node daemon is running (start one: grid serve)")
    if not os.access(home.root, os.W_OK) or not os.access(home.store, os.W_OK):
        raise UserError(f"grid home {home.root}",
                        "no node daemon is running, and only the home's owner can start one "
                        "(`grid serve`)")
    return start_daemon(home)


def start_daemon(home: GridHome) -> DaemonClient:
    """Start ``grid serve`` for *home* in the background and connect to it. Two commands
    starting one at once are serialised by a lock file; the second finds the first's."""
    home.run.mkdir(mode=0o711, exist_ok=True)
    lock = os.open(home.run / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        c = _try(home)
        if c is not None:
            return c
        log_path = home.run / "daemon.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # it names other users' spawns, scores and mount points
        with open(fd, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "grid.cli.main", "--home", os.fspath(home.root), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            c = _try(home)
            if c is not None:
                print(f"grid: started the node daemon for {home.root} (pid {proc.pid}, "
                      f"log {log_path})", file=sys.stderr)
                return c
            if proc.poll() is not None:
                raise UserError("grid serve", f"the node daemon exited at start (status "
                                f"{proc.returncode}): {_tail(log_path)}")
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise UserError("grid serve", f"the node daemon did not answer within {START_TIMEOUT:g} s "
                        f"(see {log_path})")
    finally:
        os.close(lock)


def _tail(path: os.PathLike[str], lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-4000:]
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"
