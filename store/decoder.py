"""A decoder process: decodes ranges of hash trees straight into memory files, on another CPU.

The decoded-content cache (store.plaincache) decodes the extents ahead of a sequential reader
while the reader is served. Done by a thread of the daemon, that decode and the serving take
the interpreter lock in turns thousands of times per megabyte: measured on a 2-CPU machine,
about a quarter of the daemon's samples went to putting threads to sleep and waking them,
and the decoding thread spent two to four times the CPU of the same decode in a process of
its own (docs/benchmarks.md, "Cold reads"). This module moves that decode into a process:

* the process opens the block store **read-only** (as `grid` commands do beside a daemon) and
  verifies every block it reads, exactly as the daemon's own reads do;
* each memory file it writes into is handed to it once, over a Unix socket (SCM_RIGHTS), and
  let go when the cache drops the content;
* a request names a memory file, a tree root and a byte range; the reply says whether the
  range was decoded whole. Nothing the process writes is served before its reply says so,
  and a range it could not decode (a block it cannot see yet, a corrupt one, the process
  gone) is decoded by the daemon itself, which then meets any error in the ordinary way.

Wire (SOCK_SEQPACKET, one message per request or reply, little-endian): a request is
``kind[1] id[8] lo[8] hi[8] root[32]`` with kind ``O`` (open: the memory file rides along as
SCM_RIGHTS, ``lo`` its size), ``D`` (decode [lo, hi) of the tree *root* into file *id*) or
``C`` (close file *id*); a reply to ``D`` is ``id[8] lo[8] hi[8] ok[1]``, in request order.
"""

from __future__ import annotations

import array
import collections
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

_REQUEST = struct.Struct("<cQQQ32s")
_REPLY = struct.Struct("<QQQB")
RESTART_AFTER = 5.0  # seconds before a decoder process that died is started again
LOOK_EVERY = 2.0  # seconds between the idle process's looks for segment files removed

log = logging.getLogger("grid.store.decoder")


class Decoder:
    """The daemon's end: starts the process (``start``, or at the first request), sends
    requests, and completes them from a reader thread. Thread-safe. *store* is the store object in this process
    whose files the decoder process reads (readers of any other store are not sent)."""

    def __init__(self, store: object, path: str | os.PathLike[str]) -> None:
        self.store = store
        self.path = Path(path)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: collections.deque[tuple[Future[bool], Callable[[bool], None]]] = collections.deque()
        self._opened: set[int] = set()
        self._died_at = -RESTART_AFTER
        self._closed = False
        self.decoded = 0  # ranges decoded whole by the process (statistics, for tests)

    @property
    def running(self) -> bool:
        return self._sock is not None

    def start(self) -> bool:
        """Start the process now rather than at the first request (its interpreter takes
        ~0.1 s to come up: a daemon starts it beside its own start, so that the first read
        does not wait for it). False if it could not start (requests then start it again)."""
        with self._lock:
            return not self._closed and (self._sock is not None or self._start())

    def submit(self, ident: int, fd: int, size: int, root: bytes, lo: int, hi: int,
               done: Callable[[bool], None]) -> Future[bool] | None:
        """Ask for [lo, hi) of tree *root* decoded into memory file *fd* (the content
        *ident*, of *size* bytes). *done(ok)* runs in the reader thread before the returned
        future completes with *ok*, so that a waiter on the future sees what *done* did.
        None: no process to ask (closed, or restarting); decode it some other way."""
        with self._lock:
            if self._closed or (self._sock is None and not self._start()):
                return None
            sock = self._sock
            assert sock is not None
            fut: Future[bool] = Future()
            fut.set_running_or_notify_cancel()  # sent at once: it cannot be taken back
            try:
                if ident not in self._opened:
                    fds = array.array("i", [fd]).tobytes()
                    sock.sendmsg([_REQUEST.pack(b"O", ident, size, 0, bytes(32))],
                                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    self._opened.add(ident)
                self._pending.append((fut, done))
                sock.send(_REQUEST.pack(b"D", ident, lo, hi, bytes(root)))
            except OSError:
                if self._pending and self._pending[-1][0] is fut:
                    self._pending.pop()
                self._lost_locked()
                return None
            return fut

    def stuck(self, fut: Future[bool]) -> None:
        """A reader waited for *fut* longer than a decode should take: if it is still this
        process's to answer, the process is stopped or stuck; it is killed (its requests
        are answered not done, and a new one starts later)."""
        with self._lock:
            proc = self._proc
            if proc is None or not any(f is fut for f, _ in self._pending):
                return
            log.warning("decoder process for %s answers nothing: killed", self.path)
        proc.kill()

    def forget(self, ident: int) -> None:
        """The cache dropped content *ident*: the process closes its memory file."""
        with self._lock:
            if ident in self._opened and self._sock is not None:
                self._opened.discard(ident)
                try:
                    self._sock.send(_REQUEST.pack(b"C", ident, 0, 0, bytes(32)))
                except OSError:
                    self._lost_locked()

    def close(self) -> None:
        """End the process (what it is doing is answered as not done)."""
        with self._lock:
            self._closed = True
            proc, sock = self._proc, self._sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_WR)  # the process reads the end and exits
                except OSError:
                    pass
        if proc is not None:
            _reap(proc)

    # -- the process ---------------------------------------------------------------------------

    def _start(self) -> bool:
        """Start the process (lock held); False if it died lately or cannot start."""
        if time.monotonic() - self._died_at < RESTART_AFTER:
            return False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ)
            root = str(Path(__file__).resolve().parents[1])  # the package's own tree first
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "store.decoder", str(theirs.fileno()), str(self.path)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        except OSError as e:
            ours.close()
            log.warning("decoder process for %s could not start: %s", self.path, e)
            self._died_at = time.monotonic()
            return False
        finally:
            theirs.close()
        # A send never blocks the caller (who holds the cache's lock) for long: a process
        # that reads nothing is answered by a failed send (then it is given up).
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 2, 0))
        self._sock = ours
        self._opened.clear()
        threading.Thread(target=self._read, args=(ours, self._proc), name="grid-decoder-replies",
                         daemon=True).start()
        return True

    def _read(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        """Complete requests as their replies come, in order; at the end of the stream
        (the process exited or was killed) every request still open is answered not done."""
        while True:
            try:
                msg = sock.recv(64)
            except OSError:
                msg = b""
            if len(msg) != _REPLY.size:
                break
            ok = _REPLY.unpack(msg)[3] == 1
            with self._lock:
                if not self._pending:
                    break  # a reply to nothing: the stream is not to be trusted
                fut, done = self._pending.popleft()
                self.decoded += ok
            _complete(fut, done, ok)
        with self._lock:
            if self._sock is sock:
                self._lost_locked()
            left = list(self._pending) if self._sock is None else []
            if self._sock is None:
                self._pending.clear()
        sock.close()
        for fut, done in left:
            _complete(fut, done, False)
        _reap(proc)

    def _lost_locked(self) -> None:
        if self._sock is not None:
            if not self._closed:
                log.warning("decoder process for %s ended; the daemon decodes itself for %.0f s",
                            self.path, RESTART_AFTER)
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._sock = None
        self._died_at = time.monotonic()


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the process to end after its socket did; kill it if it will not."""
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _complete(fut: Future[bool], done: Callable[[bool], None], ok: bool) -> None:
    try:
        done(ok)
    except Exception:
        log.exception("completing a decode")
        ok = False
    fut.set_result(ok)


# -- the process's side --------------------------------------------------------------------------


def serve(sock: socket.socket, path: str) -> None:
    """The process's loop: requests in, decoded ranges and replies out, until end of stream."""
    from store.hashtree import TreeReader
    from store.local import LocalStore
    from store.plaincache import decode_range, pwrite_all

    store = LocalStore.open(path, readonly=True)
    files: dict[int, int] = {}
    # A tree's reader keeps its decoded interior nodes: one per root, for the runs after the
    # first (without it every 1 MiB run decoded the pointer blocks above it again).
    readers: collections.OrderedDict[bytes, TreeReader] = collections.OrderedDict()

    def reader_of(root: bytes) -> TreeReader:
        r = readers.get(root)
        if r is None:
            r = readers[root] = TreeReader(store, root)
            if len(readers) > 16:
                readers.popitem(last=False)
        else:
            readers.move_to_end(root)
        return r

    def refresh() -> None:
        nonlocal store
        store.close()
        store = LocalStore.open(path, readonly=True)
        readers.clear()

    # Waiting for requests, it looks every few seconds whether the daemon's prune removed a
    # segment file it has open: the disk gets that space back only when it lets go.
    sock.settimeout(LOOK_EVERY)
    try:
        while True:
            try:
                msg, anc, _flags, _addr = sock.recvmsg(_REQUEST.size, socket.CMSG_SPACE(4))
            except TimeoutError:
                if store.holds_removed_segments():
                    refresh()
                continue
            if not msg:
                return
            kind, ident, lo, hi, root = _REQUEST.unpack(msg)
            if kind == b"O":
                for level, type_, data in anc:
                    if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
                        old = files.pop(ident, None)
                        if old is not None:
                            os.close(old)
                        files[ident] = array.array("i", data[:4])[0]
            elif kind == b"C":
                fd = files.pop(ident, None)
                if fd is not None:
                    os.close(fd)
            elif kind == b"D":
                ok = 0
                fd = files.get(ident)
                if fd is not None:
                    if store.holds_removed_segments():
                        refresh()
                    for attempt in range(2):
                        try:
                            decode_range(reader_of(root), lo, hi,
                                         partial(pwrite_all, fd))
                            ok = 1
                            break
                        except Exception:  # a block written after the store was opened
                            # here, or corrupt: look at the store afresh once, then say no
                            if attempt == 0:
                                refresh()
                sock.send(_REPLY.pack(ident, lo, hi, ok))
    finally:
        store.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m store.decoder SOCKET-FD STORE-PATH (started by the daemon)",
              file=sys.stderr)
        return 2
    # A ^C at the terminal reaches the whole process group: the daemon stops on it and this
    # process with the daemon's socket, not before it (the daemon would think it died).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The daemon's own store reports damage; this process's read-only view falls behind the
    # daemon's (a prune removes segments it has open, moves blocks past the segments it
    # knows), which its store would log as damage that is not there. What it cannot read it
    # answers "not done" after a fresh look, and the daemon reads it (and reports it if real).
    logging.getLogger("store").setLevel(logging.CRITICAL + 1)
    sock = socket.socket(fileno=int(argv[1]))
    try:
        serve(sock, argv[2])
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
